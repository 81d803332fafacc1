"""PHI encryption keys: Fernet keys as they are, a platform's generated secret stretched."""

from __future__ import annotations

import secrets

import pytest
from cryptography.fernet import Fernet, InvalidToken

from webhook_service.phi import PhiKeys
from webhook_service.settings import Settings

# What Heroku's `"generator": "secret"` makes: 64 hex characters.
GENERATED = "9f" * 32
# "Patient doing well." encrypted under GENERATED when derivation was introduced: if the
# derivation ever changed, every row encrypted under a generated secret would be lost.
TOKEN_UNDER_GENERATED = (
    b"gAAAAABrFTSFfjNVDg3ypiBOKXlYmkOtG21n5Xhqk48WIwsm_wFzy38V7iOsxAiI7xA_ELWRGPgQ3b94oMXCIAFK"
    b"9tTNsfH5lCSBAWZpe_rgr1iZ-EXc-IM="
)


def test_a_fernet_key_is_used_as_it_is_so_existing_data_still_decrypts() -> None:
    key = Fernet.generate_key().decode()
    token = Fernet(key.encode()).encrypt(b"Patient doing well.")
    assert PhiKeys((key,), "search").decrypt(token) == b"Patient doing well."
    assert Fernet(key.encode()).decrypt(PhiKeys((key,), "search").encrypt(b"x")) == b"x"


def test_a_generated_secret_is_stretched_into_the_same_key_in_every_process() -> None:
    assert PhiKeys((GENERATED,), "search").decrypt(TOKEN_UNDER_GENERATED) == b"Patient doing well."
    other = secrets.token_hex(32)
    token = PhiKeys((other,), "search").encrypt(b"x")
    assert PhiKeys((other,), "search").decrypt(token) == b"x"
    with pytest.raises(InvalidToken):  # a different secret is a different key
        PhiKeys((GENERATED,), "search").decrypt(token)


def test_rotating_from_a_generated_secret_to_a_fernet_key_keeps_old_rows_readable() -> None:
    new = Fernet.generate_key().decode()
    keys = PhiKeys((new, GENERATED), "search")
    assert keys.decrypt(TOKEN_UNDER_GENERATED) == b"Patient doing well."
    rotated = keys.rotate(TOKEN_UNDER_GENERATED)
    assert Fernet(new.encode()).decrypt(rotated) == b"Patient doing well."


def test_a_short_secret_that_is_not_a_fernet_key_is_refused_saying_what_to_set() -> None:
    with pytest.raises(ValueError, match=r"Fernet key .*keys generate.* at least 32 characters"):
        PhiKeys(("not-a-key",), "search")


def test_production_settings_accept_the_platforms_generated_secrets() -> None:
    settings = Settings(
        WEBHOOK_SERVICE_ENV="production",
        PHI_ENCRYPTION_KEYS=secrets.token_hex(32),
        PHI_SEARCH_KEY=secrets.token_hex(32),
    )
    keys = settings.phi_keys()
    assert keys.decrypt(keys.encrypt(b"x")) == b"x"
