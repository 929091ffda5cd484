"""Outgoing mail over SMTP (aiosmtplib): password resets, and notifications.

Settings `smtp: {host, port, security, user, password, from}`; with no host,
nothing is sent (and `enabled` says so)."""

from __future__ import annotations

import logging
from email.message import EmailMessage

import aiosmtplib

log = logging.getLogger("chat.mail")

# A mail server that does not answer within this long fails the send.
SMTP_TIMEOUT = 20.0


class Refused(Exception):
    """The mail server refused the mail for good (a 5xx reply, RFC 5321 §4.2.1):
    sending it again would be refused again."""


def permanent(error: aiosmtplib.SMTPException) -> bool:
    """Whether an SMTP failure is a 5xx refusal (every recipient's, when it names them);
    a 4xx reply, a dropped connection or a timeout may pass."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        return all(permanent(refusal) for refusal in error.recipients)
    return isinstance(error, aiosmtplib.SMTPResponseException) and 500 <= error.code < 600


class Mailer:
    def __init__(self, config):
        self.config = config

    @property
    def enabled(self) -> bool:
        return bool(self.config.smtp_host)

    async def send(self, to: str, subject: str, text: str) -> None:
        """Send a plain-text mail; raises Refused when the server refused it for
        good, aiosmtplib's errors when it failed otherwise."""
        await self.deliver(self.message(to, subject, text))

    async def send_notification(self, to: str, subject: str, text: str, html: str,
                                unsubscribe: str) -> None:
        """A notification: text and HTML parts, and one-click unsubscribe (RFC 8058)."""
        message = self.message(to, subject, text)
        message.add_alternative(html, subtype="html")
        message["List-Unsubscribe"] = f"<{unsubscribe}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        await self.deliver(message)

    def message(self, to: str, subject: str, text: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.config.smtp_from or f"chat@{self.config.smtp_host}"
        message["To"] = to
        message["Subject"] = subject
        message.set_content(text)
        return message

    async def deliver(self, message: EmailMessage) -> None:
        config = self.config
        security = config.smtp_security
        try:
            await aiosmtplib.send(
                message, hostname=config.smtp_host, port=config.smtp_port,
                username=config.smtp_user or None, password=config.smtp_password or None,
                use_tls=security == "tls",
                # auto: STARTTLS when the server offers it; none: never.
                start_tls={"starttls": True, "auto": None}.get(security, False),
                timeout=SMTP_TIMEOUT)
        except aiosmtplib.SMTPException as error:
            if permanent(error):
                raise Refused(str(error)) from error
            raise
