"""Passwords (argon2id, constant work for unknown users, rehash) and token secrets (SHA-256)."""

from __future__ import annotations

import hashlib
import re

import pytest
from argon2 import PasswordHasher, extract_parameters
from argon2.low_level import Type

from idp import config, passwords
from idp.passwords import Passwords, hash_secret, make_hasher, new_token, split_token, verify_secret

FAST = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}
PASSWORD = "correct horse battery staple"


class CountingHasher(PasswordHasher):
    """A real argon2id hasher that remembers which hashes it was asked to verify."""

    def __init__(self, **params):
        super().__init__(**params)
        self.verified: list[str] = []

    def verify(self, hash, password):
        self.verified.append(hash)
        return super().verify(hash, password)


@pytest.fixture(scope="module")
def pw() -> Passwords:
    return Passwords(make_hasher(**FAST))


@pytest.fixture(scope="module")
def stored(pw) -> str:
    return pw.hash(PASSWORD)


# -- argon2id -------------------------------------------------------------------------------


def test_passwords_are_stored_as_argon2id_with_the_configured_parameters(pw, stored):
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    params = extract_parameters(stored)
    assert params.type is Type.ID
    assert (params.time_cost, params.memory_cost, params.parallelism) == (1, 1024, 1)


def test_hashing_the_same_password_twice_gives_different_hashes(pw, stored):
    assert pw.hash(PASSWORD) != stored


def test_the_right_password_verifies_without_asking_for_a_rehash(pw, stored):
    assert pw.verify(stored, PASSWORD) == (True, None)


@pytest.mark.parametrize("attempt", ["wrong password", "", PASSWORD.upper(), PASSWORD + " "])
def test_a_wrong_password_is_refused(pw, stored, attempt):
    assert pw.verify(stored, attempt) == (False, None)


def test_a_corrupt_stored_hash_refuses_instead_of_crashing(pw):
    assert pw.verify("not-a-hash", PASSWORD) == (False, None)
    assert pw.verify("$argon2id$v=19$m=1024,t=1,p=1$garbage", PASSWORD) == (False, None)


def test_an_unknown_user_is_refused_after_a_real_argon2_check_of_the_same_cost():
    hasher = CountingHasher(**FAST)
    pw = Passwords(hasher)
    real = pw.hash(PASSWORD)

    assert pw.verify(None, PASSWORD) == (False, None)
    assert pw.verify(None, "") == (False, None)

    # Both unknown-user attempts ran argon2id against a hash with the live parameters,
    # so the response time does not tell an attacker whether the email exists.
    assert len(hasher.verified) == 2
    for checked in hasher.verified:
        assert checked.startswith("$argon2id$")
        assert extract_parameters(checked) == extract_parameters(real)
        assert not hasher.check_needs_rehash(checked)


def test_a_hash_made_with_old_parameters_is_upgraded_on_a_successful_login(stored):
    stronger = Passwords(make_hasher(time_cost=2, memory_cost=2048, parallelism=1))
    ok, new_hash = stronger.verify(stored, PASSWORD)
    assert ok is True
    assert new_hash is not None and new_hash != stored
    params = extract_parameters(new_hash)
    assert (params.time_cost, params.memory_cost, params.parallelism) == (2, 2048, 1)
    assert stronger.verify(new_hash, PASSWORD) == (True, None)


#: OWASP Password Storage Cheat Sheet: argon2id settings of equal strength (memory KiB, time).
OWASP_ARGON2ID = {(47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5)}


def test_the_default_parameters_meet_owasp_guidance_and_upgrade_old_hashes(stored):
    """What a fresh install stores, and what a hash from the earlier default (RFC 9106's
    64 MiB, t=3, p=4) becomes at its owner's next sign-in."""
    defaults = config.load(environ={})
    hasher = make_hasher(defaults["ARGON2_TIME_COST"], defaults["ARGON2_MEMORY_COST"],
                         defaults["ARGON2_PARALLELISM"])
    fresh = extract_parameters(hasher.hash(PASSWORD))
    assert fresh.type is Type.ID
    assert (fresh.memory_cost, fresh.time_cost) in OWASP_ARGON2ID and fresh.parallelism >= 1
    earlier = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4).hash(PASSWORD)
    ok, upgraded = Passwords(hasher).verify(earlier, PASSWORD)
    assert ok and extract_parameters(upgraded) == fresh


