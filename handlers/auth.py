"""Accounts and tokens, at the chatire tutorial's (djoser + JWT) paths."""

from __future__ import annotations

import datetime
import re

from chat.passwords import MAX_PASSWORD_BYTES, PasswordTooLong
from chat.store import UsernameTaken, now, public_user
from handlers.base import TOKEN_COOKIE, ApiError, ApiHandler, detail, field_error

USERNAME = re.compile(r"[\w.@+-]{1,150}", re.ASCII)
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
LOGIN_FAILED = {"non_field_errors": ["Unable to log in with provided credentials."]}


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}


class RegisterHandler(ApiHandler):
    async def post(self) -> None:
        data = self.body()
        username = self.string_field(data, "username", max_length=150)
        password = self.string_field(data, "password")
        email = self.string_field(data, "email", required=False, max_length=254)
        if not USERNAME.fullmatch(username):
            raise field_error("username", "Enter a valid username. This value may contain only "
                                          "letters, numbers, and @/./+/-/_ characters.")
        if email and not EMAIL.fullmatch(email):
            raise field_error("email", "Enter a valid email address.")
        wait = self.services.limits.signup.hit(self.request.remote_ip)
        if wait:
            raise detail(429, "Too many sign-ups from this address; try again later.",
                         retry_after(wait))
        try:
            hashed = await self.services.passwords.hash(password)
        except PasswordTooLong:
            raise field_error(
                "password", f"Ensure this field has no more than {MAX_PASSWORD_BYTES} bytes.") from None
        try:
            doc = await self.services.store.create_user(username, email, hashed)
        except UsernameTaken:
            raise field_error("username", "A user with that username already exists.") from None
        user = public_user(doc)
        self.reply({"id": user["id"], "username": user["username"], "email": user["email"]}, 201)


class LoginHandler(ApiHandler):
    async def post(self) -> None:
        data = self.body()
        username = self.string_field(data, "username")
        password = self.string_field(data, "password")
        config = self.services.config
        wait = self.services.limits.login.hit(self.request.remote_ip)
        if wait:
            raise detail(429, "Too many login attempts from this address; try again later.",
                         retry_after(wait))
        store = self.services.store
        window_start = now() - datetime.timedelta(seconds=config.login_window_seconds)
        failures = await store.login_failures_since(username, window_start)
        if len(failures) >= config.login_max_failures:
            unlock = failures[-config.login_max_failures] - window_start
            raise detail(429, "Too many failed logins for this username; try again later.",
                         retry_after(unlock.total_seconds()))
        doc = await store.user_by_name(username)
        if not await self.services.passwords.check(password, doc["password"] if doc else None):
            await store.record_login_failure(username)
            raise ApiError(400, LOGIN_FAILED)
        if failures:
            await store.clear_login_failures(username)
        token = await self.services.tokens.issue(public_user(doc))
        self.set_token_cookie(token)
        self.reply({"token": token})

    def set_token_cookie(self, token: str) -> None:
        config = self.services.config
        self.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Lax",
                        secure=config.secure_cookies,
                        expires_days=config.token_ttl_days)


class RefreshHandler(LoginHandler):
    async def post(self) -> None:
        data = self.body()
        token = self.string_field(data, "token")
        found = await self.services.tokens.verify(token)
        if found is None:
            raise field_error("non_field_errors", "Invalid or expired token.")
        user, _ = found
        fresh = await self.services.tokens.issue(user)
        if self.auth_source == "cookie":
            self.set_token_cookie(fresh)
        self.reply({"token": fresh})


class LogoutHandler(ApiHandler):
    async def post(self) -> None:
        user = self.require_user()
        await self.services.tokens.revoke(self.token_id)
        self.services.hub.revoke_token(user["id"], self.token_id)
        self.clear_cookie(TOKEN_COOKIE)
        self.set_status(204)
        self.finish()


class MeHandler(ApiHandler):
    async def get(self) -> None:
        self.reply(self.require_user())

