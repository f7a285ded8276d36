"""Which requests the server answers: the name it is reached by, the page a change comes from, the token.

What was chosen, after reading how Jupyter Server and Ollama guard a server on the user's machine:

- Host. Like Jupyter's `check_host` (with `allow_remote_access` off) and Ollama's allowed-hosts
  middleware, a request must name this server: `localhost` (or a `*.localhost` name), a loopback
  address, the address the connection arrived at, the name `--host` binds, or a name listed in
  `QA_ALLOWED_HOSTS` (`*` turns the check off, for a proxy that checks Host itself). Anything else gets
  403: a DNS-rebinding page (evil.example resolved to 127.0.0.1) makes the browser send
  `Host: evil.example`, which no list here holds. Unlike Ollama, binding a public address does not turn
  the check off, and private addresses in general are not trusted, only the one the request came in on;
  like both, the port is not compared, since the name is what a rebinding page cannot choose.
- Origin. Like Jupyter's `check_origin`, a request other than GET, HEAD or OPTIONS that carries an
  `Origin` must come from this server's own origin (the Origin's host and port are the Host header);
  one without an Origin but with `Sec-Fetch-Site` must say `same-origin` or `none`; one with neither
  (curl, a script, a program) passes. There is no list of extra origins like `OLLAMA_ORIGINS`: the chat
  page is served from here, and programs send no Origin.
- Token. `QA_API_TOKEN` guards adding and deleting articles. `QA_API_TOKEN_READS=1` makes it guard
  everything that serves article text or answers too (all but the page, its static files and /health);
  the chat page sends the token only with changes, so that setting is for a server used through the API.
  A token is compared as UTF-8 bytes with the header's raw bytes, in constant time.
- Slow clients. uvicorn times out idle keep-alive connections but not a client that never finishes its
  request headers; `header_timeout_protocol` closes such a connection after a few seconds.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from .config import Settings

log = logging.getLogger("qa.security")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Paths that hold no article text: open even when the token guards reads.
OPEN_PATHS = ("/", "/health", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)
# Seconds a client may take to send a request's line and headers.
HEADER_SECONDS = 10.0
_ANY_ADDRESS = {"0.0.0.0", "::", ""}
_DEFAULT_PORTS = {"http": "80", "https": "443"}

Refuse = Callable[[int, str, str], Any]  # (status, code, message) -> an ASGI response in the one error shape


def host_name(host: str) -> str:
    """The name in a Host header value, without port, brackets or a final dot, in lower case."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 address: [::1]:8000
        return host[1:].partition("]")[0]
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")


def configured_hosts(settings: Settings) -> frozenset[str] | None:
    """Names from QA_ALLOWED_HOSTS and the one --host binds; None when the list holds `*` (any name)."""
    names = {host_name(part) for part in (settings.allowed_hosts or "").split(",") if part.strip()}
    if "*" in names:
        return None
    if settings.host not in _ANY_ADDRESS:
        names.add(host_name(settings.host))
    return frozenset(names)


def _is_local(name: str, arrived_at: str | None, names: frozenset[str]) -> bool:
    """Whether a Host name is this server's; `arrived_at` is the address the connection came in on
    (ASGI's scope["server"]: uvicorn takes it from the socket, never from a header)."""
    if name in names or name == "localhost" or name.endswith(".localhost"):
        return True
    if arrived_at is not None and name == arrived_at.lower():
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if address.is_loopback:
        return True
    try:
        return arrived_at is not None and address == ipaddress.ip_address(arrived_at)
    except ValueError:
        return False


def _origin_netloc(origin: str) -> str | None:
    """`host:port` of an Origin header value ("null" and junk give None), default ports left out."""
    try:
        parts = urlsplit(origin.strip().lower())
        netloc = parts.netloc
        if not parts.scheme or not netloc:
            return None
        if parts.port is not None and str(parts.port) == _DEFAULT_PORTS.get(parts.scheme):
            netloc = netloc.rpartition(":")[0]
        return netloc
    except ValueError:
        return None


def _host_netloc(host: str, scheme: str) -> str:
    host = host.strip().lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default and host.endswith(":" + default):
        return host[: -len(default) - 1]
    return host


