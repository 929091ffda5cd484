"""Operations: /healthz, /metrics and the OpenAPI document."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from chat.store import Unavailable
from handlers import models
from handlers.base import ApiHandler, bearer_token, detail, endpoint


class HealthHandler(ApiHandler):
    @endpoint("MongoDB and broker health", "health", response=models.Health, auth=False,
              responses={503: ("Something is down", models.Health)})
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
    @endpoint("This document (OpenAPI 3.1)", "openapi", response=dict[str, Any], auth=False)
    def get(self) -> None:
        # Generated once, in server.make_app, from the routes' endpoint models.
        self.finish(self.settings["openapi_json"])


class MetricsHandler(ApiHandler):
    """Prometheus text format; a token, or else loopback clients only."""

    @endpoint("Prometheus metrics of this process", "metrics", response=str,
              content_type="text/plain", auth=False, security=[{"metricsToken": []}, {}],
              responses={401: ("metrics.token is set and was not sent", models.Detail),
                         403: ("No metrics.token, and not a loopback client", models.Detail)})
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
