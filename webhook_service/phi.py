"""PHI at rest: encrypted columns and keyed search hashes.

Note text, MRNs, medications and webhook bodies are stored only as Fernet tokens
(`cryptography`'s MultiFernet: the newest key encrypts, every listed key decrypts). Fields
support must search by (MRN, appointment id) are stored as HMAC-SHA256 hashes under a
separate, never-rotated search key, so equal values match without being readable.

An encryption key is a Fernet key, used as it is, or any other random secret of at least
32 characters (a platform's generated secret, such as Heroku's 64 hex characters), which is
stretched into a Fernet key with HKDF-SHA256. Every key Fernet accepted before still means
the same key, so data already encrypted keeps decrypting.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Dialect, LargeBinary, TypeDecorator

# Used only when no keys are configured outside production: data is then encrypted with a
# key anyone can read in this file, which is fine for a laptop and never for real PHI.
_DEVELOPMENT_SECRET = b"webhook_service development key: not for real PHI"
DEVELOPMENT_KEY = base64.urlsafe_b64encode(hashlib.sha256(_DEVELOPMENT_SECRET).digest()).decode()

# A secret that is not a Fernet key must be at least this long: 64 hex characters (Heroku's
# generated secret) carry 256 bits; 32 characters of random text still carry well over 128.
MIN_SECRET_CHARS = 32
# HKDF's "info": binds the derived key to this use, so the same secret used elsewhere (say,
# as SECRET_KEY by mistake) yields an unrelated key. Changing it loses every derived key.
_DERIVATION_INFO = b"webhook_service PHI_ENCRYPTION_KEYS v1"


def fernet(key: str) -> Fernet:
    """The Fernet for one configured key: a Fernet key as it is, any other secret derived."""
    try:
        return Fernet(key.encode())
    except ValueError:
        pass  # not a Fernet key (binascii.Error is a ValueError too): a secret to stretch
    if len(key) < MIN_SECRET_CHARS:
        raise ValueError(
            f"each PHI_ENCRYPTION_KEYS entry must be a Fernet key (`webhook-service keys "
            f"generate` prints one) or a random secret of at least {MIN_SECRET_CHARS} "
            f"characters (such as the platform's generated secret); one has {len(key)}"
        )
    # The input is already a random secret, not a password: HKDF (no salt, no work factor)
    # is the right stretch, and it is deterministic, so every process derives the same key.
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_DERIVATION_INFO).derive(
        key.encode("utf-8")
    )
    return Fernet(base64.urlsafe_b64encode(derived))


class PhiKeys:
    """The process's encryption keys and search key."""

    def __init__(self, encryption_keys: tuple[str, ...], search_key: str) -> None:
        if not encryption_keys:
            raise ValueError("at least one PHI encryption key is required")
        self.fernet = MultiFernet([fernet(key) for key in encryption_keys])
        self.search_key = search_key.encode("utf-8")

    def encrypt(self, data: bytes) -> bytes:
        return self.fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        return self.fernet.decrypt(token)

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt a token under the newest key."""
        return self.fernet.rotate(token)

    def search_hash(self, value: str) -> str:
        return hmac.new(self.search_key, value.encode("utf-8"), hashlib.sha256).hexdigest()


_keys: PhiKeys | None = None


def configure(keys: PhiKeys) -> None:
    """Install the keys the encrypted column types use in this process."""
    global _keys
    _keys = keys


def keys() -> PhiKeys:
    if _keys is None:
        raise RuntimeError("PHI keys are not configured: call phi.configure() at start-up")
    return _keys


def search_hash(value: str | None) -> str | None:
    return None if value is None else keys().search_hash(value)


# Marks a stored Idempotency-Key as its keyed hash (migration 0014 hashed older rows).
IDEMPOTENCY_KEY_HASH_PREFIX = "hmac:"


def idempotency_key_hash(key: str, search: PhiKeys | None = None) -> str:
    """How a front end's Idempotency-Key is stored: free text it chose, which may quote a
    patient, kept only as its keyed hash, so the same key still finds its job."""
    return IDEMPOTENCY_KEY_HASH_PREFIX + (search or keys()).search_hash(key)


def generate_key() -> str:
    return Fernet.generate_key().decode()


class EncryptedBytes(TypeDecorator[bytes]):
    """Bytes stored as a Fernet token."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: bytes | None, dialect: Dialect) -> bytes | None:
        return None if value is None else keys().encrypt(value)

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> bytes | None:
        return None if value is None else _decrypt(value)


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON value stored as a Fernet token."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        return keys().encrypt(json.dumps(value, separators=(",", ":")).encode("utf-8"))

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> Any:
        return None if value is None else json.loads(_decrypt(value))


class EncryptedText(TypeDecorator[str]):
    """Text stored as a Fernet token."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> bytes | None:
        return None if value is None else keys().encrypt(value.encode("utf-8"))

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> str | None:
        return None if value is None else _decrypt(value).decode("utf-8")


def decrypt(token: bytes) -> bytes:
    """Decrypt a stored value read as raw bytes (the encrypted column types do this too)."""
    return _decrypt(token)


def _decrypt(token: bytes) -> bytes:
    try:
        return keys().decrypt(bytes(token))
    except InvalidToken:
        raise RuntimeError(
            "stored PHI cannot be decrypted with the configured PHI_ENCRYPTION_KEYS "
            "(was a key removed before `webhook-service keys rotate` re-encrypted it?)"
        ) from None
