"""The machine's edge settings: `<INGOT_EDGE_HOME>/settings.json`, each key overridden by its variable.

    {"kind": "builtin", "http": ":80", "https": ":443",
     "acme_directory": "https://acme-v02.api.letsencrypt.org/directory",
     "acme_email": "ops@example.com", "acme_ca_bundle": "/etc/ssl/pebble.pem",
     "head_timeout": "10s", "min_body_rate": 1024, "max_connections": 16384,
     "trusted_proxies": ["10.0.0.0/8"]}

| key              | variable               | default                   |
|------------------|------------------------|---------------------------|
| kind             | INGOT_EDGE_KIND        | builtin (or haproxy)      |
| http             | INGOT_EDGE_HTTP        | :80 (`off` or empty: none)|
| https            | INGOT_EDGE_HTTPS       | :443 (`off` or empty: none)|
| acme_directory   | INGOT_ACME_DIRECTORY   | Let's Encrypt production  |
| acme_email       | INGOT_ACME_EMAIL       | none                      |
| acme_ca_bundle   | INGOT_ACME_CA_BUNDLE   | none (the system's CAs)   |
| head_timeout     | INGOT_EDGE_HEAD_TIMEOUT | 10s                      |
| min_body_rate    | INGOT_EDGE_MIN_BODY_RATE | 1024 (bytes/s; 0: none) |
| max_connections  | INGOT_EDGE_MAX_CONNECTIONS | 16384               |
| trusted_proxies  | INGOT_EDGE_TRUSTED_PROXIES | none (CIDRs, comma-separated in the variable) |

The home itself is `INGOT_EDGE_HOME` (edge/home.py). The file is optional; a variable set (even to
the empty string, which turns a listener off) wins over it. ":PORT" listens on every address.

The last four are the shared listeners' client limits (see routers.base.ClientPolicy): they apply before
a request's host is known, so they are the machine's, the same for every route. `trusted_proxies` names
what stands in front of the edge (a cloud load balancer), whose `X-Forwarded-For` is kept.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingot.addresses import split_address
from ingot.edge.front import FRONT_KINDS
from ingot.errors import UserInputError
from ingot.routers.base import Address, ClientPolicy
from ingot.spec.durations import parse_duration

SETTINGS_FILE = "settings.json"
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
# key in the file → its variable, and its default
VARIABLES = {
    "kind": ("INGOT_EDGE_KIND", "builtin"),
    "http": ("INGOT_EDGE_HTTP", ":80"),
    "https": ("INGOT_EDGE_HTTPS", ":443"),
    "acme_directory": ("INGOT_ACME_DIRECTORY", LETS_ENCRYPT),
    "acme_email": ("INGOT_ACME_EMAIL", ""),
    "acme_ca_bundle": ("INGOT_ACME_CA_BUNDLE", ""),
    "head_timeout": ("INGOT_EDGE_HEAD_TIMEOUT", "10s"),
    "min_body_rate": ("INGOT_EDGE_MIN_BODY_RATE", "1024"),
    "max_connections": ("INGOT_EDGE_MAX_CONNECTIONS", "16384"),
    "trusted_proxies": ("INGOT_EDGE_TRUSTED_PROXIES", ""),
}
_NUMBERS = ("head_timeout", "min_body_rate", "max_connections")  # may be JSON numbers in the file
_OFF = ("", "off")


@dataclass(frozen=True)
class EdgeSettings:
    kind: str = "builtin"
    http: Address | None = ("", 80)  # None: no shared HTTP listener; host "" is every address
    https: Address | None = ("", 443)
    acme_directory: str = LETS_ENCRYPT
    acme_email: str | None = None
    acme_ca_bundle: Path | None = None
    clients: ClientPolicy = field(default_factory=ClientPolicy)  # the shared listeners'

    @classmethod
    def load(cls, home: Path, environ: Mapping[str, str] | None = None) -> EdgeSettings:
        """The settings of the edge in `home`; UserInputError naming the variable or file key at fault."""
        env = os.environ if environ is None else environ
        path = home / SETTINGS_FILE
        raw: dict[str, Any] = {}
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            raise UserInputError(f"cannot read the edge's settings {path}: {exc.strerror or exc}") from None
        if text.strip():
            try:
                loaded = json.loads(text)
            except ValueError as exc:
                raise UserInputError(f"{path}: not valid JSON ({exc})") from None
            if not isinstance(loaded, dict):
                raise UserInputError(f"{path}: expected a JSON object of settings")
            unknown = sorted(set(loaded) - set(VARIABLES))
            if unknown:
                raise UserInputError(f"{path}: unknown key {unknown[0]!r}",
                                     details=[f"known keys: {', '.join(VARIABLES)}"])
            raw = loaded
        values: dict[str, tuple[str, str]] = {}  # key → (value, where it came from)
        for key, (variable, default) in VARIABLES.items():
            if variable in env:
                values[key] = (env[variable], variable)
            elif key in raw:
                value = raw[key]
                if key == "trusted_proxies" and isinstance(value, list) and all(isinstance(v, str) for v in value):
                    value = ",".join(value)
                elif key in _NUMBERS and isinstance(value, int | float) and not isinstance(value, bool):
                    value = str(value)
                if not isinstance(value, str):
                    expected = "a list of CIDR strings" if key == "trusted_proxies" else \
                        "a number or a string" if key in _NUMBERS else "a string"
                    raise UserInputError(f"{path}: key {key!r} must be {expected}, got {value!r}")
                values[key] = (value, f"{path}: key {key!r}")
            else:
                values[key] = (default, variable)
        kind, where = values["kind"]
        if kind not in FRONT_KINDS:
            raise UserInputError(f"{where}: unknown edge kind {kind!r}; expected one of {', '.join(FRONT_KINDS)}")
        directory, where = values["acme_directory"]
        if not directory.startswith(("https://", "http://")):
            raise UserInputError(f"{where}: expected the URL of an ACME directory (https://...), got {directory!r}")
        bundle, where = values["acme_ca_bundle"]
        if bundle and not Path(bundle).is_file():
            raise UserInputError(f"{where}: no such file {bundle!r} (a PEM bundle of CA certificates)")
        return cls(kind=kind, http=parse_listener(*values["http"]), https=parse_listener(*values["https"]),
                   acme_directory=directory, acme_email=values["acme_email"][0] or None,
                   acme_ca_bundle=Path(bundle) if bundle else None, clients=parse_clients(values))


def parse_clients(values: Mapping[str, tuple[str, str]]) -> ClientPolicy:
    """The shared listeners' ClientPolicy from the settings' (value, where) pairs; UserInputError naming where."""
    text, where = values["head_timeout"]
    try:
        head_timeout = parse_duration(text.strip())
    except ValueError as exc:
        raise UserInputError(f"{where}: {exc}") from None
    if head_timeout <= 0:
        raise UserInputError(f"{where}: must be more than 0 seconds, got {text!r}")
    numbers = {}
    for key, least in (("min_body_rate", 0), ("max_connections", 1)):
        text, where = values[key]
        if not re.fullmatch(r"[0-9]+", text.strip()) or int(text) < least:
            raise UserInputError(f"{where}: expected a whole number of at least {least}, got {text!r}")
        numbers[key] = int(text)
    text, where = values["trusted_proxies"]
    proxies = tuple(part.strip() for part in text.split(",") if part.strip())
    for cidr in proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise UserInputError(f"{where}: {cidr!r} is not an IP network (expected CIDRs like 10.0.0.0/8)") from None
    return ClientPolicy(head_timeout=head_timeout, min_body_rate=numbers["min_body_rate"],
                        max_connections=numbers["max_connections"], trusted_proxies=proxies)


def parse_listener(value: str, where: str) -> Address | None:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (every address); `off` or empty: None."""
    value = value.strip()
    if value.lower() in _OFF:
        return None
    try:
        return split_address(value, allow_any=True)
    except ValueError as exc:
        raise UserInputError(f"{where}: {exc} (or off)") from None


def address_text(address: Address | None) -> str:
    if address is None:
        return "off"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
