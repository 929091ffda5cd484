"""Operations: /healthz, /metrics and the OpenAPI document."""

from __future__ import annotations

import hmac
import ipaddress
import json

from chat.store import Unavailable
from handlers import openapi
from handlers.base import ApiHandler, bearer_token, detail


class HealthHandler(ApiHandler):
    async def get(self) -> None:
        try:
            await self.services.store.ping()
            mongo = "ok"
        except Unavailable:
            mongo = "down"
        broker = "ok" if self.services.hub.broker.healthy else "down"
        status = 200 if mongo == broker == "ok" else 503
        if status == 503:
            self.set_header("Retry-After", "5")
        self.reply({"mongo": mongo, "broker": broker}, status)


class OpenApiHandler(ApiHandler):
    document = json.dumps(openapi.document())

    def get(self) -> None:
        self.finish(self.document)


class MetricsHandler(ApiHandler):
    """Prometheus text format; a token, or else loopback clients only."""

    def get(self) -> None:
        token = self.services.config.metrics_token
        if token:
            given = bearer_token(self.request.headers.get("Authorization", "")) or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise detail(401, "Metrics need 'Authorization: Bearer <metrics token>'.",
                             {"WWW-Authenticate": 'Bearer realm="metrics"'})
        elif not ipaddress.ip_address(self.request.remote_ip or "0.0.0.0").is_loopback:
            raise detail(403, "Metrics are served to loopback clients only; set metrics.token.")
        self.set_header("Content-Type", self.services.metrics.content_type)
        self.finish(self.services.metrics.render())

    async def prepare(self) -> None:
        pass  # no user authentication: the metrics token or the address decides
