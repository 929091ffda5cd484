"""The OpenAPI 3.1 document, generated: every route's `@endpoint` declaration
(handlers.base) for the operations, the models (handlers.models) for the
schemas, and the configuration for the limits it sets (max_message_chars...).
Nothing here describes a field by hand."""

from __future__ import annotations

import re
from typing import Any

from pydantic import TypeAdapter

from handlers import models
from handlers.base import METHODS, Endpoint

WRITES = ("post", "put", "patch", "delete")
# A route's capture group: one path parameter.
GROUP = re.compile(r"\(([^()]*)\)")
CONFIGURED = "x-configured-"
REF = "#/components/schemas/{model}"

# The answers that mean the same on every operation: (description, model).
ERRORS: dict[int, tuple[str, Any]] = {
    400: ("Invalid input: each key names a field; a body that is not a JSON object gets "
          "a detail", models.FieldErrors | models.Detail),
    401: ("No valid token", models.Detail),
    403: ("Not allowed; or a cookie-authenticated or cross-site write without the "
          "X-XSRFToken header or from an origin not in allowed_origins", models.Detail),
    404: ("No such chat", models.Detail),
    409: ("The chat changed meanwhile (a concurrent permission change won): look again "
          "and retry", models.Detail),
    413: ("Body over the size limit", models.Detail),
    429: ("Rate limited; see Retry-After", models.Detail),
    503: ("MongoDB unavailable; see Retry-After", models.Detail),
}
TOKEN_AUTH = [{"jwt": []}, {"bearer": []}, {"cookie": []}]
SECURITY_SCHEMES = {
    "jwt": {"type": "apiKey", "in": "header", "name": "Authorization",
            "description": "Authorization: JWT <token>"},
    "bearer": {"type": "http", "scheme": "bearer"},
    "cookie": {"type": "apiKey", "in": "cookie", "name": "chat_token"},
    "metricsToken": {"type": "http", "scheme": "bearer",
                     "description": "metrics.token; without one, loopback clients only"},
}
SOCKET = "/ws/chats/{uri}/"
SOCKET_DESCRIPTION = (
    "The room's WebSocket (members only; the login cookie, an Authorization header or "
    "?token=). With ?since=N: every message after N, then a ready frame, then the live "
    "stream. Without since (chatire's client): live message frames only, no ready. "
    "Close codes: 1001 going away, 1007 a frame that is not UTF-8, 1008 policy, "
    "1009 frame too big, 1011 the room could not be joined (reconnect), 4008 slow consumer "
    "(reconnect with since).")
STREAM = "/ws/"
STREAM_DESCRIPTION = (
    "The user stream: one WebSocket for every chat of its user (authenticated like room "
    "sockets). First a chats frame (GET /api/chats/'s first page), then every event of each "
    "chat after its last_seq, chat and chat_gone frames as the user's memberships change, and "
    "the user's own read and notifications (level) frames; subscribe with since for a "
    "chat's catch-up, ready (with uri) and signals. Client actions carry uri. Close codes as "
    "on room sockets.")


def operations(routes: list) -> list[tuple[str, str, Endpoint]]:
    """(route pattern, method, declaration) of every declared handler method."""
    found = []
    for route in routes:
        pattern, handler = route[0], route[1]
        for method in METHODS:
            spec = getattr(getattr(handler, method, None), "endpoint", None)
            if spec is not None:
                found.append((pattern, method, spec))
    return found


def path_of(pattern: str, spec: Endpoint) -> tuple[str, list[dict]]:
    """/api/chats/([0-9a-f]{15})/ -> /api/chats/{uri}/ and its parameter."""
    groups = GROUP.findall(pattern)
    names = iter(spec.path_params)
    path = GROUP.sub(lambda _: "{" + next(names) + "}", pattern).rstrip("$")
    return path, [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": f"^{group}$"}}
                  for name, group in zip(spec.path_params, groups, strict=True)]


class Schemas:
    """Collects the types to document, then turns them into components."""

    def __init__(self):
        self.wanted: dict[tuple[int, str], tuple[Any, str]] = {}

    def add(self, kind: Any, mode: str = "serialization") -> tuple[int, str]:
        key = (id(kind), mode)
        self.wanted[key] = (kind, mode)
        return key

    def generate(self) -> tuple[dict, dict]:
        inputs = [(key, mode, TypeAdapter(kind)) for key, (kind, mode) in self.wanted.items()]
        by_key, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF)
        return {key: schema for (key, _mode), schema in by_key.items()}, \
            definitions.get("$defs", {})


def without_null(schema: dict) -> dict:
    """A query parameter's schema: absent, not null, is how it is left out."""
    options = [s for s in schema.get("anyOf", ()) if s.get("type") != "null"]
    if len(options) == 1:
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        return {**options[0], **rest}
    return {k: v for k, v in schema.items() if k != "default" or v is not None}


