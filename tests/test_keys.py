"""The signing-key store: what is on disk, which key signs when, what is published, what is refused.

Time is a plain ``now`` moved by the tests; nothing here sleeps. RSA generation
is the slow part, so most tests copy one directory generated per session.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.errors import JoseError

from idp.keys import (
    SUPPORTED_ALGORITHMS,
    KeyStore,
    KeyStoreError,
    SigningKey,
)
from idp.signing import Signer
from tests.compact import header_of

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
RETENTION = timedelta(hours=1)
ISSUER = "https://id.example.test"
CLIENT = "client-1"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "keys.json").read_text())


def _claims(now: datetime = NOW, **overrides: object) -> dict:
    ts = int(now.timestamp())
    claims = {"iss": ISSUER, "aud": CLIENT, "sub": "user-1", "iat": ts, "exp": ts + 300}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture(scope="session")
def template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("template") / "keys"
    KeyStore(directory, RETENTION).ensure(NOW)
    return directory


@pytest.fixture
def keys_dir(template_dir: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    shutil.copytree(template_dir, directory)  # keeps the 0700/0600 modes
    return directory


@pytest.fixture
def store(keys_dir: Path) -> KeyStore:
    """A store of its own, for tests that change the keys."""
    return KeyStore(keys_dir, RETENTION, reload_interval=0)


@pytest.fixture(scope="session")
def shared(template_dir: Path) -> KeyStore:
    """One store for the read-only tests: loading (validating) an RSA key costs ~50 ms."""
    return KeyStore(template_dir, RETENTION, reload_interval=0)


# -- creating keys -------------------------------------------------------------------


def test_ensure_creates_an_rs256_and_an_es256_key_in_private_files(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "keys"
    store = KeyStore(directory, RETENTION)

    assert store.ensure(NOW) is True

    assert _mode(directory) == 0o700
    assert _mode(directory / "keys.json") == 0o600
    entries = _manifest(directory)["keys"]
    assert sorted(e["alg"] for e in entries) == sorted(SUPPORTED_ALGORITHMS)
    for entry in entries:
        assert entry["retired_at"] is None
        assert datetime.fromisoformat(entry["created_at"]) == NOW
        assert _mode(directory / f"{entry['kid']}.pem") == 0o600
    rs, es = store.current("RS256", now=NOW), store.current("ES256", now=NOW)
    assert isinstance(rs.private_key, rsa.RSAPrivateKey)
    assert rs.private_key.key_size == 2048
    assert rs.private_key.public_key().public_numbers().e == 65537
    assert isinstance(es.private_key, ec.EllipticCurvePrivateKey)
    assert isinstance(es.private_key.curve, ec.SECP256R1)
    assert rs.kid != es.kid
    pem = (directory / f"{rs.kid}.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [".lock", "keys.json", f"{rs.kid}.pem", f"{es.kid}.pem"]
    )  # no temp files left behind


def test_ensure_twice_keeps_the_existing_keys(keys_dir: Path) -> None:
    before = _manifest(keys_dir)
    first = KeyStore(keys_dir, RETENTION)

    assert first.ensure(NOW + timedelta(days=1)) is False
    assert KeyStore(keys_dir, RETENTION).ensure(NOW + timedelta(days=2)) is False
    assert _manifest(keys_dir) == before


def test_ensure_adds_only_a_missing_algorithm(keys_dir: Path) -> None:
    manifest = _manifest(keys_dir)
    rs_entry = next(e for e in manifest["keys"] if e["alg"] == "RS256")
    manifest["keys"] = [rs_entry]
    (keys_dir / "keys.json").write_text(json.dumps(manifest))

    store = KeyStore(keys_dir, RETENTION)
    assert store.ensure(NOW) is True
    assert store.current("RS256", now=NOW).kid == rs_entry["kid"]
    assert store.current("ES256", now=NOW).kid != rs_entry["kid"]


def test_concurrent_ensure_generates_the_keys_once(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    stores = [KeyStore(directory, RETENTION) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    results: list[bool] = []

    def start(store: KeyStore) -> None:
        barrier.wait()
        results.append(store.ensure(NOW))

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(results) == [False, False, False, True]
    assert len(_manifest(directory)["keys"]) == 2
    assert len(list(directory.glob("*.pem"))) == 2
    assert len({s.current("RS256", now=NOW).kid for s in stores}) == 1


# -- signing and publishing ----------------------------------------------------------


def test_jwks_publishes_public_members_only(shared: KeyStore) -> None:
    jwks = shared.jwks(NOW)

    by_alg = {k["alg"]: k for k in jwks["keys"]}
    assert set(by_alg) == set(SUPPORTED_ALGORITHMS)
    assert set(by_alg["RS256"]) == {"kid", "alg", "use", "kty", "n", "e"}
    assert set(by_alg["ES256"]) == {"kid", "alg", "use", "kty", "crv", "x", "y"}
    assert by_alg["RS256"]["kty"] == "RSA" and by_alg["RS256"]["e"] == "AQAB"
    assert by_alg["ES256"]["kty"] == "EC" and by_alg["ES256"]["crv"] == "P-256"
    assert all(k["use"] == "sig" for k in jwks["keys"])
    assert by_alg["RS256"]["kid"] == shared.current("RS256", now=NOW).kid
    assert b'"d"' not in shared.jwks_json(NOW)


def test_jwks_json_is_computed_once_until_the_keys_change(store: KeyStore) -> None:
    first = store.jwks_json(NOW)

    assert store.jwks_json(NOW) is first
    assert json.loads(first) == store.jwks(NOW)

    store.rotate(NOW)
    after = store.jwks_json(NOW)
    assert after != first
    assert len(json.loads(after)["keys"]) == 4


def test_sign_does_not_read_the_key_files_again(store: KeyStore, keys_dir: Path) -> None:
    signer = Signer(store)
    signer.sign(_claims(), now=NOW)
    for pem in keys_dir.glob("*.pem"):
        pem.unlink()

    token = signer.sign(_claims(), alg="ES256", now=NOW)  # keys.json unchanged: nothing re-read
    assert signer.verify(token, audience=CLIENT, now=NOW)["sub"] == "user-1"


# -- rotation ------------------------------------------------------------------------


def test_rotate_keeps_the_old_key_published_until_retention_passes_then_prunes_it(
    store: KeyStore, keys_dir: Path
) -> None:
    old = {alg: store.current(alg, now=NOW) for alg in SUPPORTED_ALGORITHMS}

    new = store.rotate(NOW)

    assert sorted(k.alg for k in new) == sorted(SUPPORTED_ALGORITHMS)
    assert {k.alg: k.kid for k in new} == {a: store.current(a, now=NOW).kid for a in SUPPORTED_ALGORITHMS}
    old_kids = {k.kid for k in old.values()}
    assert old_kids.isdisjoint(k.kid for k in new)
    retired = {e["kid"]: e["retired_at"] for e in _manifest(keys_dir)["keys"]}
    assert {datetime.fromisoformat(retired[kid]) for kid in old_kids} == {NOW}

    def published_kids(now: datetime) -> set[str]:
        return {k["kid"] for k in store.jwks(now)["keys"]}

    assert old_kids <= published_kids(NOW + RETENTION)
    assert old_kids.isdisjoint(published_kids(NOW + RETENTION + timedelta(seconds=1)))
    assert all((keys_dir / f"{kid}.pem").exists() for kid in old_kids)  # only rotate prunes

    later = NOW + RETENTION + timedelta(seconds=1)
    newest = store.rotate(later)

    assert all(not (keys_dir / f"{kid}.pem").exists() for kid in old_kids)
    on_disk = {e["kid"] for e in _manifest(keys_dir)["keys"]}
    assert on_disk == {k.kid for k in new} | {k.kid for k in newest}
    assert len(store.published(later)) == 4


def test_rotate_does_not_prune_a_key_still_within_retention(store: KeyStore) -> None:
    first = store.rotate(NOW)
    later = NOW + RETENTION + timedelta(seconds=1)
    store.rotate(later)  # the original keys go; the first rotation's stay

    kids = {k.kid for k in store.published(later)}
    assert {k.kid for k in first} <= kids
    assert len(kids) == 4


def test_token_signed_before_rotation_verifies_until_its_key_is_unpublished(
    store: KeyStore,
) -> None:
    signer = Signer(store)
    token = signer.sign(_claims(), alg="ES256", now=NOW)
    store.rotate(NOW + timedelta(seconds=10))
    assert store.current("ES256", now=NOW + timedelta(seconds=10)).kid != header_of(token)["kid"]

    assert signer.verify(token, audience=CLIENT, now=NOW + timedelta(seconds=20))["sub"] == "user-1"

    gone = NOW + timedelta(seconds=10) + RETENTION + timedelta(seconds=1)
    with pytest.raises(JoseError):
        signer.verify(token, audience=CLIENT, now=gone, verify_exp=False)


def test_retired_keys_stay_published_one_reload_interval_longer(keys_dir: Path) -> None:
    store = KeyStore(keys_dir, RETENTION, reload_interval=30)
    old = store.current(now=NOW).kid
    store.rotate(NOW)  # the new key signs from NOW + 30 s: the old one retires then

    retired = NOW + timedelta(seconds=30)
    kids = {k.kid for k in store.published(retired + RETENTION + timedelta(seconds=30))}
    assert old in kids  # another node may have signed with it for up to 30 s more
    kids = {k.kid for k in store.published(retired + RETENTION + timedelta(seconds=31))}
    assert old not in kids


MAX_AGE = timedelta(minutes=5)


def test_rotate_publishes_new_keys_at_once_and_signs_with_them_one_jwks_cache_period_later(
    keys_dir: Path,
) -> None:
    """A relying party may keep the JWKS for max-age; the other nodes notice the rotation
    within the reload interval: until both passed, tokens are signed with the old key."""
    store = KeyStore(keys_dir, RETENTION, reload_interval=30, jwks_max_age=MAX_AGE)
    old = {alg: store.current(alg, now=NOW).kid for alg in SUPPORTED_ALGORITHMS}

    new = store.rotate(NOW)

    takeover = NOW + MAX_AGE + timedelta(seconds=30)
    assert {k.signs_from for k in new} == {takeover}
    published = {k["kid"] for k in store.jwks(NOW)["keys"]}
    assert published == set(old.values()) | {k.kid for k in new}
    for alg in SUPPORTED_ALGORITHMS:
        assert store.current(alg, now=NOW).kid == old[alg]
        assert store.current(alg, now=takeover - timedelta(seconds=1)).kid == old[alg]
        assert store.current(alg, now=takeover).kid == next(k.kid for k in new if k.alg == alg)
    entries = {e["kid"]: e for e in _manifest(keys_dir)["keys"]}
    assert {datetime.fromisoformat(entries[kid]["retired_at"]) for kid in old.values()} == {takeover}
    assert {datetime.fromisoformat(entries[k.kid]["signs_from"]) for k in new} == {takeover}
    # The old keys stay published while what they signed up to the takeover may be alive.
    assert set(old.values()) <= {k.kid for k in store.published(takeover + store.publish_window)}
    assert set(old.values()).isdisjoint(
        k.kid for k in store.published(takeover + store.publish_window + timedelta(seconds=1)))


def test_a_second_rotation_before_the_first_takes_over_keeps_every_key_in_its_turn(
    keys_dir: Path,
) -> None:
    store = KeyStore(keys_dir, RETENTION, reload_interval=0, jwks_max_age=MAX_AGE)
    first_key = store.current("ES256", now=NOW).kid
    second = next(k for k in store.rotate(NOW) if k.alg == "ES256")
    third = next(k for k in store.rotate(NOW + timedelta(minutes=2)) if k.alg == "ES256")

    assert third.signs_from == NOW + timedelta(minutes=7)
    for minute, kid in ((0, first_key), (4, first_key), (5, second.kid), (6, second.kid),
                        (7, third.kid)):
        assert store.current("ES256", now=NOW + timedelta(minutes=minute)).kid == kid, minute
    assert {first_key, second.kid, third.kid} <= {k["kid"] for k in store.jwks(NOW)["keys"]}


def test_a_manifest_from_before_publish_ahead_signs_from_creation(keys_dir: Path) -> None:
    manifest = _manifest(keys_dir)
    for entry in manifest["keys"]:
        del entry["signs_from"]
    (keys_dir / "keys.json").write_text(json.dumps(manifest))

    store = KeyStore(keys_dir, RETENTION)
    assert store.current("RS256", now=NOW).signs_from == NOW


def test_a_second_store_on_the_same_directory_sees_a_rotation(keys_dir: Path) -> None:
    first = KeyStore(keys_dir, RETENTION, reload_interval=0)
    second = KeyStore(keys_dir, RETENTION, reload_interval=0)
    before = second.current("RS256", now=NOW).kid

    new = {k.alg: k.kid for k in first.rotate(NOW)}

    assert second.current("RS256", now=NOW).kid == new["RS256"] != before
    assert second.current("ES256", now=NOW).kid == new["ES256"]
    assert {k["kid"] for k in second.jwks(NOW)["keys"]} >= {before, *new.values()}
    token = Signer(second).sign(_claims(), now=NOW)
    assert Signer(first).verify(token, audience=CLIENT, now=NOW)["sub"] == "user-1"


def test_unknown_kid_makes_a_lazy_store_look_for_a_rotation_at_once(keys_dir: Path) -> None:
    lazy = KeyStore(keys_dir, RETENTION, reload_interval=3600)
    lazy.current(now=NOW)
    rotator = KeyStore(keys_dir, RETENTION, reload_interval=0)
    rotator.rotate(NOW)

    token = Signer(rotator).sign(_claims(), now=NOW)

    assert Signer(lazy).verify(token, audience=CLIENT, now=NOW)["sub"] == "user-1"


def test_a_failed_reload_keeps_serving_the_loaded_keys(
    store: KeyStore, keys_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kid = store.current(now=NOW).kid
    manifest = keys_dir / "keys.json"
    manifest.write_text("{not json")
    manifest.chmod(0o600)

    with caplog.at_level(logging.WARNING, logger="idp.keys"):
        token = Signer(store).sign(_claims(), now=NOW)

    assert header_of(token)["kid"] == kid
    assert "corrupt" in caplog.text
    with pytest.raises(KeyStoreError, match="corrupt"):
        KeyStore(keys_dir, RETENTION).current(now=NOW)


# -- what loading refuses ------------------------------------------------------------


def test_a_world_readable_pem_is_refused_with_a_chmod_hint(keys_dir: Path) -> None:
    pem = next(keys_dir.glob("rs-*.pem"))
    pem.chmod(0o644)

    with pytest.raises(KeyStoreError) as excinfo:
        KeyStore(keys_dir, RETENTION).current(now=NOW)

    message = str(excinfo.value)
    assert f"chmod 600 {pem}" in message
    assert "\n" not in message


def test_a_group_readable_manifest_is_refused_with_a_chmod_hint(keys_dir: Path) -> None:
    (keys_dir / "keys.json").chmod(0o640)

    with pytest.raises(KeyStoreError, match=r"chmod 600 .*keys\.json"):
        KeyStore(keys_dir, RETENTION).ensure(NOW)


@pytest.mark.parametrize(
    "content, why",
    [
        ("{not json", "not valid JSON"),
        ("[]", "keys"),
        ('{"keys": [{"kid": "../../etc/passwd", "alg": "RS256"}]}', "invalid kid"),
        (
            '{"keys": [{"kid": "k1", "alg": "HS256", "created_at": "2026-01-05T09:00:00Z"}]}',
            "unsupported alg",
        ),
        ('{"keys": [{"kid": "k1", "alg": "RS256", "created_at": "yesterday"}]}', "created_at"),
    ],
)
def test_a_corrupt_manifest_is_reported_and_never_overwritten(keys_dir: Path, content: str, why: str) -> None:
    manifest = keys_dir / "keys.json"
    manifest.write_text(content)
    manifest.chmod(0o600)

    with pytest.raises(KeyStoreError, match=why):
        KeyStore(keys_dir, RETENTION).current(now=NOW)
    with pytest.raises(KeyStoreError, match="corrupt"):
        KeyStore(keys_dir, RETENTION).ensure(NOW)
    assert manifest.read_text() == content


def test_a_missing_pem_is_reported(keys_dir: Path) -> None:
    pem = next(keys_dir.glob("es-*.pem"))
    pem.unlink()

    with pytest.raises(KeyStoreError, match=f"{pem}.*missing"):
        KeyStore(keys_dir, RETENTION).current(now=NOW)


def test_a_pem_of_the_wrong_kind_is_reported(keys_dir: Path) -> None:
    rs_pem = next(keys_dir.glob("rs-*.pem"))
    es_pem = next(keys_dir.glob("es-*.pem"))
    os.replace(es_pem, rs_pem)

    with pytest.raises(KeyStoreError, match="RS256"):
        KeyStore(keys_dir, RETENTION).current(now=NOW)


def test_a_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="does not exist"):
        KeyStore(tmp_path / "nowhere", RETENTION).jwks(NOW)


def test_current_key_is_a_frozen_record_without_the_secret_in_its_repr(shared: KeyStore) -> None:
    key = shared.current("RS256", now=NOW)

    assert isinstance(key, SigningKey)
    assert "private_key" not in repr(key)
    with pytest.raises(AttributeError):
        key.kid = "other"  # type: ignore[misc]

