"""/metrics: the counters follow a scripted conversation, and strangers are refused."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Listener, two_members, wait_for


def scrape(url: str, **headers) -> dict[tuple, float]:
    """Every sample as {(name, (label, value), ...): value}."""
    reply = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    """A sample's value; a missing one is a KeyError, so a renamed metric cannot read as 0."""
    return samples[(name, *sorted(labels.items()))]


def test_counters_follow_a_conversation(start_server):
    server = start_server()
    alice, bob, uri = two_members(server.url)
    posts = 5
    before = scrape(server.url)
    assert value(before, "chat_open_sockets") == 0
    assert value(before, "chat_messages_posted_total") == 0

    async def scenario():
        listeners = [Listener(alice, uri).start(), Listener(alice, uri).start(),
                     Listener(bob, uri).start()]
        await wait_for(lambda: all(lst.ready.is_set() for lst in listeners), 10, "sockets ready")
        during = await asyncio.to_thread(scrape, server.url)
        assert value(during, "chat_open_sockets") == 3
        assert value(during, "chat_active_rooms") == 1
        for n in range(posts):
            await asyncio.to_thread((alice if n % 2 else bob).post, uri, f"m{n}")
        await wait_for(lambda: all(len(lst.seqs) == posts for lst in listeners), 10, "deliveries")
        # A late socket catches up from MongoDB.
        late = Listener(bob, uri).start(since=0)
        await wait_for(lambda: late.ready.is_set() and len(late.seqs) == posts, 10, "catch-up")
        after = await asyncio.to_thread(scrape, server.url)
        for listener in [*listeners, late]:
            await listener.stop()
        return after

    after = asyncio.run(scenario())
    assert value(after, "chat_messages_posted_total") == posts
    assert value(after, "chat_messages_published_total") == posts + 1  # and bob's join
    # posted = delivered per socket: every live socket got every message once
    assert value(after, "chat_messages_delivered_total") == posts * 3
    # the late socket's catch-up, and every socket's catch-up of bob's join
    assert value(after, "chat_messages_backfilled_total") == posts + 4
    assert value(after, "chat_delivery_seconds_count") == posts
    assert value(after, "chat_open_sockets") == 4
    assert value(after, "chat_gaps_detected_total") == 0
    assert value(after, "chat_slow_consumer_closes_total") == 0
    handler = {"handler": "MessagesHandler", "method": "POST"}
    assert value(after, "chat_http_requests_total", status="200", **handler) == posts
    assert value(after, "chat_http_request_seconds_count", handler="MessagesHandler") >= posts
    assert value(after, "chat_http_requests_total", handler="RegisterHandler", method="POST",
                 status="201") == 2

    httpx.get(f"{server.url}/no/such/page")
    assert value(scrape(server.url), "chat_http_requests_total", handler="NotFoundHandler",
                 method="GET", status="404") == 1

    def closed() -> bool:
        samples = scrape(server.url)
        return value(samples, "chat_open_sockets") == 0 and value(samples, "chat_active_rooms") == 0

    asyncio.run(wait_for(closed, 5, "the gauges to fall back to 0"))


def test_metrics_answer_only_loopback_clients_without_a_token(server, start_server):
    assert httpx.get(f"{server.url}/metrics").status_code == 200
    # Behind a proxy the client's address is X-Real-IP's: a remote one is refused.
    proxied = start_server(behind_proxy=True)
    reply = httpx.get(f"{proxied.url}/metrics", headers={"X-Real-IP": "203.0.113.5"})
    assert reply.status_code == 403
    assert "loopback" in reply.json()["detail"]
    assert "chat_" not in reply.text
    assert httpx.get(f"{proxied.url}/metrics", headers={"X-Real-IP": "127.0.0.1"}).status_code == 200


def test_with_a_token_metrics_need_it_even_from_loopback(start_server):
    token = "metrics-token-0123456789"
    server = start_server(metrics_token=token)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"},
                    {"Authorization": f"Bearer {token}x"}):
        reply = httpx.get(f"{server.url}/metrics", headers=headers)
        assert reply.status_code == 401, headers
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert "chat_" not in reply.text
    samples = scrape(server.url, Authorization=f"Bearer {token}")
    assert ("chat_open_sockets",) in samples
