"""The OpenAPI 3.1 document of the JSON API, served at /api/openapi.json."""

from __future__ import annotations


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def request(schema_name: str) -> dict:
    schema = ref(schema_name)
    return {"required": True, "content": {
        "application/json": {"schema": schema},
        "application/x-www-form-urlencoded": {"schema": schema},
    }}


ERRORS = {
    "400": json_body({"anyOf": [ref("FieldErrors"), ref("Detail")]},
                     "Invalid input: each key names a field; a body that is not a JSON "
                     "object gets a detail"),
    "401": json_body(ref("Detail"), "No valid token"),
    "403": json_body(ref("Detail"), "Not allowed; or a cookie-authenticated write without "
                                    "the X-XSRFToken header"),
    "404": json_body(ref("Detail"), "No such chat"),
    "413": json_body(ref("Detail"), "Body over the size limit"),
    "429": json_body(ref("Detail"), "Rate limited; see Retry-After"),
    "503": json_body(ref("Detail"), "MongoDB unavailable; see Retry-After"),
}


def responses(ok_status: str, ok: dict, *errors: str) -> dict:
    answer = {ok_status: ok}
    for status in errors:
        answer[status] = ERRORS[status]
    return answer


AUTH = [{"jwt": []}, {"bearer": []}, {"cookie": []}]
URI = {"name": "uri", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": "^[0-9a-f]{15}$"}}
SEQ = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
# Optional string fields: null is the same as leaving the field out.
NULL = {"type": "null"}

SCHEMAS = {
    "User": {"type": "object", "required": ["id", "username", "email", "first_name", "last_name"],
             "properties": {"id": {"type": "string"}, "username": {"type": "string"},
                            "email": {"type": "string"}, "first_name": {"type": "string"},
                            "last_name": {"type": "string"}}},
    "NewUser": {"type": "object", "required": ["id", "username", "email"],
                "properties": {"id": {"type": "string"}, "username": {"type": "string"},
                               "email": {"type": "string"}}},
    "Register": {"type": "object", "required": ["username", "password"],
                 "properties": {"username": {"type": "string", "minLength": 1, "maxLength": 150,
                                             "pattern": "^[A-Za-z0-9@.+_-]+$"},
                                "password": {"type": "string", "minLength": 1},
                                "email": {"anyOf": [
                                    {"type": "string", "format": "email", "maxLength": 254},
                                    {"const": ""}, NULL]}}},
    "Login": {"type": "object", "required": ["username", "password"],
              "properties": {"username": {"type": "string"}, "password": {"type": "string"}}},
    "TokenBody": {"type": "object", "required": ["token"],
                  "properties": {"token": {"type": "string"}}},
    "Token": {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}},
    "Detail": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
    "FieldErrors": {"type": "object", "minProperties": 1,
                    "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    "ChatCreated": {"type": "object", "required": ["status", "uri", "message"],
                    "properties": {"status": {"const": "SUCCESS"},
                                   "uri": {"type": "string", "pattern": "^[0-9a-f]{15}$"},
                                   "message": {"type": "string"}}},
    "ChatSummary": {"type": "object", "required": ["uri", "owner", "members", "seq", "updated"],
                    "properties": {"uri": {"type": "string"}, "owner": {"type": "string"},
                                   "members": {"type": "integer"}, "seq": SEQ,
                                   "updated": {"type": "string", "format": "date-time"}}},
    "Chat": {"type": "object", "required": ["uri", "owner", "members", "seq"],
             "properties": {"uri": {"type": "string"},
                            "owner": {"anyOf": [ref("User"), {"type": "null"}]},
                            "members": {"type": "array", "items": ref("User")},
                            "seq": SEQ,
                            "created": {"type": "string", "format": "date-time"},
                            "updated": {"type": "string", "format": "date-time"}}},
    "Join": {"type": "object", "properties": {"username": {"anyOf": [{"type": "string"}, NULL]}}},
    "Joined": {"type": "object", "required": ["status", "members", "message", "user"],
               "properties": {"status": {"const": "SUCCESS"}, "uri": {"type": "string"},
                              "members": {"type": "array", "items": ref("User")},
                              "message": {"type": "string"}, "user": ref("User")}},
    "NewMessage": {"type": "object", "required": ["message"],
                   "properties": {"message": {"type": "string", "minLength": 1, "maxLength": 2000},
                                  # Empty or null: no idempotency key.
                                  "client_id": {"anyOf": [{"type": "string", "maxLength": 64},
                                                          NULL]}}},
    "Message": {"type": "object", "required": ["id", "seq", "uri", "user", "message", "created"],
                "properties": {"id": {"type": "string"}, "seq": {"type": "integer", "minimum": 1},
                               "uri": {"type": "string"}, "user": ref("User"),
                               "message": {"type": "string"},
                               "created": {"type": "string", "format": "date-time"},
                               "client_id": {"type": "string"}}},
    "Posted": {"allOf": [ref("Message"), {"type": "object", "required": ["status"],
                                          "properties": {"status": {"const": "SUCCESS"}}}]},
    "MessagePage": {"type": "object", "required": ["uri", "messages", "has_more"],
                    "properties": {"uri": {"type": "string"},
                                   "messages": {"type": "array", "items": ref("Message")},
                                   "has_more": {"type": "boolean"}}},
    "Health": {"type": "object", "required": ["mongo", "broker"],
               "properties": {"mongo": {"enum": ["ok", "down"]},
                              "broker": {"enum": ["ok", "down"]}}},
}


