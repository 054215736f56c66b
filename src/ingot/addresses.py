"""Listen addresses, `HOST:PORT`, parsed once for every place that takes one (a spec's `router.listen`,
`ingot serve --listen`, the edge's `http` and `https` settings).

A host is a name (`localhost`, `app.internal`), an IPv4 address, an IPv6 address in brackets (`[::1]`),
or `*` for every address; `allow_any` also accepts an empty host (`:443`, every address). A URL
(`https://...`), a path, or a third `:` part is refused with what to write instead.
"""

from __future__ import annotations

import ipaddress
import re

# An RFC 1123 host name, labels of letters, digits and inner hyphens (underscores are tolerated: some
# resolvers serve them); dotted digits are checked as IPv4 below.
_HOST_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
                        r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")
_DOTTED_DIGITS = re.compile(r"^[0-9.]+$")


def split_address(value: str, *, allow_any: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; ``:PORT`` with `allow_any`) into host and port.

    ValueError says what is wrong and what is expected; its message names `value`."""
    example = ("HOST:PORT or :PORT (every address), such as 127.0.0.1:8080 or :8080" if allow_any
               else "HOST:PORT such as 127.0.0.1:8080")
    if "://" in value:
        raise ValueError(f"expected {example}, not a URL: got {value!r} (the address to bind, without a scheme "
                         "or path; TLS is the edge's job, see `routes`)")
    host, sep, port_text = value.rpartition(":")
    if not sep or (not host and not allow_any):
        raise ValueError(f"expected {example}, got {value!r}")
    if not port_text.isdigit():
        raise ValueError(f"expected {example}: the port must be a number, got {port_text!r} in {value!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port} in {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv6 address in brackets such as [::1]:{port}, got {value!r}") from None
    elif ":" in host:
        raise ValueError(f"expected {example}, got {value!r}: one ':' before the port (an IPv6 address goes in "
                         f"brackets, such as [::1]:{port})")
    elif host and host != "*" and not _valid_host(host):
        raise ValueError(f"expected {example}: {host!r} is not a host name or IP address, in {value!r}")
    return host, port


def _valid_host(host: str) -> bool:
    if _DOTTED_DIGITS.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return bool(_HOST_NAME.fullmatch(host))
