"""HTTP/2 over TLS on the HAProxy edge: a client that offers h2 by ALPN gets it and is answered by the
route's backend over HTTP/2 (the built-in edge speaks HTTP/1.1 only: it offers no h2)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import h2.config
import h2.connection
import h2.events

from ingot.edge.front import Route
from tests.contract.test_front import Run, serving_front
from tests.support.certs import TestCA


def _h2_get(address: tuple[str, int], host: str, tls: ssl.SSLContext, path: str = "/") -> tuple[str, int, bytes]:
    """One GET over HTTP/2: (the ALPN protocol chosen, the status, the body)."""
    tls.set_alpn_protocols(["h2", "http/1.1"])
    with tls.wrap_socket(socket.create_connection(address, timeout=5), server_hostname=host) as sock:
        chosen = sock.selected_alpn_protocol() or ""
        if chosen != "h2":
            return chosen, 0, b""
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                   (":authority", host)], end_stream=True)
        sock.sendall(conn.data_to_send())
        status, body = 0, b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded):
                    return chosen, status, body
            sock.sendall(conn.data_to_send())
        return chosen, status, body


def test_the_haproxy_edge_answers_http2_by_alpn(run: Run, tmp_path: Path) -> None:
    ca = TestCA()

    async def body() -> None:
        async with serving_front("haproxy", tmp_path, {"site-a": [Route("a.example.com")]}) as (front, _):
            https = front.https_address
            assert https is not None
            await front.set_certificate("a.example.com", *ca.issue("a.example.com"))
            chosen, status, answer = await asyncio.to_thread(_h2_get, https, "a.example.com", ca.client_context())
            assert (chosen, status, answer) == ("h2", 200, b"site-a")

    run(body)
