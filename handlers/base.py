"""The edge's common ground: JSON and form bodies in, JSON out, auth, errors."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import re
import time
import uuid
from typing import Any

import pydantic
import tornado.httputil
import tornado.web

from chat import store as store_errors
from chat.events import Conflict, InvalidField
from chat.hub import InvalidMessage, RateLimited
from handlers import models

log = logging.getLogger("chat.http")

TOKEN_COOKIE = "chat_token"
METHODS = ("get", "post", "put", "patch", "delete")
# What a page of an allowed origin may send (Content-Type: application/json
# needs a preflight; a form's does not).
CORS_HEADERS = "Authorization, Content-Type, X-Request-Id"
CORS_MAX_AGE = "600"
AUTH_SCHEMES = ("jwt", "bearer")
CHALLENGE = 'JWT realm="chat", Bearer realm="chat"'
RETRY_AFTER_UNAVAILABLE = "5"
# A client's (or nginx's $request_id) X-Request-Id is kept only if it looks like one.
REQUEST_ID = re.compile(r"[\w.-]{1,64}", re.ASCII)
# The API's answers are JSON, never a document to render or frame. Handlers
# that serve documents (the browser page) set their own CSP, which wins.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders(tornado.web.OutputTransform):
    """Adds SECURITY_HEADERS a response lacks and drops Tornado's `Server`
    header (no version for scanners). A transform because it is the one hook
    Tornado runs for every response: handlers, its own errors, static files and
    the WebSocket handshake."""

    def transform_first_chunk(self, status_code, headers, chunk, finishing):
        for name, value in SECURITY_HEADERS.items():
            headers.setdefault(name, value)
        if "Server" in headers:
            del headers["Server"]
        return status_code, headers, chunk


class MalformedRequests(tornado.httputil.HTTPServerConnectionDelegate):
    """The application, except that a request Tornado refuses before any handler
    sees it (a bad or repeated Host header) is answered here: Tornado's own
    answer is a bare "400 Bad Request" without the security headers."""

    def __init__(self, application: tornado.web.Application):
        self.application = application

    def start_request(self, server_conn, request_conn) -> tornado.httputil.HTTPMessageDelegate:
        return MalformedRequest(self.application.start_request(server_conn, request_conn),
                                request_conn)

    def on_close(self, server_conn) -> None:
        self.application.on_close(server_conn)


class MalformedRequest(tornado.httputil.HTTPMessageDelegate):
    def __init__(self, delegate: tornado.httputil.HTTPMessageDelegate, connection):
        self.delegate = delegate
        self.connection = connection
        self.refused = False

    def headers_received(self, start_line, headers):
        try:
            return self.delegate.headers_received(start_line, headers)
        except tornado.httputil.HTTPInputError as error:
            log.info("malformed request refused: %s", error)
            self.refused = True
            body = json.dumps({"detail": "Bad request: invalid Host header."}).encode()
            answer = tornado.httputil.HTTPHeaders({
                **SECURITY_HEADERS, "Content-Type": "application/json; charset=utf-8",
                "Content-Length": str(len(body)), "Connection": "close"})
            self.connection.write_headers(
                tornado.httputil.ResponseStartLine("HTTP/1.1", 400, "Bad Request"), answer, body)
            self.connection.finish()
            return None

    def data_received(self, chunk: bytes):
        return None if self.refused else self.delegate.data_received(chunk)

    def finish(self) -> None:
        if not self.refused:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


class ApiError(Exception):
    """An answer other than success: status, JSON body, extra headers."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.headers = headers or {}


def field_error(field: str, message: str, status: int = 400) -> ApiError:
    return ApiError(status, {field: [message]})


