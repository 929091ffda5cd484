"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives, for mail tests."""

from __future__ import annotations

import contextlib
import email
import email.policy
import threading
from collections.abc import Iterator

from aiosmtpd.controller import Controller

from tests.helpers import free_port


class Inbox:
    """aiosmtpd's handler: the mails it received, in order."""

    def __init__(self):
        self.mails: list[email.message.Message] = []
        self.changed = threading.Condition()

    async def handle_DATA(self, server, session, envelope):
        with self.changed:
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
