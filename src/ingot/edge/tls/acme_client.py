"""The ACME (RFC 8555) side of automatic TLS, on certbot's `acme` library: the machine's account and one
order per host name, validated by HTTP-01.

The library is synchronous (requests): everything here blocks and is run by the manager in a worker thread
(`asyncio.to_thread`). The `challenges` mapping is never touched from here: `begin` returns the tokens and
key authorisations, and the manager sets and removes them on the event loop, since the front that serves
them (built-in or HAProxy's runtime maps) is owned by the loop.

Only HTTP-01. TLS-ALPN-01 would need the front to answer a handshake offering the `acme-tls/1` protocol
with a special self-signed certificate for the host. Python's ssl module picks the certificate in the SNI
callback and never shows the client's ALPN offer (OpenSSL's client-hello callback is not exposed); HAProxy
picks certificates by SNI only, and would need a TCP-mode frontend in front of TLS peeking at
`req.ssl_alpn`, an extra hop for every HTTPS connection. Neither front can do it soundly. Wildcard names
need DNS-01, which ingot does not do (it owns no DNS).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.errors import DeserializationError
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from ingot.atomic import write_atomically

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
USER_AGENT = "ingot-edge (acme-python)"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")


class AcmeProblem(Exception):
    """An ACME step failed; the message says what and is what `ingot status` shows."""


def auto_tls_refusal(host: str) -> str | None:
    """Why `tls: auto` cannot get a certificate for `host`, or None when it can."""
    if host.startswith("*."):
        return (f"{host}: tls: auto cannot get a wildcard certificate (ACME issues wildcards only through "
                "DNS-01 challenges, and ingot answers HTTP-01); list the host names, or give the route "
                "tls: {cert: FILE, key: FILE}")
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return f"{host}: tls: auto needs a DNS name, not an IP address"
    if not _HOST.match(host) or len(host) > 253:
        return f"{host!r}: tls: auto needs a DNS name with at least one dot (lower-case letters, digits, '-')"
    return None


def new_private_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Account:
    key: JWKEC
    registration: messages.RegistrationResource
    how: str  # "loaded" | "registered" | "recovered" (the registration was lost, the key found it again)
    notes: tuple[str, ...] = ()  # what was wrong on disk and was repaired


@dataclass
class PendingOrder:
    host: str
    key_pem: bytes  # the certificate's fresh private key
    order: messages.OrderResource
    account: Account
    # (token, key authorisation, challenge) for each authorisation the server wants validated
    http01: list[tuple[str, str, messages.ChallengeBody]]


@dataclass(frozen=True)
class Issued:
    host: str
    fullchain_pem: bytes
    key_pem: bytes


class AcmeClient:
    """One ACME server (its directory URL), one account on it, kept in `account_dir` (0700, files 0600)."""

    def __init__(self, directory: str, account_dir: Path, *, email: str | None = None, ca_bundle: str | None = None,
                 timeout: float = 90.0) -> None:
        self.directory = directory
        self.email = email or None
        self.ca_bundle = ca_bundle or None
        self.timeout = timeout
        parts = urlsplit(directory)
        tag = re.sub(r"[^a-zA-Z0-9.-]", "_", parts.netloc) or "acme"
        # One account per machine and ACME server: switching INGOT_ACME_DIRECTORY (staging ↔ production)
        # keeps the other server's account.
        self.account_dir = account_dir / f"{tag}-{hashlib.sha256(directory.encode()).hexdigest()[:8]}"

    # -- the network ---------------------------------------------------------------------------------------

    def _client(self, key: JWKEC, registration: messages.RegistrationResource | None) -> client.ClientV2:
        # requests takes a CA bundle path where the library's signature says bool (it hands it to `verify`).
        verify = cast(bool, self.ca_bundle) if self.ca_bundle else True
        net = client.ClientNetwork(key, account=registration, alg=ES256, verify_ssl=verify,
                                   user_agent=USER_AGENT, timeout=int(self.timeout))
        return client.ClientV2(client.ClientV2.get_directory(self.directory, net), net)

    # -- the account ---------------------------------------------------------------------------------------

    @property
    def key_file(self) -> Path:
        return self.account_dir / "account.key"

    @property
    def registration_file(self) -> Path:
        return self.account_dir / "registration.json"

    def _aside(self, path: Path, why: str) -> str:
        moved = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        os.replace(path, moved)
        return f"{path}: {why}; moved aside to {moved.name}"

    def account(self) -> Account:
        """Load the account, or register one (and store it) on first use. A damaged key file is moved aside
        and a new account registered; a damaged or missing registration with a good key is found again on the
        server (RFC 8555 7.3.1: a newAccount with a known key answers the existing account)."""
        self.account_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        notes: list[str] = []
        key: JWKEC | None = None
        if self.key_file.exists():
            try:
                loaded = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
                if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                    raise ValueError("not an EC private key")
                key = JWKEC(key=loaded)
            except ValueError as exc:
                notes.append(self._aside(self.key_file, f"unreadable account key ({exc})"))
                if self.registration_file.exists():
                    notes.append(self._aside(self.registration_file, "belongs to the unreadable key"))
        if key is not None and self.registration_file.exists():
            try:
                registration = messages.RegistrationResource.json_loads(self.registration_file.read_text())
                if not registration.uri:
                    raise ValueError("no account URL")
                return Account(key, registration, "loaded", tuple(notes))
            except (ValueError, DeserializationError) as exc:
                notes.append(self._aside(self.registration_file, f"unreadable registration ({exc})"))
        how = "recovered" if key is not None else "registered"
        if key is None:
            key = JWKEC(key=serialization.load_pem_private_key(new_private_key_pem(), password=None))
            # Stored before registering: a crash after the server's answer still finds the account again.
            write_atomically(self.key_file, new_key_text(key))
        acme = self._client(key, None)
        contact = (f"mailto:{self.email}",) if self.email else ()
        try:
            registration = acme.new_account(messages.NewRegistration(contact=contact, terms_of_service_agreed=True))
        except errors.ConflictError as exists:  # the key's account exists: fetch it
            found = messages.RegistrationResource(body=messages.Registration(), uri=str(exists.location))
            acme.net.account = found
            registration = acme.query_registration(found)
            how = "recovered"
        write_atomically(self.registration_file, registration.json_dumps(indent=2))
        return Account(key, registration, how, tuple(notes))

    # -- orders --------------------------------------------------------------------------------------------

    def begin(self, host: str, account: Account) -> PendingOrder:
        """Open an order for `host` with a fresh ECDSA P-256 key; say which HTTP-01 challenges to serve."""
        refusal = auto_tls_refusal(host)
        if refusal:
            raise AcmeProblem(refusal)
        key_pem = new_private_key_pem()
        acme = self._client(account.key, account.registration)
        order = acme.new_order(crypto_util.make_csr(key_pem, [host]))
        wanted: list[tuple[str, str, messages.ChallengeBody]] = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # the server reused a valid authorisation
            http01 = [c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)]
            if not http01:
                offered = ", ".join(c.chall.typ for c in authz.body.challenges) or "none"
                raise AcmeProblem(f"{host}: the ACME server offers no http-01 challenge (offered: {offered})")
            challenge = http01[0]
            _, validation = challenge.response_and_validation(account.key)
            wanted.append((challenge.chall.encode("token"), str(validation), challenge))
        return PendingOrder(host, key_pem, order, account, wanted)

    def complete(self, pending: PendingOrder) -> Issued:
        """Tell the server the challenges are served, wait for validation, finalize, fetch the full chain."""
        acme = self._client(pending.account.key, pending.account.registration)
        for _, _, challenge in pending.http01:
            acme.answer_challenge(challenge, challenge.response(pending.account.key))
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.timeout)  # the library's naive clock
        order = acme.poll_and_finalize(pending.order, deadline)
        if not order.fullchain_pem:
            raise AcmeProblem(f"{pending.host}: the ACME server finished the order without a certificate")
        return Issued(pending.host, order.fullchain_pem.encode(), pending.key_pem)

    # -- messages ------------------------------------------------------------------------------------------

    def describe(self, exc: BaseException) -> str:
        """One line for `ingot status` and the ledger, the server's own words where it gave some."""
        if isinstance(exc, AcmeProblem):
            return str(exc)
        if isinstance(exc, errors.ValidationError):
            lines = []
            for authz in exc.failed_authzrs:
                for challenge in authz.body.challenges:
                    if challenge.error is not None:
                        lines.append(f"{authz.body.identifier.value}: {challenge.chall.typ} validation failed: "
                                     f"{_problem(challenge.error)}")
            return "; ".join(lines) or str(exc)
        if isinstance(exc, errors.IssuanceError):
            return f"the ACME server refused to issue: {_problem(exc.error)}"
        if isinstance(exc, messages.Error):
            return f"the ACME server refused: {_problem(exc)}"
        if isinstance(exc, errors.TimeoutError):
            return f"the ACME server did not finish the order within {self.timeout:g}s"
        if isinstance(exc, requests.exceptions.SSLError):
            return (f"cannot verify the ACME server {self.directory}: {exc} "
                    "(INGOT_ACME_CA_BUNDLE names a CA bundle to trust for it)")
        if isinstance(exc, requests.exceptions.RequestException):
            return f"cannot reach the ACME server {self.directory}: {exc}"
        return f"{type(exc).__name__}: {exc}"


def _problem(error: messages.Error) -> str:
    text = error.detail or error.description or error.typ
    return f"{text} ({error.code})" if error.code else text


def new_key_text(key: JWKEC) -> str:
    private = cast(ec.EllipticCurvePrivateKey, key.key)
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

