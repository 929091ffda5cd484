"""The browser page: one HTML shell for / and the share links /chats/<uri>/.

Everything else happens in static/js (ES modules, no build step), which talks
to the JSON API with the login cookie and to the room's WebSocket.
"""

from __future__ import annotations

import time
from pathlib import Path

import tornado.web

from handlers.base import Services, count_request

MODULES = Path(__file__).resolve().parent.parent / "static" / "js"

# No inline script or style anywhere: the page's code and CSS come from /static/.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "frame-ancestors 'none'",
    "base-uri 'self'",
    "form-action 'self'",
])

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


class PageHandler(tornado.web.RequestHandler):
    def initialize(self, services: Services):
        self.services = services
        self.started = time.perf_counter()

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    def get(self, uri: str | None = None) -> None:
        # Reading the token sets the _xsrf cookie that the page's script echoes
        # in X-XSRFToken on every POST and PATCH.
        self.xsrf_token  # noqa: B018
        self.render("app.html", max_message_chars=self.services.config.max_message_chars)

    def on_finish(self) -> None:
        count_request(self, self.started)


class StaticFiles(tornado.web.StaticFileHandler):
    """Tornado's static files, where a path with a NUL byte is not found (the
    operating system cannot even look it up: Tornado's own answer is a 500)."""

    @classmethod
    def get_absolute_path(cls, root: str, path: str) -> str:
        if "\x00" in path:
            raise tornado.web.HTTPError(404)
        return super().get_absolute_path(root, path)


class ModuleHandler(StaticFiles):
    """static/js at /js/, revalidated on every load.

    Modules import each other by plain relative URLs, which static_url cannot
    version; without a Cache-Control header a browser may heuristically reuse
    an old module next to a new one after a deploy. no-cache makes it ask
    (a cheap 304 by ETag) every time.
    """

    def initialize(self, services: Services):
        super().initialize(path=str(MODULES))

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")


def routes() -> list:
    return [
        (r"/", PageHandler),
        (r"/chats/([0-9a-f]{15})/", PageHandler),
        (r"/(?:settings|admin)/", PageHandler),
        (r"/js/(.+\.js)", ModuleHandler),
    ]
