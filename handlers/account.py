"""A person's own account: profile and picture, password change and reset,
leaving (chat/accounts.py does the work)."""

from __future__ import annotations

from chat.avatars import NotAnImage
from handlers import models
from handlers.base import TOKEN_COOKIE, ApiHandler, detail, endpoint, field_error

RESET_ACCEPTED = {"detail": "If that account exists and has an email address, a link to "
                            "reset its password is on its way."}


def base_url(handler: ApiHandler) -> str:
    """Where people reach this server, for links: public_url, else the request's own."""
    configured = handler.services.config.public_url.rstrip("/")
    return configured or f"{handler.request.protocol}://{handler.request.host}"


class MeHandler(ApiHandler):
    @endpoint("The caller", "me", response=models.Me, errors=(503,))
    async def get(self) -> None:
        accounts = self.services.accounts
        doc = await accounts.live_doc(self.current_user)
        await self.services.store.touch_last_seen(str(doc["_id"]))  # for "active in 24 h"
        self.reply(accounts.me(doc))

    @endpoint("Change the profile: display name, email, picture", "updateProfile",
              body=models.ProfileUpdate, body_required=False, response=models.Me,
              errors=(503,))
    async def patch(self, body: models.ProfileUpdate) -> None:
        fields = {name: getattr(body, name) for name in body.model_fields_set}
        if "display_name" in fields:
            fields["display_name"] = fields["display_name"] or ""
            if fields["display_name"] and not fields["display_name"].strip():
                raise field_error("display_name", "This field may not be blank.")
        accounts = self.services.accounts
        try:
            doc = await accounts.update_profile(self.current_user, fields)
        except NotAnImage as error:
            raise field_error("avatar", str(error)) from None
        self.reply(accounts.me(doc))

    @endpoint("Delete the account: tokens revoked, every room left, personal data erased",
              "deleteAccount", body=models.AccountDelete, status=204, errors=(503,))
    async def delete(self, body: models.AccountDelete) -> None:
        await self.services.accounts.delete_account(self.current_user, body.password,
                                                    self.services.events)
        self.clear_cookie(TOKEN_COOKIE)
        self.set_status(204)
        self.finish()


class AvatarUploadHandler(ApiHandler):
    """The picture as the request's body (PNG, JPEG, GIF or WebP, by content)."""

    async def prepare(self) -> None:
        limit = self.services.config.avatar_max_bytes
        if self.request.method == "PUT" and len(self.request.body) > limit:
            self.services.store.begin_request()
            raise detail(413, f"The picture is larger than {limit} bytes.")
        # The API's own body limit is for JSON; this body is an image.
        body, self.request.body = self.request.body, b""
        await super().prepare()
        self.request.body = body

    @endpoint("Set the profile picture (the image is the body)", "setAvatar",
              response=models.Me, errors=(400, 413, 503))
    async def put(self) -> None:
        if not self.request.body:
            raise field_error("avatar", "Send the image as the request's body.")
        accounts = self.services.accounts
        try:
            doc = await accounts.set_avatar(self.current_user, self.request.body)
        except NotAnImage as error:
            raise field_error("avatar", str(error)) from None
        self.reply(accounts.me(doc))


class AvatarHandler(ApiHandler):
    """A profile picture, at a URL that changes with it: cached for good,
    served as an image that can never run as a document."""

    @endpoint("A profile picture (PNG)", "avatar", content_type="image/png", auth=False,
              errors=(404, 503))
    async def get(self, user_id: str, version: str) -> None:
        found = await self.services.store.avatar(user_id, version)
        if found is None:
            raise detail(404, "Not found.")
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "public, max-age=31536000, immutable")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        self.set_header("Content-Disposition", 'inline; filename="avatar.png"')
        self.set_header("Cross-Origin-Resource-Policy", "same-origin")
        self.finish(bytes(found["data"]))


class PasswordHandler(ApiHandler):
    @endpoint("Change the password: every other token is revoked", "changePassword",
              body=models.PasswordChange, status=204, errors=(503,))
    async def post(self, body: models.PasswordChange) -> None:
        await self.services.accounts.change_password(self.current_user, self.token_id,
                                                     body.old_password, body.new_password)
        self.set_status(204)
        self.finish()


class SignOutOthersHandler(ApiHandler):
    @endpoint("Sign out every other device: every other token is revoked",
              "signOutOthers", status=204, errors=(503,))
    async def post(self) -> None:
        await self.services.accounts.sign_out_others(self.current_user, self.token_id,
                                                     "signed out from another device")
        self.set_status(204)
        self.finish()


class PasswordResetHandler(ApiHandler):
    @endpoint("Forgotten password: a single-use link by mail (the answer is always the same)",
              "requestPasswordReset", body=models.PasswordReset, status=202,
              response=models.Detail, errors=(429, 503), auth=False)
    async def post(self, body: models.PasswordReset) -> None:
        if not (body.username or body.email):
            raise field_error("username", "Give your username or your email address.")
        wait = await self.services.accounts.request_reset(
            body.username, body.email, self.request.remote_ip or "", base_url(self))
        if wait:
            raise detail(429, "Too many password resets from this address; try again later.",
                         {"Retry-After": str(max(1, round(wait)))})
        self.reply(RESET_ACCEPTED, 202)


class PasswordResetConfirmHandler(ApiHandler):
    @endpoint("Set a new password with a reset link's token: every token is revoked",
              "confirmPasswordReset", body=models.PasswordResetConfirm, status=204,
              errors=(503,), auth=False)
    async def post(self, body: models.PasswordResetConfirm) -> None:
        await self.services.accounts.confirm_reset(body.token, body.new_password)
        self.set_status(204)
        self.finish()
