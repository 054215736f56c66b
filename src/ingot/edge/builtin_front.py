"""The built-in front (see edge/front.py for the contract): the shared HTTP and HTTPS listeners in the
edge's event loop, on the built-in router's client and exchange machinery.

Each listener is a `BuiltinRouter` with no releases of its own whose `dispatch` finds the route's
router by Host and path and hands the exchange over (`ex.router`): connection-level limits (head
timeout, body rate, connection cap) are the listener's, everything after the choice (balancing,
retries, drains, counters) the target router's, exactly as on its dedicated listener.

TLS is Python's `ssl`: one SSLContext per certificate, chosen in the SNI callback (exact name, then
the longest wildcard). The listener's own context has no certificate, so a name without one (or no
SNI at all) fails the handshake. A replaced certificate is a new context: handshakes from then on
use it, open connections keep theirs. HTTP/1.1 only (ALPN `http/1.1`): HTTP/2 is HAProxy's.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import tempfile
import weakref
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

from ingot.edge.front import Binding
from ingot.edge.routing import Table, binding_table, host_candidates, normal_host, request_path
from ingot.errors import OperationFailed, UserInputError
from ingot.routers.base import Address, ClientPolicy, Router
from ingot.routers.builtin import BuiltinRouter

if TYPE_CHECKING:
    from ingot.routers.builtin.exchange import Exchange

log = logging.getLogger("ingot.edge.front")
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
_CHALLENGE = CHALLENGE_PREFIX.encode()
_NOT_FOUND = b"404 Not Found: no site here has this host and path\n"


class _Listener(BuiltinRouter):
    """One shared listener: a router whose dispatch is the front's routing."""

    def __init__(self, front: BuiltinFront, listen: Address, *, tls: ssl.SSLContext | None,
                 sock: socket.socket | None, clients: ClientPolicy) -> None:
        super().__init__(listen, name="edge-https" if tls else "edge-http", sock=sock, tls=tls, clients=clients)
        self.front = front

    def dispatch(self, ex: Exchange) -> None:
        front = self.front
        if not self.secure and front.challenges and ex.url.startswith(_CHALLENGE):
            answer = front.challenges.get(request_path(ex.url.decode("latin-1"))[len(CHALLENGE_PREFIX):])
            if answer is not None:
                ex.respond(200, answer.encode("ascii", "replace"), None)
                return
        binding = front.table.lookup_request(ex.host, ex.url)
        router = front.routers.get(binding.router_id) if binding is not None else None
        if binding is None or router is None:
            ex.respond(404, _NOT_FOUND, None)
            return
        route = binding.route
        if not self.secure and route.tls != "off" and route.redirect:
            location = (b"https://" + normal_host(ex.host.decode("latin-1")).encode("ascii", "replace")
                        + front.https_port + ex.url)
            ex.respond(308, b"", None, extra=b"Location: " + location + b"\r\n")
            return
        if self.secure and route.hsts is not None:
            ex.extra = b"Strict-Transport-Security: max-age=%d\r\n" % route.hsts
        ex.router = router
        router.dispatch(ex)


