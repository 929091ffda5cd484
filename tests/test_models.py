"""The models are the one declaration of the API: validation and the document."""

from __future__ import annotations

import json

import httpx
import pytest
import tornado.web

import server as chat_server
from chat.config import Config
from handlers import models, openapi
from handlers.base import ApiError, ApiHandler, validated

CONFIG = Config()


def test_every_api_method_is_declared():
    # An undeclared method would be missing from the document and unvalidated.
    for route in chat_server.routes():
        handler = route[1]
        if not issubclass(handler, ApiHandler):
            continue
        for method in openapi.METHODS:
            implemented = getattr(handler, method) is not getattr(tornado.web.RequestHandler, method)
            if implemented:
                assert hasattr(getattr(handler, method), "endpoint"), (handler, method)


def test_configured_limits_flow_into_the_document():
    document = openapi.document(chat_server.routes(), Config(max_message_chars=123))
    schemas = document["components"]["schemas"]
    assert schemas["NewMessage"]["properties"]["message"]["maxLength"] == 123
    assert schemas["SendMessage"]["properties"]["message"]["maxLength"] == 123
    assert "x-configured-" not in json.dumps(document)


def test_the_document_names_each_operation_once():
    document = openapi.document(chat_server.routes(), CONFIG)
    ids = [op["operationId"] for path in document["paths"].values()
           for key, op in path.items() if key != "parameters"]
    assert len(ids) == len(set(ids)) and "postMessage" in ids
    assert document["paths"]["/api/chats/{uri}/messages/"]["parameters"][0]["schema"] == {
        "type": "string", "pattern": "^[0-9a-f]{15}$"}


def refused(model, data, strict=True, config=CONFIG) -> dict:
    with pytest.raises(ApiError) as error:
        validated(model, data, config, strict=strict)
    assert error.value.status == 400
    return error.value.body


def test_errors_name_the_field_in_the_tutorials_words():
    assert refused(models.Login, {}) == {"username": ["This field is required."],
                                         "password": ["This field is required."]}
    assert refused(models.Login, {"username": 5, "password": " "}) == {
        "username": ["Not a valid string."], "password": ["This field may not be blank."]}
    assert refused(models.Register, {"username": "a b", "password": "p"}) == {"username": [
        "Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ "
        "characters."]}
    assert refused(models.NewMessage, {"message": "x" * 11}, config=Config(max_message_chars=10)) \
        == {"message": ["Ensure this field has no more than 10 characters."]}


def test_json_keeps_its_types_and_forms_are_strings():
    assert refused(models.MessagesQuery, {"limit": "5"}, strict=True)  # JSON: not an integer
    assert validated(models.MessagesQuery, {"limit": "5"}, CONFIG, strict=False).limit == 5


@pytest.mark.parametrize("given", ["+1", "\uff11", " 1", "1 ", "-1", "1.0", "0x1", "1_0"])
def test_query_integers_are_ascii_digits_only(given):
    assert refused(models.MessagesQuery, {"after": given}, strict=False) == {
        "after": ["A valid integer is required."]}


@pytest.mark.parametrize("model, data, field", [
    (models.Login, {"username": "\ud800", "password": "p"}, "username"),
    (models.Login, {"username": "u", "password": "a\udfffb"}, "password"),
    (models.Register, {"username": "u", "password": "p", "email": "\ud800@x.io"}, "email"),
    (models.NewMessage, {"message": "hi \ud83d"}, "message"),
    (models.NewMessage, {"message": "hi", "client_id": "\ud800"}, "client_id"),
    (models.Join, {"username": "\ud800"}, "username"),
    (models.TokenBody, {"token": "\ud800"}, "token"),
    (models.NewMessage, {"message": "null\x00byte"}, "message"),
    (models.Login, {"username": "u\x00", "password": "p"}, "username"),
    (models.SearchQuery, {"q": "null\x00byte"}, "q"),
])
def test_lone_surrogates_and_nuls_are_refused_naming_the_field(model, data, field):
    assert list(refused(model, data)) == [field]


def test_an_empty_client_id_means_none():
    assert validated(models.NewMessage, {"message": "hi", "client_id": ""}, CONFIG,
                     strict=True).client_id is None


def test_a_server_serves_the_document_of_its_own_configuration(start_server):
    process = start_server(max_message_chars=10)
    document = httpx.get(f"{process.url}/api/openapi.json").json()
    assert document["components"]["schemas"]["NewMessage"]["properties"]["message"][
        "maxLength"] == 10
