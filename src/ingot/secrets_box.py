"""Encryption of secret values at rest, with a key kept apart from the state store.

The key is 32 random bytes (AES-256-GCM), base64 in a file of its own: `keys/secrets.key` in the state
directory (made on first use, mode 0600), or wherever `INGOT_SECRETS_KEY_FILE` points. The store holds
only ciphertext and the key's id (a hash of the key, which says nothing about it), so a wrong key is
reported as such instead of as a corrupt value. Each ciphertext is bound to its row (environment, name,
version) as associated data: a value copied onto another row does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ingot.errors import OperationFailed

KEY_FILE = "secrets.key"
KEY_FILE_ENV = "INGOT_SECRETS_KEY_FILE"
_FORMAT = "v1"
_NONCE_BYTES = 12


class SecretsKeyError(OperationFailed):
    """The secrets key is missing, unreadable, too open, or not the one a value was encrypted with."""


def key_path(keys_dir: Path) -> Path:
    """Where the secrets key is: `$INGOT_SECRETS_KEY_FILE`, else `keys/secrets.key` in the state directory."""
    explicit = os.environ.get(KEY_FILE_ENV)
    return Path(explicit).expanduser().resolve() if explicit else keys_dir / KEY_FILE


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"ingot secrets key id\0" + key).hexdigest()[:16]


@dataclass(frozen=True)
class SecretsBox:
    key: bytes = field(repr=False)
    path: Path

    @property
    def key_id(self) -> str:
        return key_id(self.key)

    def seal(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(self.key).encrypt(nonce, plaintext.encode(), context.encode())
        return f"{_FORMAT}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, token: str, context: str, *, sealed_with: str | None = None) -> str:
        """Decrypt `token`; `sealed_with` (the key id stored beside it) makes a wrong key explicit."""
        if sealed_with is not None and sealed_with != self.key_id:
            raise SecretsKeyError(
                f"{context}: encrypted with secrets key {sealed_with}, but the key at "
                f"{self.path} is {self.key_id}",
                details=[f"restore the original key file, or point {KEY_FILE_ENV} at it"])
        version, _, body = token.partition(":")
        try:
            raw = base64.b64decode(body, validate=True)
            if version != _FORMAT or len(raw) <= _NONCE_BYTES:
                raise ValueError(version)
            return AESGCM(self.key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode()).decode()
        except (InvalidTag, ValueError, binascii.Error):
            raise SecretsKeyError(
                f"{context}: cannot be decrypted with the secrets key at {self.path} "
                f"(key {self.key_id}): wrong key, or the stored value was altered") from None


def load_box(keys_dir: Path, *, create: bool = False) -> SecretsBox:
    """The secrets key; made (0600, never readable by others) only when `create` and it does not exist."""
    path = key_path(keys_dir)
    if not path.exists():
        if not create:
            raise SecretsKeyError(f"no secrets key at {path}",
                                  details=[f"restore it, or point {KEY_FILE_ENV} at the key file the secrets "
                                           "were set with"])
        # If another process made it first, that key is the one read below.
        _create(path, private_dir=keys_dir if path == keys_dir / KEY_FILE else None)
    return SecretsBox(_read(path), path)


def _read(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise SecretsKeyError(f"cannot read the secrets key at {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretsKeyError(f"the secrets key at {path} is accessible to other users "
                              f"(mode {stat.S_IMODE(mode):04o}); refusing to use it",
                              details=[f"chmod 600 {path}"])
    try:
        key = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32:
        raise SecretsKeyError(f"{path} is not an ingot secrets key (expected 32 bytes, base64)")
    return key


def _create(path: Path, private_dir: Path | None) -> None:
    """Make a new key at `path`, unless another process makes one there first."""
    try:
        if private_dir is not None:
            private_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(private_dir, 0o700)
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # a directory of its own: private
        _write_new(path)
    except OSError as exc:
        raise SecretsKeyError(f"cannot create the secrets key at {path}: {exc.strerror}") from None


def _write_new(path: Path) -> None:
    key = AESGCM.generate_key(bit_length=256)
    # Written in full beside it (0600 from the first byte), then linked into place: a reader never sees
    # half a key, and of two first uses at once one key wins and both processes use it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(key).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
