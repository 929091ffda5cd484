"""Accounts and tokens, at the chatire tutorial's (djoser + JWT) paths."""

from __future__ import annotations

import datetime

from chat.store import UsernameTaken, active, now, public_user
from handlers import models
from handlers.base import TOKEN_COOKIE, ApiError, ApiHandler, detail, endpoint, field_error

LOGIN_FAILED = {"non_field_errors": ["Unable to log in with provided credentials."]}


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}


class RegisterHandler(ApiHandler):
    @endpoint("Sign up", "register", body=models.Register, response=models.NewUser, status=201,
              errors=(403, 429, 503), auth=False)
    async def post(self, body: models.Register) -> None:
        username, password, email = body.username, body.password, body.email or ""
        wait = await self.services.limits.signup.hit(self.request.remote_ip)
        if wait:
            raise detail(429, "Too many sign-ups from this address; try again later.",
                         retry_after(wait))
        try:
            doc = await self.services.accounts.register(username, email, password, body.invite)
        except UsernameTaken:
            raise field_error("username", "A user with that username already exists.") from None
        user = public_user(doc)
        self.reply({"id": user["id"], "username": user["username"], "email": user["email"]}, 201)


class LoginHandler(ApiHandler):
    @endpoint("Log in: a token, and the login cookie", "login", body=models.Login,
              response=models.Token, errors=(429, 503), auth=False)
    async def post(self, body: models.Login) -> None:
        username, password = body.username, body.password
        address = self.request.remote_ip or ""
        wait = await self.services.limits.login.hit(address)
        if wait:
            raise detail(429, "Too many login attempts from this address; try again later.",
                         retry_after(wait))
        store = self.services.store
        # Recorded before the failures are read, so guesses sent at once (in any
        # process) count each other rather than all read none.
        attempt = await store.record_login_attempt(username, address)
        try:
            failures = await store.login_failures_since(
                username,
                now() - datetime.timedelta(seconds=self.services.config.login_window_seconds))
            self.check_failures([f for f in failures if f["_id"] != attempt], address)
            doc = await store.user_by_name(username)
            right = await self.services.passwords.check(password,
                                                        doc.get("password") if doc else None)
        except Exception:
            await store.forget_login_attempt(attempt)
            raise
        # A deactivated or deleted account fails as a wrong password does.
        if not right or not active(doc):
            await store.settle_login_failure(attempt)
            raise ApiError(400, LOGIN_FAILED)
        await store.clear_login_failures(username, attempt)
        await store.touch_last_seen(str(doc["_id"]))
        token = await self.services.tokens.issue(public_user(doc))
        self.set_token_cookie(token)
        self.reply({"token": token})

    def check_failures(self, failures: list[dict], address: str) -> None:
        """Failed logins slow a username down; they never lock it. From one
        address, login_max_failures in the window stop that address (for this
        username) until the window passes. From everywhere together, each failure
        past login_max_failures doubles the wait before the next attempt, up to
        login_delay_max_seconds: a guesser gets a few tries a minute, while the
        owner, who never waits longer than that, can always log in. Attempts in
        flight count as failures from their address only: others' cannot delay
        the owner."""
        config = self.services.config
        mine = [f["at"] for f in failures if f.get("address") == address]
        settled = [f for f in failures if not f.get("pending")]
        if len(mine) >= config.login_max_failures:
            ends = mine[-config.login_max_failures] + datetime.timedelta(
                seconds=config.login_window_seconds)
            raise detail(429, "Too many failed logins from this address; try again later.",
                         retry_after((ends - now()).total_seconds()))
        excess = len(settled) - config.login_max_failures
        if excess >= 0:
            delay = min(config.login_delay_max_seconds, 2.0 ** excess)
            wait = (settled[-1]["at"] - now()).total_seconds() + delay
            if wait > 0:
                raise detail(429, "Too many failed logins for this username; try again "
                                  "shortly.", retry_after(wait))

    def set_token_cookie(self, token: str) -> None:
        config = self.services.config
        self.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Lax",
                        secure=config.secure_cookies,
                        expires_days=config.token_ttl_days)


class RefreshHandler(LoginHandler):
    @endpoint("A fresh token for a live one", "refresh", body=models.TokenBody,
              response=models.Token, errors=(401, 429, 503), auth=False)
    async def post(self, body: models.TokenBody) -> None:
        # A refresh is a login without the password: limited as one, per address.
        wait = await self.services.limits.login.hit(self.request.remote_ip or "")
        if wait:
            raise detail(429, "Too many logins and refreshes from this address; try again "
                              "later.", retry_after(wait))
        rotated = await self.services.tokens.rotate(body.token)
        if rotated is None:
            raise field_error("non_field_errors", "Invalid or expired token.")
        user, fresh, old_id = rotated
        # The old token stops working in every process; its sockets stay open.
        self.services.hub.revoke_token(user["id"], old_id, close_sockets=False)
        if self.auth_source == "cookie":
            self.set_token_cookie(fresh)
        self.reply({"token": fresh})


class LogoutHandler(ApiHandler):
    @endpoint("Revoke this token and close its sockets", "logout", status=204,
              errors=(429, 503))
    async def post(self) -> None:
        user = self.require_user()
        await self.services.limits.users.logout(user)
        await self.services.tokens.revoke(self.token_id)
        self.services.hub.revoke_token(user["id"], self.token_id)
        await self.services.store.forget_token_devices(self.token_id)  # its pushes stop too
        self.clear_cookie(TOKEN_COOKIE)
        self.set_status(204)
        self.finish()
