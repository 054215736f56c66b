"""The project's ed25519 signing key, kept apart from the state, and its public half pinned beside the spec.

The private key signs releases and ledger entries. It is `keys/release-signing.ed25519` in the state
directory, or wherever `INGOT_SIGNING_KEY` points (then ingot never makes one in the state directory):
a key outside the state is not in the state's backups, nor readable by whoever can read the state.

The public half is pinned in a file beside the spec that users commit: `<spec stem>.pub` (`ingot.pub`
for `ingot.yaml`; two specs in one directory are two projects with two keys, hence one pin each). The
first release writes it; afterwards a signing key that does not match it is refused. Everything that
trusts a signature (an instance about to start, `ingot audit verify`) trusts the pin, never the store:
whoever can write the database can put any key there.
"""

from __future__ import annotations

import base64
import binascii
import os
import weakref
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ingot.atomic import write_atomically
from ingot.errors import UserInputError

KEY_FILE = "release-signing.ed25519"
SIGNING_KEY_ENV = "INGOT_SIGNING_KEY"
PIN_SUFFIX = ".pub"
_PIN_HEADER = "# ingot's public signing key of project {project}: commit this file beside {spec}\n"


def key_path(keys_dir: Path) -> Path:
    """Where the signing key is: `$INGOT_SIGNING_KEY`, else `keys/release-signing.ed25519` in the state."""
    explicit = os.environ.get(SIGNING_KEY_ENV)
    return Path(explicit).expanduser().resolve() if explicit else keys_dir / KEY_FILE


def load_key(keys_dir: Path) -> Ed25519PrivateKey | None:
    """The signing key if there is one; never makes one."""
    path = key_path(keys_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserInputError(f"cannot read the signing key {path}: {exc.strerror}") from None
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        loaded = None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise UserInputError(f"{path} is not an ed25519 private key (PEM, PKCS8)")
    return loaded


def load_or_create_key(keys_dir: Path) -> Ed25519PrivateKey:
    """The signing key; made on first use where `key_path` says (the state's `keys/`, or $INGOT_SIGNING_KEY)."""
    existing = load_key(keys_dir)
    if existing is not None:
        return existing
    path = key_path(keys_dir)
    if path.parent == keys_dir:
        keys_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(keys_dir, 0o700)
    elif not path.parent.is_dir():
        raise UserInputError(f"{SIGNING_KEY_ENV}={path}: its directory {path.parent} does not exist")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created with 0600 from the first byte: never readable by others, not even briefly.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: that one is the key
        found = load_key(keys_dir)
        assert found is not None
        return found
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def public_key_text(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode()


def signature_valid(public_key: str, signature: str | None, data: bytes) -> bool:
    if not signature:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key)).verify(base64.b64decode(signature), data)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


# ---- the pin ----------------------------------------------------------------------------------
def pin_path(spec_path: Path) -> Path:
    """`ingot.yaml` -> `ingot.pub`, `ingot.container.yaml` -> `ingot.container.pub`, beside the spec."""
    return spec_path.resolve().with_suffix(PIN_SUFFIX)


def read_pin(path: Path) -> str | None:
    """The pinned public key (base64 of its 32 raw bytes), or None if there is no pin file."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserInputError(f"cannot read the pinned public key {path}: {exc.strerror}") from None
    values = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    try:
        if len(values) != 1 or len(base64.b64decode(values[0], validate=True)) != 32:
            raise ValueError(values)
    except (ValueError, binascii.Error):
        raise UserInputError(f"{path}: expected one line with an ed25519 public key (base64), as ingot "
                             "wrote it; restore it from git") from None
    return values[0]


def pin_key(pin: Path, keys_dir: Path, *, project: str) -> tuple[Ed25519PrivateKey, bool]:
    """The signing key, checked against the pin: the pin is written if missing (True then); a key that does
    not match it is refused (exit 2), naming both files."""
    key = load_or_create_key(keys_dir)
    mine = public_key_text(key)
    pinned = read_pin(pin)
    if pinned is None:
        write_atomically(pin, _PIN_HEADER.format(project=project, spec=pin.with_suffix(".yaml").name) + mine + "\n")
        return key, True
    if pinned != mine:
        raise UserInputError(
            f"the signing key {key_path(keys_dir)} does not match the public key pinned in {pin}",
            details=["releases signed with it would not be trusted; use the key the pin was made from "
                     f"(${SIGNING_KEY_ENV} names its file), or, if the key was replaced on purpose, remove "
                     f"{pin.name} and commit the new one the next deploy writes"])
    return key, False


def trusted_key(pin: Path | None, keys_dir: Path) -> tuple[str | None, str]:
    """The public key signatures are checked against, and where it comes from.

    The pin when there is one; else (a state from before pins, or an agent started without its spec) the
    public half of the state's own signing key, which is weaker (whoever can replace that file is trusted),
    and said so. None when there is neither. Never makes a key.
    """
    if pin is not None:
        pinned = read_pin(pin)
        if pinned is not None:
            return pinned, f"the pinned key in {pin}"
    key = load_key(keys_dir)
    if key is None:
        return None, "no pinned key and no signing key"
    return public_key_text(key), f"the signing key {key_path(keys_dir)} (no pin file{f' {pin}' if pin else ''})"


# ---- the key a store signs its ledger entries with --------------------------------------------
_keys_dirs: weakref.WeakKeyDictionary[Any, Path] = weakref.WeakKeyDictionary()
_loaded: dict[Path, Ed25519PrivateKey] = {}


def register_store(engine: Any, keys_dir: Path) -> None:
    """Ledger entries appended through `engine` are signed with the key of `keys_dir` (see `signer_for`)."""
    _keys_dirs[engine] = keys_dir


def signer_for(engine: Any) -> Ed25519PrivateKey | None:
    """The key that signs ledger entries appended through `engine` (made on first use); None for an engine
    of no state (a bare one in a test)."""
    keys_dir = _keys_dirs.get(engine)
    if keys_dir is None:
        return None
    path = key_path(keys_dir)
    key = _loaded.get(path)
    if key is None:
        key = _loaded[path] = load_or_create_key(keys_dir)
    return key
