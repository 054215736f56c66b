"""Test certificates made with `cryptography`: one CA, leaf certificates for any names, and a raw
HTTP/1.1 fetch over TLS with a chosen SNI and Host (what the edge's shared listeners route by)."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class TestCA:
    __test__ = False
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    cert: x509.Certificate | None = None

    def __post_init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(_name("ingot test CA")).issuer_name(_name("ingot test CA"))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> bytes:
        assert self.cert is not None
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *names: str, serial: int | None = None) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for `names` (the first is the subject)."""
        assert self.cert is not None
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(serial or x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def write(self, directory: Path, *names: str) -> tuple[Path, Path]:
        cert, key = self.issue(*names)
        stem = names[0].replace("*", "_")
        (directory / f"{stem}.crt").write_bytes(cert)
        (directory / f"{stem}.key").write_bytes(key)
        return directory / f"{stem}.crt", directory / f"{stem}.key"

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.pem.decode())
        return context


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    peer_serial: int | None = None


def _parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, body)


def _request(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def fetch(address: tuple[str, int], host: str, path: str = "/", *, tls: ssl.SSLContext | None = None,
          sni: str | None = None, timeout: float = 5.0) -> Answer:
    """GET `path` with `Host: host` on `address`; over TLS with SNI `sni` (default: `host`) if `tls`."""
    with socket.create_connection(address, timeout=timeout) as raw:
        sock: socket.socket = raw
        serial = None
        if tls is not None:
            sock = tls.wrap_socket(raw, server_hostname=sni or host)
            der = sock.getpeercert(binary_form=True)
            serial = x509.load_der_x509_certificate(der).serial_number if der else None
        sock.sendall(_request(host, path))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = _parse(b"".join(chunks))
    answer.peer_serial = serial
    return answer


async def afetch(address: tuple[str, int], host: str, path: str = "/", *, tls: ssl.SSLContext | None = None,
                 sni: str | None = None) -> Answer:
    """`fetch` in a thread, for async tests (the loop under test keeps serving meanwhile)."""
    return await asyncio.to_thread(fetch, address, host, path, tls=tls, sni=sni)
