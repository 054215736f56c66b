"""Pebble, Let's Encrypt's test ACME server, with pebble-challtestsrv as its DNS, for real issuance in tests.

Both come from Debian's `pebble` package (scripts/test installs it). Without them a test that needs them is
skipped with the reason, except in CI (`CI` set), where that is a failure.

Every name resolves (challtestsrv's default A record) to 127.0.0.1, so Pebble validates HTTP-01 against
`http://127.0.0.1:<http_port>/.well-known/acme-challenge/<token>`: whatever the test serves the
`challenges` mapping on there (the edge's front, or `ChallengeResponder` below until a front is at hand).
Pebble's API runs over HTTPS with a certificate made here by a throwaway CA (`ca_bundle`, what
INGOT_ACME_CA_BUNDLE points at); the CA that signs the certificates Pebble issues is new every start and
is fetched from the management port (`issuing_root`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.engines import in_ci
from tests.support.harness import free_port, poll

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


def unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"CI is set and the ACME tests have no Pebble: {reason}", pytrace=False)
    pytest.skip(f"no Pebble (run as root: apt-get install pebble): {reason}")


@dataclass(frozen=True)
class Pebble:
    directory: str  # the ACME directory URL
    management: str  # Pebble's management API (roots, cert status)
    ca_bundle: Path  # trusts Pebble's own HTTPS certificate
    http_port: int  # where Pebble sends HTTP-01 validations (on 127.0.0.1)
    dns_management: str = ""  # pebble-challtestsrv's management API (`point` a name elsewhere)

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def issuing_root(self) -> bytes:
        """The root that signs what this Pebble issues (new each start)."""
        with httpx.Client(verify=self.trust(), trust_env=False, timeout=10) as http:
            answer = http.get(f"{self.management}/roots/0")
            answer.raise_for_status()
            return answer.content

    def point(self, host: str, address: str) -> None:
        """Make Pebble's DNS answer `address` for `host` (its HTTP-01 validation then goes there)."""
        answer = httpx.post(f"{self.dns_management}/add-a", json={"host": host, "addresses": [address]},
                            trust_env=False, timeout=5)
        answer.raise_for_status()


def _write_api_certificate(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and, signed by it, a certificate for 127.0.0.1/localhost: Pebble's own HTTPS."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ingot test ACME API CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    bundle, cert_file, key_file = workdir / "api-ca.pem", workdir / "api-cert.pem", workdir / "api-key.pem"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return bundle, cert_file, key_file


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.contextmanager
def running_pebble(workdir: Path, http_port: int | None = None) -> Iterator[Pebble]:
    """Pebble and its DNS on free loopback ports, validating HTTP-01 on `http_port` (free if not given)."""
    for tool in ("pebble", "pebble-challtestsrv"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not on PATH")
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = http_port or free_port()
    dns_port, acme_port, management_port, challtest_management = free_port(), free_port(), free_port(), free_port()
    bundle, cert_file, key_file = _write_api_certificate(workdir)
    config = workdir / "pebble-config.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{acme_port}", "managementListenAddress": f"127.0.0.1:{management_port}",
        "certificate": str(cert_file), "privateKey": str(key_file),
        # Where validations go: the test's responder. tlsPort is required by the config; nothing the tests
        # run answers TLS-ALPN-01, and the client never picks that challenge.
        "httpPort": http_port, "tlsPort": free_port(),
        "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    # Only its DNS is wanted: challtestsrv's own challenge servers are turned off (the test answers them).
    dns = subprocess.Popen(
        ["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
         "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
         "-management", f"127.0.0.1:{challtest_management}"],
        stdout=(logs / "challtestsrv.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
           # Fresh authorisations every order: a renewal or retry in a test really validates again.
           "PEBBLE_AUTHZREUSE": "0"}
    pebble = subprocess.Popen(["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns_port}"],
                              stdout=(logs / "pebble.log").open("wb"), stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    try:
        server = Pebble(directory=f"https://127.0.0.1:{acme_port}/dir",
                        management=f"https://127.0.0.1:{management_port}", ca_bundle=bundle, http_port=http_port,
                        dns_management=f"http://127.0.0.1:{challtest_management}")

        def up() -> bool:
            for process, name in ((dns, "challtestsrv"), (pebble, "pebble")):
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited: {(logs / f'{name}.log').read_text()[-2000:]}")
            with httpx.Client(verify=server.trust(), trust_env=False, timeout=2) as http:
                return http.get(server.directory).status_code == 200

        poll(up, timeout=20, what="Pebble's directory")
        yield server
    finally:
        _stop(pebble)
        _stop(dns)


class ChallengeResponder:
    """A minimal HTTP/1.1 server answering only /.well-known/acme-challenge/<token> from a mapping, for
    tests that have no edge front: the same contract the fronts keep (front.py, "Plain HTTP"), nothing else.
    `wrong` makes it answer every token with a bad key authorisation, as a misrouted host would."""

    def __init__(self, challenges: Mapping[str, str], port: int) -> None:
        self.challenges = challenges
        self.port = port
        self.wrong = False
        self.served: list[str] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            target = head.split(b" ", 2)[1].decode("ascii", "replace")
            token = target[len(CHALLENGE_PREFIX):] if target.startswith(CHALLENGE_PREFIX) else None
            answer = self.challenges.get(token) if token else None
            if answer is not None and self.wrong:
                answer = "not-" + answer
            if answer is None:
                status, body = "404 Not Found", b"no such challenge\n"
            else:
                status, body = "200 OK", answer.encode()
                self.served.append(token or "")
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, IndexError):
            pass
        finally:
            writer.close()