def test_a_wrong_password_against_an_old_hash_gives_no_new_hash(stored):
    stronger = Passwords(make_hasher(time_cost=2, memory_cost=2048, parallelism=1))
    assert stronger.verify(stored, "wrong password") == (False, None)


# -- token secrets ----------------------------------------------------------------------------


def test_secrets_are_kept_as_their_sha256_hex_digest():
    assert hash_secret("abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(hash_secret("x")) == 64


def test_a_secret_verifies_against_its_hash_and_nothing_else():
    digest = hash_secret("the-secret")
    assert verify_secret("the-secret", digest) is True
    assert verify_secret("the-secreT", digest) is False
    assert verify_secret("", digest) is False
    assert verify_secret("the-secret", digest.upper()) is False


def test_new_tokens_are_id_dot_secret_with_a_256_bit_secret():
    row_id, secret, value = new_token()
    assert value == f"{row_id}.{secret}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", row_id)  # 128 bits
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)  # 256 bits
    assert split_token(value) == (row_id, secret)


def test_new_tokens_never_repeat():
    values = {new_token()[2] for _ in range(200)}
    ids = {passwords.new_id() for _ in range(200)}
    assert len(values) == 200 and len(ids) == 200


@pytest.mark.parametrize(
    "make_bad",
    [
        pytest.param(lambda i, s: None, id="none"),
        pytest.param(lambda i, s: "", id="empty"),
        pytest.param(lambda i, s: i + s, id="missing-dot"),
        pytest.param(lambda i, s: f"{i}.{s}.x", id="two-dots"),
        pytest.param(lambda i, s: f".{s}", id="empty-id"),
        pytest.param(lambda i, s: f"{i}.", id="empty-secret"),
        pytest.param(lambda i, s: f"{i[:15]}.{s}", id="id-too-short"),
        pytest.param(lambda i, s: f"{i * 2}.{s}", id="id-too-long"),
        pytest.param(lambda i, s: f"{i}.{s[:-1]}", id="secret-too-short"),
        pytest.param(lambda i, s: f"{i}.{s}A", id="secret-too-long"),
        pytest.param(lambda i, s: f"{i}.{s[:-1]}=", id="padding-char"),
        pytest.param(lambda i, s: f"{i[:-1]}+.{s}", id="plus-in-id"),
        pytest.param(lambda i, s: f"{i}.{s[:-1]}/", id="slash-in-secret"),
        pytest.param(lambda i, s: f" {i}.{s}", id="leading-space"),
        pytest.param(lambda i, s: f"{i}.{s} ", id="trailing-space"),
        pytest.param(lambda i, s: f"{i}.{s}\n", id="trailing-newline"),
        pytest.param(lambda i, s: f"{i[:-1]}é.{s}", id="non-ascii"),
        pytest.param(lambda i, s: f"{'a' * 32}.{s}{'b' * 10}", id="over-80-chars"),
    ],
)
def test_malformed_token_values_are_refused_before_any_lookup(make_bad):
    row_id, secret, _value = new_token()
    assert split_token(make_bad(row_id, secret)) is None


def test_the_longest_well_formed_value_is_accepted_and_anything_longer_is_not():
    secret = "s" * 43
    assert split_token(f"{'a' * 32}.{secret}") == ("a" * 32, secret)  # 76 characters
    assert split_token(f"{'a' * 33}.{secret}") is None
    assert split_token("a" * 81) is None


class WhereHasher(PasswordHasher):
    """A real argon2id hasher that notes which thread ran each check, at what priority."""

    def __init__(self, **params):
        super().__init__(**params)
        self.seen: list[tuple[str, int]] = []

    def verify(self, hash, password):
        import os
        import threading

        self.seen.append((threading.current_thread().name,
                          os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return super().verify(hash, password)


def test_checks_run_on_the_hashing_pool_behind_request_threads():
    """A burst of sign-ins must not take the CPU from token requests: argon2 runs on a
    small pool whose threads (and the lanes argon2 starts) have a lower priority."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    hasher = WhereHasher(**FAST)
    checker = Passwords(hasher, concurrency=2)
    stored = checker.hash(PASSWORD)
    request_priority = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with ThreadPoolExecutor(6) as requests:
        results = list(requests.map(lambda _: checker.verify(stored, PASSWORD)[0], range(12)))
    assert results == [True] * 12
    names = {name for name, _ in hasher.seen}
    assert all(name.startswith("argon2") for name in names) and 1 <= len(names) <= 2
    assert {priority for _, priority in hasher.seen} == {
        min(19, request_priority + passwords.HASHING_NICENESS)}