def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Chat server API", "version": "1.0.0",
                 "description": "Accounts, chat rooms and message history. Realtime delivery "
                                "is the WebSocket /ws/chats/{uri}/?since=N."},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "jwt": {"type": "apiKey", "in": "header", "name": "Authorization",
                        "description": "Authorization: JWT <token>"},
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "chat_token"},
                "metricsToken": {"type": "http", "scheme": "bearer",
                                 "description": "metrics.token; without one, loopback clients only"},
            },
        },
        "paths": {
            "/auth/users/create/": {"post": {
                "summary": "Sign up", "operationId": "register", "security": [],
                "requestBody": request("Register"),
                "responses": responses("201", json_body(ref("NewUser"), "Created"),
                                       "400", "403", "413", "429", "503")}},
            "/auth/jwt/create/": {"post": {
                "summary": "Log in: a token, and the login cookie", "operationId": "login",
                "security": [], "requestBody": request("Login"),
                "responses": responses("200", json_body(ref("Token"), "Logged in"),
                                       "400", "403", "413", "429", "503")}},
            "/auth/jwt/refresh/": {"post": {
                "summary": "A fresh token for a live one", "operationId": "refresh",
                "security": [], "requestBody": request("TokenBody"),
                "responses": responses("200", json_body(ref("Token"), "Refreshed"),
                                       "400", "401", "403", "413", "503")}},
            "/auth/logout/": {"post": {
                "summary": "Revoke this token and close its sockets", "operationId": "logout",
                "security": AUTH,
                "responses": responses("204", {"description": "Logged out"}, "401", "403",
                                       "503")}},
            "/auth/me/": {"get": {
                "summary": "The caller", "operationId": "me", "security": AUTH,
                "responses": responses("200", json_body(ref("User"), "The caller"),
                                       "401", "503")}},
            "/api/chats/": {
                "post": {"summary": "Start a chat", "operationId": "createChat", "security": AUTH,
                         "responses": responses("200", json_body(ref("ChatCreated"), "Created"),
                                                "401", "403", "413", "503")},
                "get": {"summary": "My chats, newest activity first", "operationId": "listChats",
                        "security": AUTH,
                        "responses": responses("200", json_body(
                            {"type": "array", "items": ref("ChatSummary")}, "My chats"),
                            "401", "503")}},
            "/api/chats/{uri}/": {
                "parameters": [URI],
                "get": {"summary": "A chat with its owner and members", "operationId": "getChat",
                        "security": AUTH,
                        "responses": responses("200", json_body(ref("Chat"), "The chat"),
                                               "401", "403", "404", "503")},
                "patch": {"summary": "Join; the owner may add a user by username",
                          "operationId": "joinChat", "security": AUTH,
                          "requestBody": {"required": False, "content": {
                              "application/json": {"schema": ref("Join")},
                              "application/x-www-form-urlencoded": {"schema": ref("Join")}}},
                          "responses": responses("200", json_body(ref("Joined"), "Joined"),
                                                 "400", "401", "403", "404", "413", "503")}},
            "/api/chats/{uri}/messages/": {
                "parameters": [URI],
                "post": {"summary": "Post a message", "operationId": "postMessage",
                         "security": AUTH, "requestBody": request("NewMessage"),
                         "responses": responses("200", json_body(ref("Posted"), "Stored"),
                                                "400", "401", "403", "404", "413", "429",
                                                "503")},
                "get": {"summary": "History, oldest first", "operationId": "listMessages",
                        "security": AUTH,
                        "parameters": [
                            {"name": "after", "in": "query", "schema": SEQ},
                            {"name": "before", "in": "query",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}},
                            {"name": "limit", "in": "query",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 200,
                                        "default": 50}}],
                        "responses": responses("200", json_body(ref("MessagePage"), "A page"),
                                               "400", "401", "403", "404", "503")}},
            "/healthz": {"get": {
                "summary": "MongoDB and broker health", "operationId": "health", "security": [],
                "responses": {"200": json_body(ref("Health"), "All up"),
                              "503": json_body(ref("Health"), "Something is down")}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics of this process", "operationId": "metrics",
                "security": [{"metricsToken": []}, {}],
                "responses": {
                    "200": {"description": "The Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "401": json_body(ref("Detail"), "metrics.token is set and was not sent"),
                    "403": json_body(ref("Detail"), "No metrics.token, and not a loopback client")}}},
            "/api/openapi.json": {"get": {
                "summary": "This document", "operationId": "openapi", "security": [],
                "responses": {"200": json_body({"type": "object", "required": ["openapi", "paths"]},
                                               "OpenAPI 3.1")}}},
        },
    }
