"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives, for
mail tests, and fails as mail servers fail when told to: a 4xx or 5xx reply,
or a connection dropped in the middle of the DATA command."""

from __future__ import annotations

import contextlib
import email
import email.policy
import threading
from collections import Counter
from collections.abc import Iterator

from aiosmtpd.controller import Controller

from tests.helpers import free_port

# An answer in Inbox.failures: close the connection instead of replying.
DROP = "drop"


class Inbox:
    """aiosmtpd's handler: the mails it received, in order.

    `failures[address]` lists the answers to give, one per DATA command, to
    the next mails to that address (a reply such as "451 4.3.0 Try again
    later", or DROP) before one is taken; `refused[address]` is the reply to
    every RCPT TO of that address ("550 5.1.1 No such user"). `data` and
    `rcpt` count the commands each address got."""

    def __init__(self):
        self.mails: list[email.message.Message] = []
        self.changed = threading.Condition()
        self.failures: dict[str, list[str]] = {}
        self.refused: dict[str, str] = {}
        self.data: Counter[str] = Counter()
        self.rcpt: Counter[str] = Counter()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpt[address] += 1
        if address in self.refused:
            return self.refused[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.changed:
            for address in envelope.rcpt_tos:
                self.data[address] += 1
            failing = next((self.failures[a] for a in envelope.rcpt_tos if self.failures.get(a)), None)
            if failing:
                answer = failing.pop(0)
                if answer == DROP:
                    server.transport.close()
                return answer
            self.mails.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            self.changed.notify_all()
        return "250 OK"

    def to(self, address: str) -> list[email.message.Message]:
        return [m for m in self.mails if m["To"] == address]

    def wait_for(self, address: str, count: int = 1, seconds: float = 15) -> list[email.message.Message]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.to(address)) >= count, seconds), \
                f"no mail to {address} within {seconds} s"
            return self.to(address)


@contextlib.contextmanager
def smtp_inbox() -> Iterator[tuple[Inbox, int]]:
    """(the inbox, its port) while the SMTP server runs."""
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()
