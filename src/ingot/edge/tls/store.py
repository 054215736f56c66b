"""Certificates on disk: `<home>/acme/certs/<host>/fullchain.pem` and `key.pem`, 0600, each replaced
atomically.

The key is written before the chain, and a pair is only used when the chain's leaf is for the key: a crash
between the two writes leaves a mismatched pair, which loads as damaged and is issued again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ingot.atomic import write_atomically


class DamagedCertificate(Exception):
    """A stored certificate or key that cannot be used; the message names the file."""


@dataclass(frozen=True)
class StoredCertificate:
    host: str
    fullchain_pem: bytes
    key_pem: bytes
    serial: str  # hex, as `openssl x509 -serial` and Pebble's cert-status-by-serial spell it
    not_before: datetime
    not_after: datetime

    @property
    def validity(self) -> tuple[datetime, datetime]:
        return self.not_before, self.not_after


def parse(host: str, fullchain_pem: bytes, key_pem: bytes, where: str = "") -> StoredCertificate:
    """Check a chain and key belong together and name `host`; raise DamagedCertificate saying why."""
    where = where or host
    try:
        chain = x509.load_pem_x509_certificates(fullchain_pem)
    except ValueError as exc:
        raise DamagedCertificate(f"{where}: the certificate chain is not PEM ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DamagedCertificate(f"{where}: the private key is not a PEM key ({exc})") from None
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (leaf.public_key().public_bytes(serialization.Encoding.DER, public)
            != key.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise DamagedCertificate(f"{where}: the private key does not belong to the certificate")
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = [n.lower() for n in names.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        dns_names = []
    if host not in dns_names:
        raise DamagedCertificate(f"{where}: the certificate is for {', '.join(dns_names) or 'no DNS name'}, "
                                 f"not {host}")
    return StoredCertificate(host, fullchain_pem, key_pem, format(leaf.serial_number, "x"),
                             leaf.not_valid_before_utc, leaf.not_valid_after_utc)


class CertificateStore:
    def __init__(self, root: Path) -> None:
        self.root = root  # <home>/acme/certs

    def dir_of(self, host: str) -> Path:
        return self.root / host  # host is a checked DNS name (acme_client.auto_tls_refusal): no '/' or '..'

    def load(self, host: str) -> StoredCertificate | None:
        """The stored certificate of `host`, None if there is none; DamagedCertificate if it is unusable."""
        where = self.dir_of(host)
        chain_file, key_file = where / "fullchain.pem", where / "key.pem"
        if not chain_file.exists() and not key_file.exists():
            return None
        try:
            fullchain, key = chain_file.read_bytes(), key_file.read_bytes()
        except OSError as exc:
            raise DamagedCertificate(f"{where}: {exc.strerror}: {exc.filename}") from None
        return parse(host, fullchain, key, str(where))

    def save(self, host: str, fullchain_pem: bytes, key_pem: bytes) -> StoredCertificate:
        stored = parse(host, fullchain_pem, key_pem)
        where = self.dir_of(host)
        where.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(where / "key.pem", key_pem.decode())  # mkstemp: 0600
        write_atomically(where / "fullchain.pem", fullchain_pem.decode())
        return stored

    def set_aside(self, host: str) -> str:
        """Move a damaged pair out of the way (kept for a person to look at); say where it went."""
        where = self.dir_of(host)
        aside = where / f"damaged-{int(time.time() * 1000)}"
        aside.mkdir(parents=True, mode=0o700)
        for name in ("fullchain.pem", "key.pem"):
            if (where / name).exists():
                os.replace(where / name, aside / name)
        return str(aside)