def validated(model: type[models.Wire], data: Any, config, *, strict: bool) -> models.Wire:
    """data as an instance of model, or a 400 naming each wrong field."""
    try:
        models.refuse_unstorable_text(data, model.model_fields)
        return model.model_validate(data, strict=strict,
                                    context={"config": config, "strict": strict})
    except pydantic.ValidationError as error:
        raise ApiError(400, models.field_errors(model, error)) from None
    except models.Invalid as error:
        raise ApiError(400, error.problems) from None


def decoded_arguments(arguments: dict[str, list[bytes]]) -> dict[str, str]:
    """A form's or query's fields, as sent: not stripped; a field given twice or
    that is not UTF-8 is a 400 naming it."""
    fields = {}
    for name, values in arguments.items():
        if len(values) > 1:
            raise field_error(name, "Give this field once.")
        try:
            fields[name] = values[0].decode()
        except UnicodeDecodeError:
            raise field_error(name, "Not valid UTF-8.") from None
    return fields


def outermost_field(raw: bytes) -> str | None:
    """The top-level key of a JSON object under which the nesting is deepest:
    json.loads gives up on deep nesting without saying where."""
    depth = deepest = 0
    key = field = None
    text = raw.decode(errors="replace")
    position = 0
    while position < len(text):
        char = text[position]
        if char == '"':
            end = position + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if depth == 1:
                key = text[position + 1:end]
            position = end
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, field = depth, key
        elif char in "]}":
            depth -= 1
        position += 1
    return field


def detail(status: int, message: str, headers: dict[str, str] | None = None) -> ApiError:
    return ApiError(status, {"detail": message}, headers)


def unauthorized(message: str = "Authentication credentials were not provided.") -> ApiError:
    return detail(401, message, {"WWW-Authenticate": CHALLENGE})


