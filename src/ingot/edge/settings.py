"""The machine's edge settings: `<INGOT_EDGE_HOME>/settings.json`, each key overridden by its variable.

    {"kind": "builtin", "http": ":80", "https": ":443",
     "acme_directory": "https://acme-v02.api.letsencrypt.org/directory",
     "acme_email": "ops@example.com", "acme_ca_bundle": "/etc/ssl/pebble.pem"}

| key              | variable               | default                   |
|------------------|------------------------|---------------------------|
| kind             | INGOT_EDGE_KIND        | builtin (or haproxy)      |
| http             | INGOT_EDGE_HTTP        | :80 (`off` or empty: none)|
| https            | INGOT_EDGE_HTTPS       | :443 (`off` or empty: none)|
| acme_directory   | INGOT_ACME_DIRECTORY   | Let's Encrypt production  |
| acme_email       | INGOT_ACME_EMAIL       | none                      |
| acme_ca_bundle   | INGOT_ACME_CA_BUNDLE   | none (the system's CAs)   |

The home itself is `INGOT_EDGE_HOME` (edge/home.py). The file is optional; a variable set (even to
the empty string, which turns a listener off) wins over it. ":PORT" listens on every address.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingot.addresses import split_address
from ingot.edge.front import FRONT_KINDS
from ingot.errors import UserInputError
from ingot.routers.base import Address

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
}
_OFF = ("", "off")


@dataclass(frozen=True)
class EdgeSettings:
    kind: str = "builtin"
    http: Address | None = ("", 80)  # None: no shared HTTP listener; host "" is every address
    https: Address | None = ("", 443)
    acme_directory: str = LETS_ENCRYPT
    acme_email: str | None = None
    acme_ca_bundle: Path | None = None

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
                if not isinstance(value, str):
                    raise UserInputError(f"{path}: key {key!r} must be a string, got {value!r}")
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
                   acme_ca_bundle=Path(bundle) if bundle else None)


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