def query_parameters(definitions: dict, reference: dict) -> list[dict]:
    """A query model's fields as OpenAPI query parameters."""
    query = definitions[reference["$ref"].rsplit("/", 1)[1]]
    return [{"name": name, "in": "query", "required": name in query.get("required", ()),
             "schema": without_null(schema)} for name, schema in query["properties"].items()]


def configured(node: Any, config) -> Any:
    """The document with every x-configured-<keyword>: <setting> replaced by
    <keyword>: <the setting's value>."""
    if isinstance(node, list):
        return [configured(item, config) for item in node]
    if not isinstance(node, dict):
        return node
    filled = {}
    for key, value in node.items():
        if key.startswith(CONFIGURED):
            filled[key[len(CONFIGURED):]] = getattr(config, value)
        else:
            filled[key] = configured(value, config)
    return filled


def content(schema: dict, content_type: str = "application/json") -> dict:
    return {content_type: {"schema": schema}}


def document(routes: list, config) -> dict:
    schemas = Schemas()
    declared = operations(routes)
    keys: dict[int, dict[str, Any]] = {}
    for _pattern, _method, spec in declared:
        if spec.body is not None:
            keys.setdefault(id(spec), {})["body"] = schemas.add(spec.body, "validation")
        if spec.query is not None:
            keys.setdefault(id(spec), {})["query"] = schemas.add(spec.query, "validation")
        if spec.response is not None:
            keys.setdefault(id(spec), {})["response"] = schemas.add(spec.response)
        for _description, kind in spec.responses.values():
            schemas.add(kind)
    error_keys = {status: schemas.add(kind) for status, (_, kind) in ERRORS.items()}
    client = schemas.add(models.ClientFrame, "validation")
    server = schemas.add(models.ServerFrame)
    socket_query = schemas.add(models.SocketQuery, "validation")
    stream_client = schemas.add(models.STREAM_FRAMES.union, "validation")
    stream_server = schemas.add(models.StreamServerFrame)
    stream_query = schemas.add(models.StreamQuery, "validation")
    generated, definitions = schemas.generate()

    paths: dict[str, dict] = {}
    for pattern, method, spec in declared:
        path, parameters = path_of(pattern, spec)
        operation: dict[str, Any] = {
            "summary": spec.summary, "operationId": spec.operation_id,
            "security": spec.security if spec.security is not None
            else (TOKEN_AUTH if spec.auth else []),
        }
        mine = keys.get(id(spec), {})
        if "query" in mine:
            operation["parameters"] = query_parameters(definitions, generated[mine["query"]])
        if "body" in mine:
            body = generated[mine["body"]]
            operation["requestBody"] = {"required": spec.body_required, "content": {
                **content(body), **content(body, "application/x-www-form-urlencoded")}}
        ok: dict[str, Any] = {"description": spec.summary}
        if "response" in mine:
            ok["content"] = content(generated[mine["response"]], spec.content_type)
        answers = {str(spec.status): ok}
        statuses = set(spec.errors)
        if spec.body is not None or spec.query is not None:
            statuses.add(400)
        if spec.auth:
            statuses.add(401)
        if method in WRITES:
            statuses |= {403, 413}
        for status in sorted(statuses):
            description, _ = ERRORS[status]
            answers[str(status)] = {"description": description,
                                    "content": content(generated[error_keys[status]])}
        for status, (description, kind) in spec.responses.items():
            answers[str(status)] = {"description": description,
                                    "content": content(generated[schemas.add(kind)])}
        operation["responses"] = dict(sorted(answers.items()))
        entry = paths.setdefault(path, {})
        if parameters:
            entry["parameters"] = parameters
        entry[method] = operation

    return configured({
        "openapi": "3.1.0",
        "info": {"title": "Chat server API", "version": "1.0.0",
                 "description": "Accounts, chat rooms and message history. Realtime delivery "
                                f"is the WebSocket {SOCKET}?since=N (see x-websocket)."},
        "components": {"schemas": definitions, "securitySchemes": SECURITY_SCHEMES},
        "paths": paths,
        "x-websocket": {SOCKET: {
            "description": SOCKET_DESCRIPTION,
            "parameters": [
                {"name": "uri", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": models.URI_PATTERN}},
                *query_parameters(definitions, generated[socket_query])],
            "client_frames": generated[client],
            "server_frames": generated[server],
        }, STREAM: {
            "description": STREAM_DESCRIPTION,
            "parameters": query_parameters(definitions, generated[stream_query]),
            "client_frames": generated[stream_client],
            "server_frames": generated[stream_server],
        }},
    }, config)

