"""HTTP clients made cheaply, for code that makes one per probe, check or delivery.

Most of what a new httpx client costs is loading a CA bundle (60 ms warm, 300+ ms cold on our machines),
paid again by every client. Instances are only ever spoken to in plain HTTP (`http://host:port`), so
their clients load none; a client that may meet TLS (webhooks, configuration sources) shares one
context per process, from the system's trust store.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def instance_client(**options: Any) -> httpx.AsyncClient:
    """A client for ingot's own instances: plain HTTP, straight to them (never through a proxy from the
    environment), no CA bundle loaded."""
    return httpx.AsyncClient(trust_env=False, verify=False, **options)