def bearer_token(header: str) -> str | None:
    """The token of "JWT <token>" or "Bearer <token>"."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() in AUTH_SCHEMES and token.strip():
        return token.strip()
    return None


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """What one handler method takes and answers; handlers.openapi documents it."""

    summary: str
    operation_id: str
    body: type[models.Wire] | None = None
    body_required: bool = True
    query: type[models.Wire] | None = None
    # A model, list[Model], any type a pydantic TypeAdapter takes, or None (no body).
    response: Any = None
    status: int = 200
    content_type: str = "application/json"
    # Statuses beyond those that follow from the rest (400 for a body or query,
    # 401 with auth, 403 and 413 for writes), described in handlers.openapi.ERRORS.
    errors: tuple[int, ...] = ()
    # Other answers: {status: (description, model)}.
    responses: dict[int, tuple[str, Any]] = dataclasses.field(default_factory=dict)
    auth: bool = True
    # None: the token schemes when auth, else none; or OpenAPI security requirements.
    security: list | None = None
    path_params: tuple[str, ...] = ()


def endpoint(summary: str, operation_id: str, **declared: Any):
    """Declare a handler method's models once: it is called with `body=` and
    `query=` validated (400 naming the field otherwise), after the caller is
    authenticated when `auth` (the default), and documented in /api/openapi.json.

        @endpoint("Post a message", "postMessage", body=NewMessage, response=Posted,
                  errors=(403, 404, 429, 503))
        async def post(self, uri: str, body: NewMessage) -> None: ...
    """
    def decorate(method):
        path_params = tuple(name for name in inspect.signature(method).parameters
                            if name not in ("self", "body", "query"))
        spec = Endpoint(summary, operation_id, path_params=path_params, **declared)

        @functools.wraps(method)
        async def run(self, *path_args: str) -> None:
            if spec.auth:
                self.require_user()
            given = {}
            if spec.query is not None:
                given["query"] = self.parse_query(spec.query)
            if spec.body is not None:
                given["body"] = self.parse_body(spec.body)
            result = method(self, *path_args, **given)
            if inspect.isawaitable(result):
                await result

        run.endpoint = spec
        return run
    return decorate


class Services:
    """What every handler needs, built once in server.py."""

    def __init__(self, config, store, tokens, passwords, hub, metrics, limits, events, streams,
                 dms=None, blocks=None, files=None, previews=None, accounts=None, search=None,
                 process_id: str = ""):
        self.config = config
        self.streams = streams
        self.store = store
        self.tokens = tokens
        self.passwords = passwords
        self.hub = hub
        self.metrics = metrics
        self.limits = limits
        self.events = events
        self.dms = dms  # chat.dms.DirectMessages
        self.blocks = blocks  # chat.blocks.BlockList
        self.files = files
        self.previews = previews
        self.accounts = accounts
        self.search = search  # a chat.search.SearchEngine
        self.process_id = process_id
        self.notifier = None  # chat.notifications.Notifier, set by server.py


class Authenticating:
    """Finds the caller from the Authorization header, or else the login cookie."""

    services: Services
    token_id: str | None = None
    auth_source: str | None = None
    # Why the request was refused, for the access log (never a secret or a text).
    refusal: str = ""

    @functools.cached_property
    def request_id(self) -> str:
        given = self.request.headers.get("X-Request-Id", "")
        return given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]

    def credentials(self) -> tuple[str | None, str | None]:
        header = self.request.headers.get("Authorization")
        if header is not None:
            return bearer_token(header), "header"
        cookie = self.get_cookie(TOKEN_COOKIE)
        if cookie:
            return cookie, "cookie"
        return None, None

    async def authenticate(self) -> dict | None:
        token, source = self.credentials()
        if token is None:
            if source == "header":
                raise unauthorized("Invalid Authorization header. Use 'JWT <token>' or 'Bearer <token>'.")
            return None
        found = await self.services.tokens.verify(token)
        if found is None:
            if source == "cookie":
                # A stale login cookie must not lock its browser out of logging in again.
                return None
            raise unauthorized("Invalid or expired token.")
        user, self.token_id = found
        self.auth_source = source
        return user


def api_error(error: BaseException | None) -> ApiError | None:
    """The answer for an error of the core (chat/), or None when it is not one."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, store_errors.Unavailable):
        return detail(503, "The database is unavailable; try again shortly.",
                      {"Retry-After": RETRY_AFTER_UNAVAILABLE})
    if isinstance(error, store_errors.NotFound):
        return detail(404, "Not found.")
    if isinstance(error, store_errors.Banned):
        return detail(403, "You are banned from this chat.")
    if isinstance(error, store_errors.NotMember):
        return detail(403, "You are not a member of this chat.")
    if isinstance(error, store_errors.Forbidden):
        return detail(403, str(error))
    if isinstance(error, InvalidMessage):
        return field_error(error.field, str(error))
    if isinstance(error, InvalidField):
        return field_error(error.field, str(error))
    if isinstance(error, Conflict):
        return detail(409, str(error))
    if isinstance(error, RateLimited):
        return detail(429, str(error), {"Retry-After": str(max(1, round(error.retry_after)))})
    return None


def count_request(handler: tornado.web.RequestHandler, started: float) -> None:
    """The request counter and latency histogram, labelled by handler class."""
    name = type(handler).__name__
    metrics = handler.services.metrics
    metrics.requests.labels(name, handler.request.method, str(handler.get_status())).inc()
    metrics.request_latency.labels(name).observe(time.perf_counter() - started)


