"""Automatic TLS against a real ACME server: Pebble, validating HTTP-01 over the network against what serves
the `challenges` mapping, with an injectable clock to make certificates due for renewal.

`ChallengeFront` is the part of the edge's Front (edge/front.py) the manager uses: `challenges` served on
Pebble's validation port, and `set_certificate`. It serves them with tests/support/pebble.py's
ChallengeResponder; a built-in front listening on `pebble.http_port` can take its place as is.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import verification

from ingot.edge.tls.manager import ACCOUNT, DAMAGED, FAILED, RENEWED, CertificateManager
from ingot.edge.tls.renewal import RenewalPolicy
from tests.support.pebble import ChallengeResponder, Pebble, running_pebble
from tests.support.switch_load import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    with running_pebble(tmp_path_factory.mktemp("pebble")) as server:
        yield server


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class ChallengeFront:
    responder: ChallengeResponder
    challenges: dict[str, str] = field(default_factory=dict)
    installed: list[tuple[str, bytes, bytes]] = field(default_factory=list)

    async def set_certificate(self, host: str, cert_pem: bytes, key_pem: bytes) -> None:
        self.installed.append((host, cert_pem, key_pem))

    def serials(self, host: str) -> list[str]:
        return [format(x509.load_pem_x509_certificate(c).serial_number, "x") for h, c, _ in self.installed
                if h == host]


@asynccontextmanager
async def front_for(pebble: Pebble) -> AsyncIterator[ChallengeFront]:
    front = ChallengeFront(ChallengeResponder({}, pebble.http_port))
    front.responder.challenges = front.challenges
    await front.responder.start()
    try:
        yield front
    finally:
        await front.responder.stop()


@dataclass
class Run:
    manager: CertificateManager
    events: list[tuple[str, str, str]]
    clock: Clock

    def state(self, host: str) -> Any:
        return self.manager.status().get(host, {}).get("state")

    def kinds(self, kind: str) -> list[tuple[str, str, str]]:
        return [e for e in self.events if e[1] == kind]


@asynccontextmanager
async def managing(pebble: Pebble, front: ChallengeFront, home: Path, hosts: list[str],
                   clock: Clock | None = None) -> AsyncIterator[Run]:
    events: list[tuple[str, str, str]] = []
    clock = clock or Clock()
    manager = CertificateManager(home, challenges=front.challenges, install=front.set_certificate,
                                 directory=pebble.directory, email="ops@ingot.test", ca_bundle=str(pebble.ca_bundle),
                                 on_event=lambda *e: events.append(e), clock=clock, policy=RenewalPolicy(),
                                 acme_timeout=20)
    await manager.hosts_changed(None, set(hosts))  # what the edge calls after each table change; starts it
    try:
        yield Run(manager, events, clock)
    finally:
        await manager.stop()


def verify_chain(pebble: Pebble, host: str, fullchain: bytes) -> x509.Certificate:
    leaf, *intermediates = x509.load_pem_x509_certificates(fullchain)
    root = x509.load_pem_x509_certificate(pebble.issuing_root())
    verifier = (verification.PolicyBuilder().store(verification.Store([root])).time(datetime.now(UTC))
                .build_server_verifier(verification.DNSName(host)))
    verifier.verify(leaf, intermediates)  # raises if the chain does not lead to Pebble's root for this name
    return leaf


def test_a_host_gets_a_certificate_validated_over_http01(pebble: Pebble, tmp_path: Path) -> None:
    host = "app.ingot.test"

    async def body() -> None:
        async with front_for(pebble) as front, managing(pebble, front, tmp_path, [host]) as run:
            await wait_until(lambda: run.state(host) in ("valid", "failed"), "the first certificate", 30)
            status = run.manager.status()[host]
            assert status["state"] == "valid", status
            [(installed_host, chain, key)] = front.installed
            assert installed_host == host
            leaf = verify_chain(pebble, host, chain)
            assert format(leaf.serial_number, "x") == status["serial"]
            assert front.responder.served, "Pebble never fetched the challenge: no real validation happened"
            assert front.challenges == {}, "the challenge tokens outlive the validation"
            stored = tmp_path / "acme" / "certs" / host
            assert (stored / "fullchain.pem").read_bytes() == chain and (stored / "key.pem").read_bytes() == key
            for path in (stored / "fullchain.pem", stored / "key.pem", *(tmp_path / "acme" / "accounts").glob("*/*")):
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
            assert b"BEGIN PRIVATE KEY" in key and leaf.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
            # Pebble's certificates live for years: renewal 30 days before expiry, not before.
            assert status["next_attempt"] == (leaf.not_valid_after_utc - timedelta(days=30)).isoformat(
                timespec="seconds")

    asyncio.run(body())


def test_renewal_and_a_failed_challenge_keep_the_old_certificate_serving(pebble: Pebble, tmp_path: Path) -> None:
    host = "renew.ingot.test"

    async def body() -> None:
        async with front_for(pebble) as front, managing(pebble, front, tmp_path, [host]) as run:
            await wait_until(lambda: run.state(host) == "valid", "the first certificate", 30)
            [first] = front.serials(host)
            not_after = datetime.fromisoformat(run.manager.status()[host]["not_after"])

            # Due, but the challenge answers wrong (as a host routed elsewhere would): failed, recorded, the
            # old certificate untouched and the next try backed off.
            front.responder.wrong = True
            run.clock.now = not_after - timedelta(days=29)
            run.manager.wake()
            await wait_until(lambda: run.state(host) == "failed", "the failed renewal", 30)
            status = run.manager.status()[host]
            assert "key authorization" in status["last_error"].lower() and "unauthorized" in status["last_error"], \
                status["last_error"]
            [(_, _, detail)] = run.kinds(FAILED)
            assert status["last_error"] in detail and f"serial {first} keeps serving" in detail
            assert front.serials(host) == [first] and status["serial"] == first
            retry = datetime.fromisoformat(status["next_attempt"])
            assert retry >= run.clock.now + timedelta(minutes=4), "a failure is retried without backoff"
            assert front.challenges == {}

            # The next try, once its time comes, validates and installs a new certificate.
            front.responder.wrong = False
            run.clock.now = retry + timedelta(seconds=1)
            run.manager.wake()
            await wait_until(lambda: len(front.serials(host)) == 2, "the renewed certificate", 30)
            second = front.serials(host)[1]
            assert second != first
            status = run.manager.status()[host]
            assert status["state"] == "valid" and status["serial"] == second and status["failures"] == 0
            assert status["last_error"] is None
            [(_, _, renewed)] = run.kinds(RENEWED)
            assert second in renewed
            verify_chain(pebble, host, front.installed[-1][1])

    asyncio.run(body())


def test_a_first_issuance_that_fails_says_why_and_backs_off(pebble: Pebble, tmp_path: Path) -> None:
    host = "missing.ingot.test"

    async def body() -> None:
        async with front_for(pebble) as front:
            front.challenges = {}  # the responder serves another mapping: every validation gets a 404
            async with managing(pebble, front, tmp_path, [host]) as run:
                await wait_until(lambda: run.state(host) == "failed", "the failed issuance", 30)
                status = run.manager.status()[host]
                assert "404" in status["last_error"], status["last_error"]
                assert front.installed == []
                [(_, _, detail)] = run.kinds(FAILED)
                assert "no certificate yet" in detail
                assert datetime.fromisoformat(status["next_attempt"]) >= run.clock.now + timedelta(minutes=4)
            # The backoff survives a restart: a new manager does not try again at once.
            async with managing(pebble, front, tmp_path, [host]) as again:
                status = again.manager.status()[host]
                assert status["state"] == "failed" and status["failures"] == 1
                assert datetime.fromisoformat(status["next_attempt"]) >= again.clock.now + timedelta(minutes=4)

    asyncio.run(body())


def test_the_account_and_certificates_are_reused_across_restarts(pebble: Pebble, tmp_path: Path) -> None:
    async def body() -> None:
        async with front_for(pebble) as front:
            async with managing(pebble, front, tmp_path, ["one.ingot.test"]) as run:
                await wait_until(lambda: run.state("one.ingot.test") == "valid", "the first certificate", 30)
                account = run.manager.account_url
                assert [k[2].split()[0] for k in run.kinds(ACCOUNT)] == ["registered"]
            [first] = front.serials("one.ingot.test")
            async with managing(pebble, front, tmp_path, ["one.ingot.test", "two.ingot.test"]) as run:
                # The stored certificate is installed by start itself, before any ACME request.
                assert front.serials("one.ingot.test") == [first, first]
                await wait_until(lambda: run.state("two.ingot.test") == "valid", "the second host's certificate", 30)
                assert run.manager.account_url == account
                assert run.kinds(ACCOUNT) == [], "a second account was registered"
                assert front.serials("one.ingot.test") == [first, first]

    asyncio.run(body())


def test_damaged_account_and_certificate_files_are_set_aside_and_replaced(pebble: Pebble, tmp_path: Path) -> None:
    host = "damaged.ingot.test"

    async def body() -> None:
        async with front_for(pebble) as front:
            async with managing(pebble, front, tmp_path, [host]) as run:
                await wait_until(lambda: run.state(host) == "valid", "the first certificate", 30)
                old_account = run.manager.account_url
            (key_file,) = (tmp_path / "acme" / "accounts").glob("*/account.key")
            key_file.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
            (tmp_path / "acme" / "certs" / host / "fullchain.pem").write_text("garbage\n")
            async with managing(pebble, front, tmp_path, [host]) as run:
                await wait_until(lambda: run.state(host) == "valid" and bool(run.manager.account_url),
                                 "a new certificate", 30)
                damaged = " | ".join(e[2] for e in run.kinds(DAMAGED))
                assert f"{tmp_path / 'acme' / 'certs' / host}: the certificate chain is not PEM" in damaged, damaged
                assert f"{key_file}: unreadable account key" in damaged, damaged
                assert run.manager.account_url != old_account
                assert [k[2].split()[0] for k in run.kinds(ACCOUNT)] == ["registered"]
                assert len(front.serials(host)) == 2
                assert list((tmp_path / "acme" / "certs" / host).glob("damaged-*/fullchain.pem"))
                assert list(key_file.parent.glob("account.key.corrupt-*"))

    asyncio.run(body())


def test_an_acme_server_that_cannot_be_verified_or_reached_is_named(pebble: Pebble, tmp_path: Path) -> None:
    async def body() -> None:
        async with front_for(pebble) as front:
            untrusted = CertificateManager(tmp_path / "a", challenges=front.challenges, install=front.set_certificate,
                                           directory=pebble.directory)  # Pebble's API CA not given
            closed = CertificateManager(tmp_path / "b", challenges=front.challenges, install=front.set_certificate,
                                        directory="https://127.0.0.1:9/dir", acme_timeout=5)
            for manager in (untrusted, closed):
                await manager.start(["app.ingot.test"])
            try:
                await wait_until(lambda: all(m.status()["app.ingot.test"]["state"] == "failed"
                                             for m in (untrusted, closed)), "both failures", 20)
                error = untrusted.status()["app.ingot.test"]["last_error"]
                assert f"cannot verify the ACME server {pebble.directory}" in error and "INGOT_ACME_CA_BUNDLE" in error
                assert "cannot reach the ACME server https://127.0.0.1:9/dir" in closed.status()["app.ingot.test"][
                    "last_error"]
            finally:
                for manager in (untrusted, closed):
                    await manager.stop()

    asyncio.run(body())


def test_a_certificate_the_front_refused_is_offered_again_without_a_new_order(pebble: Pebble, tmp_path: Path) -> None:
    host = "flaky.ingot.test"

    async def body() -> None:
        async with front_for(pebble) as front:
            accepted = front.set_certificate
            refusals = [RuntimeError("the front is restarting")]

            async def install(name: str, cert: bytes, key: bytes) -> None:
                if refusals:
                    raise refusals.pop()
                await accepted(name, cert, key)

            front.set_certificate = install  # type: ignore[method-assign]
            async with managing(pebble, front, tmp_path, [host]) as run:
                await wait_until(lambda: run.state(host) == "failed", "the refused install", 30)
                status = run.manager.status()[host]
                assert "the edge did not take the certificate" in status["last_error"]
                assert "the front is restarting" in status["last_error"]
                issued = status["serial"]
                run.clock.now = datetime.fromisoformat(status["next_attempt"]) + timedelta(seconds=1)
                run.manager.wake()
                await wait_until(lambda: run.state(host) == "valid", "the certificate installed", 30)
                assert front.serials(host) == [issued], "a second order was made for a certificate already issued"

    asyncio.run(body())
