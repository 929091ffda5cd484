"""Reaching people who are away: levels, Web Push devices, the VAPID key and
the emails' one-click unsubscribe (chat/notifications.py)."""

from __future__ import annotations

import jwt

from handlers import models
from handlers.base import ApiError, ApiHandler, endpoint
from handlers.pages import MODULES, StaticFiles

UNSUBSCRIBE = "unsubscribe"


def unsubscribe_token(secret: str, user_id: str, uri: str) -> str:
    """A signed token that turns off one user's emails about one room, no login needed."""
    return jwt.encode({"sub": user_id, "uri": uri, "purpose": UNSUBSCRIBE}, secret, "HS256")


class LevelHandler(ApiHandler):
    @endpoint("My notification level in the chat", "setNotificationLevel",
              body=models.NotificationLevel, response=models.NotificationLevel, errors=(404, 503))
    async def put(self, uri: str, body: models.NotificationLevel) -> None:
        user = self.require_user()
        room = await self.services.store.set_level(uri, user["id"], body.level)
        if room is None:
            raise ApiError(404, {"detail": "Not found."})
        self.services.notifier.people.changed(uri)  # every process's cached levels
        self.services.streams.level_changed(user["id"], uri, body.level)  # my other clients
        self.reply({"level": body.level})


class PushKeyHandler(ApiHandler):
    @endpoint("The server's VAPID public key, for PushManager.subscribe", "pushKey",
              response=models.PushKey, auth=False, errors=(503,))
    async def get(self) -> None:
        if not self.services.notifier.public_key:
            raise ApiError(503, {"detail": "Not ready yet; try again shortly."}, {"Retry-After": "1"})
        self.reply({"key": self.services.notifier.public_key})


class PushSubscriptionsHandler(ApiHandler):
    @endpoint("Register this device for pushes (the same endpoint again updates it)",
              "addPushSubscription", body=models.PushSubscription, status=204, errors=(503,))
    async def post(self, body: models.PushSubscription) -> None:
        user = self.require_user()
        await self.services.store.add_subscription(user["id"], self.token_id, body.endpoint,
                                                   body.keys.p256dh, body.keys.auth)
        self.set_status(204)
        self.finish()

    @endpoint("Stop pushes to this device", "removePushSubscription",
              body=models.PushUnsubscription, status=204, errors=(404, 503))
    async def delete(self, body: models.PushUnsubscription) -> None:
        user = self.require_user()
        if not await self.services.store.remove_subscription(user["id"], body.endpoint):
            raise ApiError(404, {"detail": "No such subscription of yours (endpoint)."})
        self.set_status(204)
        self.finish()


class UnsubscribeHandler(ApiHandler):
    """The link in notification emails: GET (a person clicking) and POST (RFC 8058
    one-click, from the mail client) both turn the room's emails off."""

    async def unsubscribe(self, token: str) -> None:
        try:
            claims = jwt.decode(token, self.services.config.secret, ["HS256"])
        except jwt.PyJWTError:
            claims = {}
        if claims.get("purpose") != UNSUBSCRIBE or not isinstance(claims.get("uri"), str):
            raise ApiError(400, {"token": ["Not a valid unsubscribe link."]})
        if not await self.services.store.email_off(claims["uri"], claims["sub"]):
            raise ApiError(404, {"detail": "Not found."})
        self.reply({"detail": "You will get no more emails about this chat."})

    @endpoint("Unsubscribe from a chat's notification emails (the emails' link)",
              "unsubscribeEmails", query=models.UnsubscribeQuery, auth=False, errors=(400, 404, 503))
    async def get(self, query: models.UnsubscribeQuery) -> None:
        await self.unsubscribe(query.token)

    @endpoint("One-click unsubscribe (RFC 8058)", "unsubscribeEmailsOneClick",
              query=models.UnsubscribeQuery, auth=False, errors=(400, 404, 503))
    async def post(self, query: models.UnsubscribeQuery) -> None:
        await self.unsubscribe(query.token)


class ServiceWorkerHandler(StaticFiles):
    """static/sw.js at /sw.js: at the root so its scope is the whole site,
    revalidated on every load so a new worker replaces the old at once."""

    def initialize(self, services) -> None:
        super().initialize(path=str(MODULES.parent))

    def get(self, include_body: bool = True):
        return super().get("sw.js", include_body)

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Content-Type", "text/javascript; charset=utf-8")
        self.set_header("Service-Worker-Allowed", "/")
        self.set_header("Cache-Control", "no-cache")
