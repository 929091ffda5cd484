"""Accounts people manage and the operator runs: sign-up policy and invites,
profiles, passwords (change, forgotten), leaving, admins, deactivation, stats
and the audit log.

Revoking someone's access is three steps, in this order: the durable change
(the account, its tokens in MongoDB), then a control notice that makes every
process forget the tokens it believed live and close the sockets opened with
them (Hub.revoke_user), then whatever follows (leaving rooms). Login checks
the account itself, so a missed notice cannot let a deactivated user back in;
a token found live is believed for at most tokens.RECHECK_SECONDS.

A changed display name or picture reaches other people as a `profile` event in
every room of the user (through Hub.append_event, so room sockets, user
streams and a resume with `since` all get it): a member list fetched before,
with the profile events after it applied, equals one fetched after.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import secrets
import uuid
from typing import Any

from chat.events import InvalidField
from chat.passwords import MAX_PASSWORD_BYTES, PasswordTooLong
from chat.store import (
    Forbidden,
    NotFound,
    UsernameTaken,
    active,
    background,
    now,
    public_user,
    username_key,
)

log = logging.getLogger("chat.accounts")

# A new password needs this many characters.
MIN_PASSWORD_CHARS = 8
RESET_TTL = datetime.timedelta(minutes=30)
DELETED_NAME = "Deleted user"
# Rooms whose members hear of a profile change at once (the newest first).
PROFILE_ROOMS = 200
DISPLAY_NAME_CHARS = 64
# How long the admins' stats wait for the other processes to count their sockets.
CENSUS_WAIT = 0.5


def token_hash(token: str) -> str:
    """Reset tokens are stored hashed: a copy of the database cannot use them."""
    return hashlib.sha256(token.encode()).hexdigest()


def profile_brief(user: dict) -> dict:
    """A user as a profile event names them."""
    return {"id": user["id"], "username": user["username"],
            "display_name": user["display_name"], "avatar": user["avatar"]}


class AccountService:
    def __init__(self, config, store, passwords, tokens, hub, mailer, avatars, limits,
                 process_id: str):
        self.config = config
        self.store = store
        self.passwords = passwords
        self.tokens = tokens
        self.hub = hub
        self.mailer = mailer
        self.avatars = avatars
        self.limits = limits
        self.configured_admins = {username_key(name) for name in config.admins}
        # Mails being sent (a reset is answered before its mail goes).
        self.sending: set[asyncio.Task] = set()
        self.process_id = process_id
        # The socket counts of the stats being gathered: request id -> process -> sockets.
        self.censuses: dict[str, dict[str, int]] = {}
        hub.handle_notices("census_request", self.on_census_request)
        hub.handle_notices("census", self.on_census)

    # Who is who -----------------------------------------------------------

    def is_admin(self, doc: dict) -> bool:
        return bool(doc.get("admin")) or username_key(doc["username"]) in self.configured_admins

    def me(self, doc: dict) -> dict:
        """The caller as GET /auth/me/ shows them."""
        return {**public_user(doc), "admin": self.is_admin(doc)}

    async def live_doc(self, user: dict) -> dict:
        doc = await self.store.user_by_id(user["id"])
        if doc is None or not active(doc):
            raise NotFound(user["id"])
        return doc

    async def admin(self, user: dict) -> dict:
        """The caller's account when they are an admin, else Forbidden."""
        doc = await self.live_doc(user)
        if not self.is_admin(doc):
            raise Forbidden("Only server admins can do that.")
        return doc

    # Passwords -------------------------------------------------------------

    async def new_password_hash(self, password: str, username: str, field: str) -> bytes:
        """A new password's hash; a weak or too long one is a 400 naming field."""
        if len(password) < MIN_PASSWORD_CHARS:
            raise InvalidField(field, f"Use at least {MIN_PASSWORD_CHARS} characters.")
        if password.casefold() == username.casefold() or len(set(password)) == 1:
            raise InvalidField(field, "This password is too easy to guess.")
        try:
            return await self.passwords.hash(password)
        except PasswordTooLong:
            raise InvalidField(field, f"Ensure this field has no more than "
                                      f"{MAX_PASSWORD_BYTES} bytes.") from None

    async def check_password(self, doc: dict, password: str, field: str) -> None:
        if not await self.passwords.check(password, doc.get("password") or None):
            raise InvalidField(field, "Wrong password.")

    async def change_password(self, user: dict, token_id: str, old: str, new: str) -> None:
        """Every other token of the user stops working, on every process."""
        doc = await self.live_doc(user)
        await self.check_password(doc, old, "old_password")
        hashed = await self.new_password_hash(new, doc["username"], "new_password")
        await self.store.update_user(user["id"], {"password": hashed})
        await self.store.drop_password_resets(user["id"])
        await self.sign_out_others(user, token_id, "password changed")

    async def sign_out_others(self, user: dict, token_id: str | None, reason: str) -> None:
        """Revoke every token of the user but token_id and close their sockets everywhere."""
        await self.store.revoke_user_tokens(user["id"], keep=token_id)
        self.hub.revoke_user(user["id"], token_id, reason)
        await self.store.forget_other_devices(user["id"], token_id)  # their pushes stop too

    async def request_reset(self, username: str | None, email: str | None, address: str,
                            base_url: str) -> float:
        """A forgotten password: 0, or the seconds this address must wait. The
        answer never says whether the account exists: the account is looked up
        and mailed after it (when it has an email and has not had
        password_reset_per_account_per_hour mails this hour, by username or email)."""
        wait = await self.limits.reset_address.hit(address)
        if wait:
            return wait
        task = background(self.send_reset(username, email, base_url))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)
        return 0.0

    async def send_reset(self, username: str | None, email: str | None, base_url: str) -> None:
        try:
            doc = (await self.store.user_by_name(username) if username
                   else await self.store.user_by_email(email or ""))
            if (doc is None or not doc.get("email")
                    or not active(doc) or not self.mailer.enabled):
                return
            user_id = str(doc["_id"])
            if await self.limits.reset_account.hit(user_id):
                log.info("password reset for user %s not sent: asked too often", user_id)
                return
            token = secrets.token_urlsafe(32)
            await self.store.add_password_reset(token_hash(token), user_id, now() + RESET_TTL)
            link = f"{base_url}/#reset={token}"
            await self.mailer.send(
                doc["email"], "Reset your chat password",
                f"Someone asked to reset the password of {doc['username']}.\n\n"
                f"To choose a new one, open this link within 30 minutes (it works once):\n"
                f"{link}\n\nIf it was not you, ignore this mail: your password stays as it is.\n")
            log.info("password reset mail sent for user %s", user_id)
        except Exception:
            log.exception("password reset mail failed")

    async def confirm_reset(self, token: str, new: str) -> None:
        user_id = await self.store.take_password_reset(token_hash(token))
        doc = await self.store.user_by_id(user_id) if user_id else None
        if doc is None or not active(doc):
            raise InvalidField("token", "This link is invalid, used or expired: ask for a new one.")
        try:
            hashed = await self.new_password_hash(new, doc["username"], "new_password")
        except InvalidField:
            # Not spent by a weak password: the person tries again with the same link.
            await self.store.add_password_reset(token_hash(token), user_id, now() + RESET_TTL)
            raise
        await self.store.update_user(user_id, {"password": hashed})
        await self.store.drop_password_resets(user_id)
        await self.sign_out_others({"id": user_id}, None, "password reset")

    # Sign-up ---------------------------------------------------------------

    async def register(self, username: str, email: str, password: str,
                       invite: str | None) -> dict:
        """A new account under the sign-up policy: open, invite (a code, except
        for the admins named in config), closed."""
        policy = self.config.signup
        named_admin = username_key(username) in self.configured_admins
        if policy == "closed" and not named_admin:
            raise Forbidden("Sign-up is closed on this server.")
        spent = None
        if policy == "invite" and not named_admin:
            if not invite:
                raise InvalidField("invite", "Sign-up needs an invite on this server.")
            if not await self.store.take_invite(invite):
                raise InvalidField("invite", "This invite is invalid, used up or expired.")
            spent = invite
        try:
            if len(password.encode()) > MAX_PASSWORD_BYTES:
                raise InvalidField("password", f"Ensure this field has no more than "
                                               f"{MAX_PASSWORD_BYTES} bytes.")
            hashed = await self.passwords.hash(password)
            doc = await self.store.create_user(
                username, email, hashed,
                reuse_after=datetime.timedelta(days=self.config.username_reuse_days))
        except (UsernameTaken, InvalidField):
            if spent:
                await self.store.give_back_invite(spent)
            raise
        if not self.configured_admins:
            await self.store.make_first_admin(str(doc["_id"]))
        return doc

    # Profile ---------------------------------------------------------------

    async def update_profile(self, user: dict, fields: dict[str, Any]) -> dict:
        """display_name ("" clears it), email, avatar (None removes the picture)."""
        doc = await self.live_doc(user)
        changes: dict[str, Any] = {}
        unset: list[str] = []
        if "display_name" in fields:
            name = fields["display_name"].strip()
            if name:
                changes["display_name"] = name
            else:
                unset.append("display_name")
        if "email" in fields:
            changes["email"] = fields["email"] or ""
        picture = None
        if "avatar" in fields:
            if fields["avatar"] is not None:
                picture = await self.uploaded_picture(user, fields["avatar"])
            else:
                unset.append("avatar")
                await self.store.delete_avatar(user["id"])
        if not changes and not unset:
            return doc if picture is None else await self.set_avatar(user, picture)
        after = await self.store.update_user(user["id"], changes, tuple(unset))
        if after is None:
            raise NotFound(user["id"])
        if picture is not None:
            return await self.set_avatar(user, picture)
        if self.shown_changed(doc, after):
            await self.announce_profile(after)
        return after

    async def uploaded_picture(self, user: dict, file_id: str) -> bytes:
        """The bytes of one of the user's own uploads (POST /api/chats/<uri>/files/),
        as a picture: 400 naming `avatar` unless it is theirs, an image, and small enough."""
        upload = await self.store.user_upload(user["id"], file_id)
        if upload is None or not str(upload.get("type", "")).startswith("image/"):
            raise InvalidField("avatar", "Not an image you uploaded.")
        if upload["size"] > self.config.avatar_max_bytes:
            raise InvalidField("avatar", f"The picture is larger than {self.config.avatar_max_bytes} bytes.")
        return await self.store.read_whole(upload)

    @staticmethod
    def shown_changed(before: dict, after: dict) -> bool:
        return any(before.get(key) != after.get(key) for key in ("display_name", "avatar"))

    async def set_avatar(self, user: dict, data: bytes) -> dict:
        await self.live_doc(user)
        picture = await self.avatars.convert(data)
        version = uuid.uuid4().hex[:12]
        await self.store.save_avatar(user["id"], version, picture, "image/png")
        after = await self.store.update_user(user["id"], {"avatar": version})
        if after is None:
            raise NotFound(user["id"])
        await self.announce_profile(after)
        return after

    async def announce_profile(self, doc: dict) -> None:
        """Tokens carry the user as it is now (posts name their author by it);
        every process re-reads them; every room of the user gets a profile event."""
        shown = public_user(doc)
        await self.store.refresh_token_users(shown["id"], shown)
        self.hub.user_changed(shown["id"])
        rooms = await self.store.rooms_of(shown["id"], PROFILE_ROOMS)
        event = {"type": "profile", "user": profile_brief(shown), "user_id": shown["id"]}
        await asyncio.gather(*(self.hub.append_event(room["uri"], dict(event)) for room in rooms))

    # Leaving ---------------------------------------------------------------

    async def delete_account(self, user: dict, password: str, events) -> None:
        """Tokens revoked and sockets closed, every room left (member events),
        personal data erased, the username kept until username_reuse_days pass;
        messages stay, by "Deleted user" (their text erased too with
        account_deletion: erase)."""
        doc = await self.live_doc(user)
        await self.check_password(doc, password, "password")
        # Owners leave too: their rooms keep their members and history.
        rooms = await self.store.rooms_of(user["id"], limit=0)
        if await self.store.mark_deleted(user["id"]) is None:
            raise NotFound(user["id"])
        await self.sign_out_others(user, None, "account deleted")
        await self.store.erase_user_traces(user["id"])
        me = {"id": user["id"], "username": doc["username"]}
        for room in rooms:
            if room.get("owner") == user["id"]:
                await self.hand_over_owned(room, me, events)
            if await self.store.remove_member(room["uri"], user["id"]) is not None:
                self.hub.expel(room["uri"], user["id"], "account deleted")
                await events.announce(room["uri"], "leave", me, me)
        await self.store.disown_events(user["id"], DELETED_NAME,
                                       erase=self.config.account_deletion == "erase")

    async def hand_over_owned(self, room: dict, me: dict, events) -> None:
        """A room the leaving account owns goes to a moderator, else its longest
        member (a role event says so); one with nobody else is left ownerless."""
        others = [m for m in room["members"] if m != me["id"]]
        if not others:
            await self.store.abandon_room(room["uri"], me["id"])
            return
        roles = room.get("roles") or {}
        heir = next((m for m in others if roles.get(m) == "moderator"), others[0])
        if await self.store.hand_over(room["uri"], me["id"], heir):
            names = await self.store.users_by_id([heir])
            if heir in names:
                await events.announce(room["uri"], "role", {"id": heir, "username": names[heir]["username"]},
                                      me, "owner")

    # The operator ------------------------------------------------------------

    async def target(self, username: str) -> dict:
        doc = await self.store.user_by_name(username)
        if doc is None or doc.get("deleted"):
            raise NotFound(username)
        return doc

    async def check_not_last_admin(self, doc: dict, field: str, doing: str) -> None:
        admins = await self.store.active_admins(tuple(self.config.admins))
        if all(str(a["_id"]) == str(doc["_id"]) for a in admins):
            raise InvalidField(field, f"{doc['username']} is the last admin: make another "
                                      f"admin before {doing}.")

    async def set_active(self, by: dict, username: str, active: bool) -> dict:
        """Deactivate (tokens revoked, sockets closed on every process, login
        refused; messages kept) or reactivate an account."""
        doc = await self.target(username)
        if not active and self.is_admin(doc) and doc.get("active", True):
            await self.check_not_last_admin(doc, "active", "deactivating them")
        after = await self.store.update_user(str(doc["_id"]), {"active": active})
        if not active:
            await self.sign_out_others({"id": str(doc["_id"])}, None, "account deactivated")
        await self.store.record_audit(by, "user.activate" if active else "user.deactivate",
                                      doc["username"])
        return after

    async def set_admin(self, by: dict, username: str, admin: bool) -> dict:
        doc = await self.target(username)
        if not admin:
            if username_key(doc["username"]) in self.configured_admins:
                raise InvalidField("admin", f"{doc['username']} is an admin by the server's "
                                            "configuration (admins); change it there.")
            if self.is_admin(doc):
                await self.check_not_last_admin(doc, "admin", "removing them")
        await self.store.set_admin_flag(str(doc["_id"]), admin)
        await self.store.record_audit(by, "user.admin" if admin else "user.unadmin",
                                      doc["username"])
        return await self.target(username)

    def admin_view(self, doc: dict) -> dict:
        """A user as the admins' list shows them."""
        return {"id": str(doc["_id"]), "username": doc["username"],
                "display_name": doc.get("display_name") or "", "email": doc.get("email", ""),
                "created": doc["created"], "last_seen": doc.get("last_seen"),
                "active": active(doc), "admin": self.is_admin(doc)}

    async def create_invite(self, by: dict, uses: int, hours: float) -> dict:
        code = secrets.token_urlsafe(12)
        doc = await self.store.add_invite(code, uses, now() + datetime.timedelta(hours=hours),
                                          {"id": by["id"], "username": by["username"]})
        await self.store.record_audit(by, "invite.create", code, {"uses": uses, "hours": hours})
        return doc

    async def delete_invite(self, by: dict, code: str) -> None:
        if not await self.store.delete_invite(code):
            raise NotFound(code)
        await self.store.record_audit(by, "invite.delete", code)

    def sockets_here(self) -> int:
        return sum(len(sockets) for sockets in self.hub.sockets_by_user.values())

    async def stats(self) -> dict:
        total, recent = await self.store.count_users(now() - datetime.timedelta(hours=24))
        return {"users": {"total": total, "active_24h": recent},
                **await self.store.content_counts(),
                "sockets": await self.census()}

    async def census(self) -> dict:
        """Every process's open sockets now: asked on the control exchange, the
        answers that come within CENSUS_WAIT (this process's at once). Nothing
        is written anywhere."""
        request = uuid.uuid4().hex
        answers: dict[str, int] = {}
        self.censuses[request] = answers
        try:
            self.hub.notify({"type": "census_request", "id": request})
            await asyncio.sleep(CENSUS_WAIT)
        finally:
            del self.censuses[request]
        return {"total": sum(answers.values()), "per_process": dict(sorted(answers.items()))}

    def on_census_request(self, notice: dict) -> None:
        self.hub.notify({"type": "census", "id": notice.get("id"), "process": self.process_id,
                         "sockets": self.sockets_here()})

    def on_census(self, notice: dict) -> None:
        answers = self.censuses.get(notice.get("id"))
        if answers is not None and isinstance(notice.get("sockets"), int):
            answers[str(notice.get("process"))] = notice["sockets"]
