"""The operator's API, for server admins only: invites, users, stats, audit log."""

from __future__ import annotations

from chat.store import iso
from handlers import models
from handlers.account import base_url
from handlers.base import ApiHandler, endpoint

ADMIN_ERRORS = (403, 503)
USERS_PAGE = 50
AUDIT_PAGE = 50


class AdminHandler(ApiHandler):
    async def admin(self) -> dict:
        """The caller, when an admin (else 403); its user object as events name it."""
        doc = await self.services.accounts.admin(self.current_user)
        return {"id": str(doc["_id"]), "username": doc["username"]}

    def invite_view(self, doc: dict) -> dict:
        return {"code": doc["_id"], "url": f"{base_url(self)}/?invite={doc['_id']}",
                "uses": doc["uses"], "uses_left": doc["uses_left"],
                "expires": iso(doc["expires"]), "created": iso(doc["created"]), "by": doc["by"]}


class InvitesHandler(AdminHandler):
    @endpoint("Create an invite", "createInvite", body=models.InviteCreate,
              body_required=False, response=models.Invite, status=201, errors=ADMIN_ERRORS)
    async def post(self, body: models.InviteCreate) -> None:
        by = await self.admin()
        doc = await self.services.accounts.create_invite(by, body.uses, body.expires_in_hours)
        self.reply(self.invite_view(doc), 201)

    @endpoint("The invites", "invites", response=list[models.Invite], errors=ADMIN_ERRORS)
    async def get(self) -> None:
        await self.admin()
        self.reply([self.invite_view(doc) for doc in await self.services.store.invites_list()])


class InviteHandler(AdminHandler):
    @endpoint("Revoke an invite", "deleteInvite", status=204, errors=(*ADMIN_ERRORS, 404))
    async def delete(self, code: str) -> None:
        await self.services.accounts.delete_invite(await self.admin(), code)
        self.set_status(204)
        self.finish()


def user_view(view: dict) -> dict:
    return {**view, "created": iso(view["created"]),
            "last_seen": iso(view["last_seen"]) if view["last_seen"] else None}


class UsersHandler(AdminHandler):
    @endpoint("Users, by username: search by the start of a username, name or email",
              "adminUsers", query=models.AdminUsersQuery, response=models.AdminUsersPage,
              errors=ADMIN_ERRORS)
    async def get(self, query: models.AdminUsersQuery) -> None:
        await self.admin()
        accounts = self.services.accounts
        found = await self.services.store.list_users(query.q, query.cursor.casefold(), USERS_PAGE)
        page = [user_view(accounts.admin_view(doc)) for doc in found]
        more = len(found) == USERS_PAGE
        self.reply({"results": page, "next": found[-1]["username_key"] if more else None})


class UserHandler(AdminHandler):
    @endpoint("Deactivate or reactivate a user, make them an admin or not", "adminUpdateUser",
              body=models.AdminUserUpdate, body_required=False, response=models.AdminUser,
              errors=(*ADMIN_ERRORS, 404))
    async def patch(self, username: str, body: models.AdminUserUpdate) -> None:
        by = await self.admin()
        accounts = self.services.accounts
        doc = None
        if body.active is not None:
            doc = await accounts.set_active(by, username, body.active)
        if body.admin is not None:
            doc = await accounts.set_admin(by, username, body.admin)
        doc = doc or await accounts.target(username)
        self.reply(user_view(accounts.admin_view(doc)))


class StatsHandler(AdminHandler):
    @endpoint("Users, rooms, messages, files and sockets", "adminStats",
              response=models.Stats, errors=ADMIN_ERRORS)
    async def get(self) -> None:
        await self.admin()
        self.reply(await self.services.accounts.stats(self.services.process_id))


class AuditHandler(AdminHandler):
    @endpoint("The audit log of admin actions, newest first", "adminAudit",
              query=models.AuditQuery, response=models.AuditPage, errors=ADMIN_ERRORS)
    async def get(self, query: models.AuditQuery) -> None:
        await self.admin()
        store = self.services.store
        found = await store.audit_page(query.before, AUDIT_PAGE)
        entries = [{"id": str(doc["_id"]), "by": doc["by"], "action": doc["action"],
                    "target": doc["target"], "details": doc.get("details", {}),
                    "at": iso(doc["at"])} for doc in found]
        self.reply({"results": entries,
                    "next": entries[-1]["id"] if len(found) == AUDIT_PAGE else None})