class ApiHandler(Authenticating, tornado.web.RequestHandler):
    def initialize(self, services: Services):
        self.services = services
        self.started = time.perf_counter()
        self.set_cors_headers()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Request-Id", self.request_id)
        self.set_header("Vary", "Origin")
        if hasattr(self, "services"):  # Tornado runs this once before initialize()
            self.set_cors_headers()

    def set_cors_headers(self) -> None:
        """A page of an allowed origin (chatire's, on its own dev server) may read
        the answers; any other origin gets no Access-Control header."""
        if self.cors_origin() is not None:
            self.set_header("Access-Control-Allow-Origin", self.cors_origin())
            self.set_header("Access-Control-Expose-Headers", "Retry-After, X-Request-Id")

    def cors_origin(self) -> str | None:
        """The request's Origin when it is one of allowed_origins."""
        origin = self.request.headers.get("Origin")
        return origin if origin in self.services.config.allowed_origins else None

    def options(self, *path_args: str) -> None:
        """The CORS preflight: the methods this path has, and the headers it reads.
        Cookies are never allowed cross-origin: such pages send a token."""
        if self.cors_origin() is None:
            raise detail(403, "Cross-origin requests are allowed only from allowed_origins.")
        methods = [m.upper() for m in METHODS if hasattr(getattr(self, m, None), "endpoint")]
        self.set_header("Access-Control-Allow-Methods", ", ".join(methods))
        self.set_header("Access-Control-Allow-Headers", CORS_HEADERS)
        self.set_header("Access-Control-Max-Age", CORS_MAX_AGE)
        self.set_status(204)
        self.finish()

    def check_xsrf_cookie(self) -> None:
        # Only a request that would be authenticated by the browser's cookie can
        # be forged cross-site; header tokens and anonymous calls need no XSRF.
        if self.request.headers.get("Authorization") is None and self.get_cookie(TOKEN_COOKIE):
            try:
                super().check_xsrf_cookie()
            except tornado.web.HTTPError:
                raise detail(403, "CSRF failed: send the _xsrf cookie's value in an "
                                  "X-XSRFToken header.") from None

    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return  # a preflight carries no credentials and no body
        self.services.store.begin_request()
        if len(self.request.body) > self.services.config.max_body_bytes:
            raise detail(413, f"Request body is larger than {self.services.config.max_body_bytes} bytes.")
        self.current_user = await self.authenticate()

    def require_user(self) -> dict:
        if self.current_user is None:
            raise unauthorized()
        return self.current_user

    def body_fields(self) -> tuple[dict[str, Any], bool]:
        """The request's fields, from a JSON object or a form, and whether it was a form."""
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            return decoded_arguments(self.request.body_arguments), True
        raw = self.request.body
        if not raw.strip():
            return {}, False
        try:
            data = json.loads(raw)
        except RecursionError:
            raise field_error(outermost_field(raw) or "non_field_errors",
                              "Nested too deeply.") from None
        except ValueError:  # also UnicodeDecodeError: not UTF-8
            raise detail(400, "JSON parse error: the body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise detail(400, "Expected a JSON object.")
        return data, False

    def parse_body(self, model: type[models.Wire]) -> models.Wire:
        data, form = self.body_fields()
        # A form has only strings; JSON has types, which must be the documented ones.
        return validated(model, data, self.services.config, strict=not form)

    def parse_query(self, model: type[models.Wire]) -> models.Wire:
        # An empty parameter (?after=) is the same as leaving it out.
        given = {k: v for k, v in decoded_arguments(self.request.query_arguments).items() if v}
        return validated(model, given, self.services.config, strict=False)

    def reply(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, ensure_ascii=False))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, (ApiError, store_errors.Unavailable, store_errors.NotFound,
                              store_errors.NotMember, store_errors.Forbidden, InvalidMessage,
                              InvalidField, RateLimited, Conflict)):
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, tornado.web.HTTPError):
            error = detail(status_code, error.log_message or self._reason)
        else:
            error = api_error(error) or detail(500, "Server error.")
        body = error.body if isinstance(error.body, dict) else {}
        self.refusal = str(body.get("detail") or "; ".join(
            f"{field}: {messages[0] if isinstance(messages, list) else messages}"
            for field, messages in body.items()))
        self.set_status(error.status)
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.finish(json.dumps(error.body, ensure_ascii=False))

    def on_finish(self) -> None:
        count_request(self, self.started)


class NotFoundHandler(ApiHandler):
    async def prepare(self) -> None:
        raise detail(404, "Not found.")