def presented_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The token a request carries, as the bytes sent: `Authorization: Bearer ...`, else `X-API-Token`."""
    bearer = api_token = b""
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            bearer = value[7:]
        elif name == b"x-api-token":
            api_token = value
    return bearer or api_token


def token_matches(given: bytes, token: str) -> bool:
    """Whether the bytes sent are the token's UTF-8 bytes, compared in constant time."""
    return hmac.compare_digest(given, token.encode("utf-8"))


class RequestGuard:
    """Plain ASGI middleware: refuses foreign Host names, cross-site changes and, if so set, untokened reads."""

    def __init__(self, app: Any, settings: Settings, refuse: Refuse) -> None:
        self.app = app
        self.names = configured_hosts(settings)
        self.read_token = settings.api_token if settings.api_token and settings.api_token_reads else None
        self.refuse = refuse

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is not None:
            await self.refuse(*refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check(self, scope: Any) -> tuple[int, str, str] | None:
        """(status, code, message) for a request to refuse, None for one to answer."""
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        host = headers.get(b"host", b"").decode("latin-1")
        server = scope.get("server")
        if host and self.names is not None and not _is_local(host_name(host), server[0] if server else None, self.names):
            log.warning("refused a request for Host %.100r: not a name this server answers to", host)
            return (403, "forbidden_host", f"this server does not answer to the name {host_name(host)[:100]!r}; "
                    "use localhost, or add the name to QA_ALLOWED_HOSTS")
        if scope.get("method", "GET") not in SAFE_METHODS:
            origin = headers.get(b"origin")
            if origin is not None:
                if _origin_netloc(origin.decode("latin-1")) != _host_netloc(host, scope.get("scheme", "http")):
                    log.warning("refused a cross-origin %s %s from %.100r", scope.get("method"), scope["path"], origin)
                    return (403, "cross_origin", "changes are accepted only from this server's own page, or from "
                            "programs that send no Origin header")
            elif headers.get(b"sec-fetch-site", b"same-origin") not in (b"same-origin", b"none"):
                return (403, "cross_origin", "changes are accepted only from this server's own page")
        path = scope.get("path", "")
        if self.read_token is not None and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            if not token_matches(presented_token(scope["headers"]), self.read_token):
                return (401, "unauthorized", "this server needs the API token for reads too (Authorization: Bearer ...)")
        return None


def exposure_notice(settings: Settings) -> list[str]:
    """What `qa serve` tells its user when it listens beyond this machine; nothing for a loopback address."""
    try:
        loopback = ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = settings.host == "localhost"
    if loopback:
        return []
    where = "every network interface" if settings.host in _ANY_ADDRESS else settings.host
    reads = ("only with the API token" if settings.api_token and settings.api_token_reads
             else "with no token (set QA_API_TOKEN and QA_API_TOKEN_READS=1 to require one)")
    writes = ("need the API token" if settings.api_token
              else "are open to them too: set QA_API_TOKEN to require a token")
    names = configured_hosts(settings)
    allowed = "any name (QA_ALLOWED_HOSTS=*)" if names is None else ", ".join(
        ["localhost", "loopback addresses", "the address a request arrives at", *sorted(names)])
    return [
        f"listening on {where}, port {settings.port}: anyone who can reach it can ask questions and read every "
        f"article {reads}; adding and deleting articles {writes}.",
        f"browsers may reach it by: {allowed}; add a machine name with QA_ALLOWED_HOSTS. The connection is plain "
        "HTTP: put a TLS proxy in front beyond a trusted network.",
    ]


def header_timeout_protocol(seconds: float = HEADER_SECONDS) -> type:
    """uvicorn's httptools protocol, closing a connection whose request headers take over `seconds`."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # lazily: only `qa serve` needs it

    class HeaderTimeoutProtocol(HttpToolsProtocol):  # type: ignore[misc]
        _header_timer: Any = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                log.info("closed a connection that sent no complete request headers in %g s", seconds)
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()  # a connection that sends nothing at all is closed too

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # the next request on a kept-alive connection

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol

