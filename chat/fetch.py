"""The one way the server fetches a URL of the outside world (link previews):
a guard against server-side request forgery.

- Every address a host resolves to is checked before connecting: loopback,
  private, link-local, multicast, reserved and unspecified ranges are refused,
  IPv4 and IPv6 alike, IPv4-mapped and NAT64-embedded IPv4 included. The
  connection goes to the address that was checked (the resolver handed to
  Tornado's client answers with the checked addresses only), so a DNS answer
  that changes between the check and the connect cannot slip through.
- Redirects are followed by hand, each target checked again, at most
  MAX_REDIRECTS of them.
- At most `max_bytes` are read (the rest is cut off) within `timeout` seconds
  all told; no cookies or credentials are ever sent.
- `allow`: host:port entries that skip the address check (tests use a
  loopback server this way).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass

import tornado.httpclient
import tornado.netutil

MAX_REDIRECTS = 3
MAX_BYTES = 1024 * 1024
USER_AGENT = "chat-server link preview (+https://github.com/)"
# NAT64's well-known prefix embeds an IPv4 address (RFC 6052).
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(Exception):
    """The guard would not fetch this URL; the message says why."""


@dataclass
class Fetched:
    url: str  # after redirects
    status: int
    content_type: str
    body: bytes
    truncated: bool


def public_address(address: str) -> bool:
    """Whether connecting to address reaches the public internet only."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not public_address(str(embedded)):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_loopback
                                 or ip.is_link_local or ip.is_private or ip.is_unspecified)


class CheckedResolver(tornado.netutil.Resolver):
    """Resolves as the system does, then answers only with addresses the
    guard allows: Tornado connects to exactly what was checked."""

    def initialize(self, allow: frozenset[str]) -> None:
        self.allow = allow
        self.system = tornado.netutil.DefaultLoopResolver()

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC):
        answers = await self.system.resolve(host, port, family)
        if f"{host}:{port}".lower() in self.allow:
            return answers
        refused = [address for _, (address, *_) in answers if not public_address(address)]
        if refused or not answers:
            raise Refused(f"{host} resolves to a non-public address ({', '.join(refused) or 'none'})")
        return answers

    def close(self) -> None:
        self.system.close()


def check_url(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("only http and https URLs with a host are fetched")
    if parts.username or parts.password:
        raise Refused("URLs with credentials are not fetched")
    return parts


class Fetcher:
    def __init__(self, allow: tuple[str, ...] = (), timeout: float = 3.0,
                 max_bytes: int = MAX_BYTES):
        self.allow = frozenset(entry.strip().lower() for entry in allow if entry.strip())
        self.timeout = timeout
        self.max_bytes = max_bytes

    async def fetch(self, url: str, accept: str = "text/html,*/*;q=0.5") -> Fetched:
        """GET url through the guard: Refused, or what came back (any status)."""
        resolver = CheckedResolver(allow=self.allow)
        client = tornado.httpclient.AsyncHTTPClient(force_instance=True, resolver=resolver)
        try:
            return await asyncio.wait_for(self.follow(client, url, accept), self.timeout)
        except TimeoutError:
            raise Refused(f"no answer within {self.timeout:g} s") from None
        finally:
            client.close()
            resolver.close()

    async def follow(self, client, url: str, accept: str) -> Fetched:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url)
            fetched, location = await self.fetch_once(client, url, accept)
            if location is None:
                return fetched
            url = urllib.parse.urljoin(url, location)
        raise Refused(f"more than {MAX_REDIRECTS} redirects")

    async def fetch_once(self, client, url: str, accept: str) -> tuple[Fetched, str | None]:
        """One request: (what came back, the redirect's Location or None)."""
        body = bytearray()
        head: dict[str, str] = {}

        def header(line: str) -> None:
            if line.startswith("HTTP/"):
                head.clear()
                head["status"] = line.split(" ", 2)[1]
            elif ":" in line:
                name, _, value = line.partition(":")
                head[name.strip().lower()] = value.strip()

        cut = []

        def collect(data: bytes) -> None:
            room = self.max_bytes - len(body)
            body.extend(data[:room])
            if len(data) > room:
                cut.append(True)
                raise Cut()  # Tornado closes the connection: the rest is never read

        request = tornado.httpclient.HTTPRequest(
            url, follow_redirects=False, streaming_callback=collect, header_callback=header,
            connect_timeout=self.timeout, request_timeout=self.timeout,
            headers={"User-Agent": USER_AGENT, "Accept": accept}, decompress_response=False)
        try:
            response = await client.fetch(request, raise_error=False)
        except Refused:
            raise
        except Exception as error:
            if cut:
                return Fetched(url, int(head.get("status", 200)), head.get("content-type", ""),
                               bytes(body), True), None
            raise Refused(f"fetch failed: {error}") from None
        if response.code in (301, 302, 303, 307, 308) and "Location" in response.headers:
            return Fetched(url, response.code, "", b"", False), response.headers["Location"]
        return Fetched(url, response.code, response.headers.get("Content-Type", ""),
                       bytes(body), False), None


class Cut(Exception):
    """The body reached max_bytes: the rest is not read."""