class BuiltinFront:
    """`Front` on asyncio; `socks`: listening sockets held across edge restarts ("http", "https")."""

    def __init__(self, http: Address | None, https: Address | None, *,
                 socks: dict[str, socket.socket] | None = None, clients: ClientPolicy | None = None) -> None:
        self.challenges: MutableMapping[str, str] = {}
        self.table: Table[Binding] = Table()
        # Weak: a router the edge released (and dropped) leaves the front with it.
        self.routers: weakref.WeakValueDictionary[str, BuiltinRouter] = weakref.WeakValueDictionary()
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.https_port = b""  # what redirects add to the host: ":8443" when HTTPS is not on 443
        socks = socks or {}
        clients = clients or ClientPolicy()  # the machine's settings: the same for every route
        self._http = _Listener(self, http, tls=None, sock=socks.get("http"), clients=clients) \
            if http is not None else None
        self._https = _Listener(self, https, tls=self._sni_context(), sock=socks.get("https"), clients=clients) \
            if https is not None else None

    # ---- Front ---------------------------------------------------------------------------------
    @property
    def http_address(self) -> Address | None:
        return self._http.listen_address if self._http is not None else None

    @property
    def https_address(self) -> Address | None:
        return self._https.listen_address if self._https is not None else None

    def listening_fds(self) -> dict[str, int]:
        """The listeners' fds by name, for the edge's supervisor to hold."""
        found = {}
        for name, listener in (("http", self._http), ("https", self._https)):
            fd = listener.listening_fd if listener is not None else None
            if fd is not None:
                found[name] = fd
        return found

    async def start(self) -> None:
        started: list[_Listener] = []
        try:
            for listener, variable in ((self._http, "INGOT_EDGE_HTTP"), (self._https, "INGOT_EDGE_HTTPS")):
                if listener is None:
                    continue
                try:
                    await listener.start()
                except OperationFailed as exc:
                    raise OperationFailed(f"the edge's shared listener cannot start: {exc.message}",
                                          details=[f"set {variable} to a free address (or `off`)"]) from None
                started.append(listener)
        except BaseException:
            for listener in started:
                await listener.stop()
            raise
        port = self.https_address[1] if self.https_address is not None else 443
        self.https_port = b"" if port == 443 else b":%d" % port

    async def stop(self) -> None:
        for listener in (self._http, self._https):
            if listener is not None:
                await listener.stop()

    def router(self, router_id: str, name: str, clients: ClientPolicy, listen: Address | None = None) -> Router:
        router = BuiltinRouter(listen, name=name, clients=clients)
        self.routers[router_id] = router
        return router

    def adopt(self, router_id: str, router: Router) -> bool:
        """Serve the routes of a router made elsewhere (a dedicated one that gains routes); False if it is not
        a built-in router (the edge then makes it again here)."""
        if not isinstance(router, BuiltinRouter):
            return False
        self.routers[router_id] = router
        return True

    async def set_table(self, bindings: list[Binding]) -> None:
        self.table = binding_table(bindings)

    async def set_certificate(self, host: str, cert_pem: bytes, key_pem: bytes) -> None:
        self._contexts[host.lower()] = _context_of(host, cert_pem, key_pem)

    async def remove_certificate(self, host: str) -> None:
        self._contexts.pop(host.lower(), None)

    # ---- TLS -----------------------------------------------------------------------------------
    def _sni_context(self) -> ssl.SSLContext:
        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        base.set_alpn_protocols(["http/1.1"])
        base.sni_callback = self._select
        return base

    def _select(self, conn: ssl.SSLObject | ssl.SSLSocket, name: str | None, _base: ssl.SSLContext) -> int | None:
        if name:
            for candidate in host_candidates(name.lower().rstrip(".")):
                context = self._contexts.get(candidate)
                if context is not None:
                    conn.context = context
                    return None
        # No certificate for that name: fail rather than show another site's.
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME


def check_certificate(host: str, cert_pem: bytes, key_pem: bytes) -> None:
    """UserInputError unless the certificate and key load together (what any front will need)."""
    _context_of(host, cert_pem, key_pem)


def _context_of(host: str, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server context with this certificate and key (ssl loads them from files only: a private
    temporary file, gone once read)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_alpn_protocols(["http/1.1"])
    fd, name = tempfile.mkstemp(prefix="ingot-cert-")  # 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(cert_pem.rstrip() + b"\n" + key_pem)
        context.load_cert_chain(name)
    except (ssl.SSLError, ValueError) as exc:
        raise UserInputError(f"the certificate or key for {host} cannot be used: {exc}",
                             details=["expected a PEM certificate (chain) and its PEM private key"]) from None
    finally:
        os.unlink(name)
    return context
