"""Schemathesis fuzzes every operation of /api/openapi.json against a live server.

Each operation runs three ways: anonymous, with a valid token (random room
uris, so mostly 404s), and as a member of a real room (its uri substituted),
so the handlers behind authentication see hostile input too. Every answer
must be no 5xx and match the documented status, content type and schema.
"""

from __future__ import annotations

import os
import re

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import server as chat_server
from chat import config as chat_config
from handlers import openapi
from tests.helpers import Api, ServerProcess

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]
# Per operation and way; CHAT_TEST_FUZZ_EXAMPLES=500 fuzzes harder.
MAX_EXAMPLES = int(os.environ.get("CHAT_TEST_FUZZ_EXAMPLES", "20"))
URI = re.compile(r"[0-9a-f]{15}")


@pytest.fixture(scope="module")
def member(server) -> tuple[Api, str]:
    """A user with a room that has a few messages."""
    alice = Api(server.url).signup()
    uri = alice.new_chat()
    for n in range(3):
        alice.post(uri, f"hello {n}")
    return alice, uri


# The document the server serves (test_the_live_document_is_the_one_fuzzed checks
# that), generated for the test server's configuration. Loaded at import because
# schemathesis's lazy from_fixture loader does not work with pytest 9; the calls
# go to the live server all the same.
DOCUMENT = openapi.document(chat_server.routes(),
                            chat_config.load(env=ServerProcess("", "").env()))
schema = schemathesis.openapi.from_dict(DOCUMENT)
fuzz = settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def call(case, server, member, mode: str) -> None:
    alice, uri = member
    headers = {}
    if mode != "anonymous":
        # Logging out revokes the token it is sent with: give it one of its own.
        logout = case.operation.path == "/auth/logout/"
        token = Api(server.url, alice.username).login().token if logout else alice.token
        headers["Authorization"] = f"JWT {token}"
        # A well-formed generated uri becomes the real room's; a malformed one
        # stays, as the invalid input it was generated to be.
        generated = (case.path_parameters or {}).get("uri")
        if mode == "member" and isinstance(generated, str) and URI.fullmatch(generated):
            case.path_parameters = {**case.path_parameters, "uri": uri}
    checks = CHECKS
    if case.media_type == "application/x-www-form-urlencoded":
        # A form has no types: true arrives as "true", 5 as "5", so "invalid" data is
        # often valid as sent (a generated array, a repeated field, is a 400).
        checks = [check for check in CHECKS if check is not negative_data_rejection]
    case.call_and_validate(base_url=server.url, headers=headers, checks=checks)


def test_the_live_document_is_the_one_fuzzed(server):
    assert httpx.get(f"{server.url}/api/openapi.json").json() == DOCUMENT


@pytest.mark.slow
@schema.parametrize()
@fuzz
def test_anonymous(case, server, member):
    call(case, server, member, "anonymous")


@pytest.mark.slow
@schema.parametrize()
@fuzz
def test_with_a_token(case, server, member):
    call(case, server, member, "token")


@pytest.mark.slow
@schema.parametrize()
@fuzz
def test_as_a_member_of_a_real_room(case, server, member):
    call(case, server, member, "member")


@pytest.mark.parametrize("query", [{"before": 4825640190922669118455808}, {"after": 2**63},
                                   {"after": "9" * 5000}])
def test_cursors_beyond_mongodbs_integers_are_400_not_500(server, member, query):
    # Found by the fuzzer: MongoDB cannot compare an integer over 8 bytes.
    alice, uri = member
    reply = alice.request("GET", f"/api/chats/{uri}/messages/", params=query)
    assert reply.status_code == 400, reply.text
    assert list(reply.json()) == list(query)
