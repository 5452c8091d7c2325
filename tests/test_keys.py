"""The signing-key store: what is on disk, what is signed, what is published, what is refused.

Time is a plain ``now`` moved by the tests; nothing here sleeps. RSA generation
is the slow part, so most tests copy one directory generated per session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import shutil
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from idp.keys import (
    MAX_TOKEN_LENGTH,
    SUPPORTED_ALGORITHMS,
    KeyStore,
    KeyStoreError,
    SigningKey,
)

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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


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
    rs, es = store.current("RS256"), store.current("ES256")
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
    assert store.current("RS256").kid == rs_entry["kid"]
    assert store.current("ES256").kid != rs_entry["kid"]


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
    assert len({s.current("RS256").kid for s in stores}) == 1


# -- signing and publishing ----------------------------------------------------------


@pytest.mark.parametrize("alg", SUPPORTED_ALGORITHMS)
def test_signed_token_verifies_with_the_store_and_with_pyjwt_from_the_jwks(
    shared: KeyStore, alg: str
) -> None:
    token = shared.sign(_claims(), alg=alg, typ="at+jwt")

    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "kid": shared.current(alg).kid, "typ": "at+jwt"}
    claims = shared.verify(token, audience=CLIENT, issuer=ISSUER, now=NOW, typ="at+jwt")
    assert claims == _claims()

    jwks = jwt.PyJWKSet.from_dict(shared.jwks(NOW))
    independent = jwt.decode(
        token,
        jwks[header["kid"]].key,
        algorithms=[alg],
        audience=CLIENT,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert independent == claims


def test_jwks_publishes_public_members_only(shared: KeyStore) -> None:
    jwks = shared.jwks(NOW)

    by_alg = {k["alg"]: k for k in jwks["keys"]}
    assert set(by_alg) == set(SUPPORTED_ALGORITHMS)
    assert set(by_alg["RS256"]) == {"kid", "alg", "use", "kty", "n", "e"}
    assert set(by_alg["ES256"]) == {"kid", "alg", "use", "kty", "crv", "x", "y"}
    assert by_alg["RS256"]["kty"] == "RSA" and by_alg["RS256"]["e"] == "AQAB"
    assert by_alg["ES256"]["kty"] == "EC" and by_alg["ES256"]["crv"] == "P-256"
    assert all(k["use"] == "sig" for k in jwks["keys"])
    assert by_alg["RS256"]["kid"] == shared.current("RS256").kid
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
    store.sign(_claims())
    for pem in keys_dir.glob("*.pem"):
        pem.unlink()

    token = store.sign(_claims(), alg="ES256")  # keys.json unchanged: nothing re-read
    assert store.verify(token, audience=CLIENT, now=NOW)["sub"] == "user-1"


# -- rotation ------------------------------------------------------------------------


def test_rotate_keeps_the_old_key_published_until_retention_passes_then_prunes_it(
    store: KeyStore, keys_dir: Path
) -> None:
    old = {alg: store.current(alg) for alg in SUPPORTED_ALGORITHMS}

    new = store.rotate(NOW)

    assert sorted(k.alg for k in new) == sorted(SUPPORTED_ALGORITHMS)
    assert {k.alg: k.kid for k in new} == {a: store.current(a).kid for a in SUPPORTED_ALGORITHMS}
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
    token = store.sign(_claims(), alg="ES256")
    store.rotate(NOW + timedelta(seconds=10))
    assert store.current("ES256").kid != jwt.get_unverified_header(token)["kid"]

    assert store.verify(token, audience=CLIENT, now=NOW + timedelta(seconds=20))["sub"] == "user-1"

    gone = NOW + timedelta(seconds=10) + RETENTION + timedelta(seconds=1)
    with pytest.raises(jwt.InvalidTokenError):
        store.verify(token, audience=CLIENT, now=gone, verify_exp=False)


def test_retired_keys_stay_published_one_reload_interval_longer(keys_dir: Path) -> None:
    store = KeyStore(keys_dir, RETENTION, reload_interval=30)
    old = store.current().kid
    store.rotate(NOW)

    kids = {k.kid for k in store.published(NOW + RETENTION + timedelta(seconds=30))}
    assert old in kids  # another node may have signed with it for up to 30 s more
    kids = {k.kid for k in store.published(NOW + RETENTION + timedelta(seconds=31))}
    assert old not in kids


def test_a_second_store_on_the_same_directory_sees_a_rotation(keys_dir: Path) -> None:
    first = KeyStore(keys_dir, RETENTION, reload_interval=0)
    second = KeyStore(keys_dir, RETENTION, reload_interval=0)
    before = second.current("RS256").kid

    new = {k.alg: k.kid for k in first.rotate(NOW)}

    assert second.current("RS256").kid == new["RS256"] != before
    assert second.current("ES256").kid == new["ES256"]
    assert {k["kid"] for k in second.jwks(NOW)["keys"]} >= {before, *new.values()}
    token = second.sign(_claims())
    assert first.verify(token, audience=CLIENT, now=NOW)["sub"] == "user-1"


def test_unknown_kid_makes_a_lazy_store_look_for_a_rotation_at_once(keys_dir: Path) -> None:
    lazy = KeyStore(keys_dir, RETENTION, reload_interval=3600)
    lazy.current()
    rotator = KeyStore(keys_dir, RETENTION, reload_interval=0)
    rotator.rotate(NOW)

    token = rotator.sign(_claims())

    assert lazy.verify(token, audience=CLIENT, now=NOW)["sub"] == "user-1"


def test_a_failed_reload_keeps_serving_the_loaded_keys(
    store: KeyStore, keys_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kid = store.current().kid
    manifest = keys_dir / "keys.json"
    manifest.write_text("{not json")
    manifest.chmod(0o600)

    with caplog.at_level(logging.WARNING, logger="idp.keys"):
        token = store.sign(_claims())

    assert jwt.get_unverified_header(token)["kid"] == kid
    assert "corrupt" in caplog.text
    with pytest.raises(KeyStoreError, match="corrupt"):
        KeyStore(keys_dir, RETENTION).current()


# -- what verify refuses -------------------------------------------------------------


def test_verify_rejects_alg_none(shared: KeyStore) -> None:
    token = jwt.encode(_claims(), None, algorithm="none", headers={"kid": shared.current().kid})

    with pytest.raises(jwt.InvalidTokenError):
        shared.verify(token, audience=CLIENT, now=NOW)


def test_verify_rejects_hs256_keyed_with_our_rsa_public_key(shared: KeyStore) -> None:
    key = shared.current("RS256")
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "kid": key.kid, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = _b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())

    with pytest.raises(jwt.InvalidAlgorithmError):
        shared.verify(f"{header}.{payload}.{signature}", audience=CLIENT, now=NOW)


def test_verify_rejects_an_algorithm_that_does_not_match_the_key(shared: KeyStore) -> None:
    es = shared.current("ES256")
    rs_kid = shared.current("RS256").kid
    token = jwt.encode(_claims(), es.private_key, algorithm="ES256", headers={"kid": rs_kid})

    with pytest.raises(jwt.InvalidAlgorithmError):
        shared.verify(token, audience=CLIENT, now=NOW)


def test_verify_rejects_an_unknown_kid(shared: KeyStore) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(_claims(), attacker, algorithm="ES256", headers={"kid": "es-evil"})

    with pytest.raises(jwt.InvalidTokenError, match="unknown"):
        shared.verify(token, audience=CLIENT, now=NOW)


def test_verify_rejects_a_token_without_kid(shared: KeyStore) -> None:
    token = jwt.encode(_claims(), shared.current("ES256").private_key, algorithm="ES256")

    with pytest.raises(jwt.InvalidTokenError, match="kid"):
        shared.verify(token, audience=CLIENT, now=NOW)


def test_verify_rejects_a_key_embedded_in_the_header(shared: KeyStore) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    headers = {
        "kid": shared.current("ES256").kid,
        "jwk": ECAlgorithm.to_jwk(attacker.public_key(), as_dict=True),
    }
    token = jwt.encode(_claims(), attacker, algorithm="ES256", headers=headers)

    with pytest.raises(jwt.InvalidTokenError, match="jwk"):
        shared.verify(token, audience=CLIENT, now=NOW)


@pytest.mark.parametrize(
    "member, value",
    [("jku", "https://evil.test/jwks"), ("x5u", "https://evil.test/cert"), ("x5c", ["MIIB"])],
)
def test_verify_rejects_key_locations_in_the_header_even_when_signed_by_us(
    shared: KeyStore, member: str, value: object
) -> None:
    key = shared.current("ES256")
    headers = {"kid": key.kid, member: value}
    token = jwt.encode(_claims(), key.private_key, algorithm="ES256", headers=headers)

    with pytest.raises(jwt.InvalidTokenError, match=member):
        shared.verify(token, audience=CLIENT, now=NOW)


def test_verify_checks_exp_against_the_given_now(shared: KeyStore) -> None:
    token = shared.sign(_claims(exp=int(NOW.timestamp()) + 60), alg="ES256")

    assert shared.verify(token, audience=CLIENT, now=NOW + timedelta(seconds=59))
    with pytest.raises(jwt.ExpiredSignatureError):
        shared.verify(token, audience=CLIENT, now=NOW + timedelta(seconds=60))
    assert shared.verify(token, audience=CLIENT, now=NOW + timedelta(seconds=60), leeway=5)
    assert shared.verify(token, audience=CLIENT, now=NOW + timedelta(days=1), verify_exp=False)


def test_verify_requires_exp_unless_told_not_to(shared: KeyStore) -> None:
    token = shared.sign(_claims(exp=None), alg="ES256")

    with pytest.raises(jwt.MissingRequiredClaimError):
        shared.verify(token, audience=CLIENT, now=NOW)
    assert shared.verify(token, audience=CLIENT, now=NOW, verify_exp=False)


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_verify_rejects_a_token_not_yet_valid(shared: KeyStore, claim: str) -> None:
    token = shared.sign(_claims(**{claim: int(NOW.timestamp()) + 30}), alg="ES256")

    with pytest.raises(jwt.ImmatureSignatureError):
        shared.verify(token, audience=CLIENT, now=NOW)
    assert shared.verify(token, audience=CLIENT, now=NOW + timedelta(seconds=30))
    assert shared.verify(token, audience=CLIENT, now=NOW, leeway=30)


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["soon", True, float("inf"), None, [1]])
def test_verify_rejects_a_time_claim_that_is_not_a_number(
    shared: KeyStore, claim: str, value: object
) -> None:
    claims = _claims()
    claims[claim] = value
    token = shared.sign(claims, alg="ES256")

    with pytest.raises(jwt.InvalidTokenError):
        shared.verify(token, audience=CLIENT, now=NOW)


def test_verify_checks_audience_and_issuer(shared: KeyStore) -> None:
    token = shared.sign(_claims(aud=[CLIENT, "other"]), alg="ES256")

    assert shared.verify(token, audience=CLIENT, issuer=ISSUER, now=NOW)
    assert shared.verify(token, audience=["nope", "other"], now=NOW)
    assert shared.verify(token, now=NOW)  # audience=None: the caller does not check it
    with pytest.raises(jwt.InvalidAudienceError):
        shared.verify(token, audience="client-2", now=NOW)
    with pytest.raises(jwt.InvalidIssuerError):
        shared.verify(token, audience=CLIENT, issuer="https://evil.test", now=NOW)
    no_aud = shared.sign(_claims(aud=None, iss=None), alg="ES256")
    with pytest.raises(jwt.MissingRequiredClaimError):
        shared.verify(no_aud, audience=CLIENT, now=NOW)
    with pytest.raises(jwt.MissingRequiredClaimError):
        shared.verify(no_aud, issuer=ISSUER, now=NOW)


def test_verify_checks_typ_case_insensitively_with_optional_application_prefix(
    shared: KeyStore,
) -> None:
    access = shared.sign(_claims(), alg="ES256", typ="application/AT+JWT")
    logout = shared.sign(_claims(), alg="ES256", typ="logout+jwt")
    untyped = shared.sign(_claims(), alg="ES256", typ=None)

    assert shared.verify(access, audience=CLIENT, now=NOW, typ="at+jwt")
    assert shared.verify(logout, audience=CLIENT, now=NOW, typ="application/logout+JWT")
    assert shared.verify(untyped, audience=CLIENT, now=NOW)  # typ=None: not checked
    for token in (logout, untyped):
        with pytest.raises(jwt.InvalidTokenError, match="typ"):
            shared.verify(token, audience=CLIENT, now=NOW, typ="at+jwt")


def test_verify_rejects_a_tampered_payload(shared: KeyStore) -> None:
    header, _, signature = shared.sign(_claims(), alg="ES256").split(".")
    forged = _b64(json.dumps(_claims(sub="admin")).encode())

    with pytest.raises(jwt.InvalidSignatureError):
        shared.verify(f"{header}.{forged}.{signature}", audience=CLIENT, now=NOW)


def _deeply_nested_header() -> str:
    header = _b64(b"[" * 5000 + b"]" * 5000)
    return f"{header}.{_b64(b'{}')}.{_b64(b'sig')}"


@pytest.mark.parametrize(
    "token",
    [
        "A" * 1024 * 1024,
        "x" * (MAX_TOKEN_LENGTH + 1),
        "",
        "a.b.c",
        "...",
        "a.b",
        "a.b.c.d.e",
        "é.é.é",
        "\x00.\x00.\x00",
        f"{_b64(b'{}')}.{_b64(b'{}')}.",
        f"{_b64(b'[]')}.{_b64(b'{}')}.",
        f"{_b64(b'not json')}.{_b64(b'{}')}.",
        _deeply_nested_header(),
        None,
        b"a.b.c",
        12,
    ],
    ids=lambda t: repr(t)[:20],
)
def test_verify_raises_only_invalid_token_error_on_garbage(shared: KeyStore, token: object) -> None:
    with pytest.raises(jwt.InvalidTokenError):
        shared.verify(token, now=NOW)  # type: ignore[arg-type]


def test_verify_rejects_a_payload_that_is_not_an_object(shared: KeyStore) -> None:
    key = shared.current("ES256")
    token = jwt.api_jws.encode(b"[1, 2]", key.private_key, algorithm="ES256", headers={"kid": key.kid})

    with pytest.raises(jwt.InvalidTokenError):
        shared.verify(token, now=NOW, verify_exp=False)


def test_verify_requires_an_aware_now(shared: KeyStore) -> None:
    token = shared.sign(_claims())

    with pytest.raises(ValueError, match="timezone"):
        shared.verify(token, now=datetime(2026, 1, 5, 9, 0))


# -- what loading refuses ------------------------------------------------------------


def test_a_world_readable_pem_is_refused_with_a_chmod_hint(keys_dir: Path) -> None:
    pem = next(keys_dir.glob("rs-*.pem"))
    pem.chmod(0o644)

    with pytest.raises(KeyStoreError) as excinfo:
        KeyStore(keys_dir, RETENTION).current()

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
        KeyStore(keys_dir, RETENTION).current()
    with pytest.raises(KeyStoreError, match="corrupt"):
        KeyStore(keys_dir, RETENTION).ensure(NOW)
    assert manifest.read_text() == content


def test_a_missing_pem_is_reported(keys_dir: Path) -> None:
    pem = next(keys_dir.glob("es-*.pem"))
    pem.unlink()

    with pytest.raises(KeyStoreError, match=f"{pem}.*missing"):
        KeyStore(keys_dir, RETENTION).current()


def test_a_pem_of_the_wrong_kind_is_reported(keys_dir: Path) -> None:
    rs_pem = next(keys_dir.glob("rs-*.pem"))
    es_pem = next(keys_dir.glob("es-*.pem"))
    os.replace(es_pem, rs_pem)

    with pytest.raises(KeyStoreError, match="RS256"):
        KeyStore(keys_dir, RETENTION).current()


def test_a_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="does not exist"):
        KeyStore(tmp_path / "nowhere", RETENTION).jwks(NOW)


def test_current_key_is_a_frozen_record_without_the_secret_in_its_repr(shared: KeyStore) -> None:
    key = shared.current("RS256")

    assert isinstance(key, SigningKey)
    assert "private_key" not in repr(key)
    with pytest.raises(AttributeError):
        key.kid = "other"  # type: ignore[misc]


# -- the verified-signature cache ----------------------------------------------------


@pytest.mark.parametrize("alg", SUPPORTED_ALGORITHMS)
def test_a_cached_verification_still_checks_expiry_audience_and_the_key(
        store: KeyStore, alg: str) -> None:
    token = store.sign(_claims(), alg=alg)
    assert store.verify(token, audience=CLIENT, issuer=ISSUER, now=NOW)["sub"] == "user-1"
    # Second use: answered from the cache, with the same rules.
    assert store.verify(token, audience=CLIENT, issuer=ISSUER, now=NOW)["sub"] == "user-1"
    with pytest.raises(jwt.ExpiredSignatureError):
        store.verify(token, audience=CLIENT, issuer=ISSUER, now=NOW + timedelta(seconds=301))
    with pytest.raises(jwt.InvalidAudienceError):
        store.verify(token, audience="someone-else", issuer=ISSUER, now=NOW)
    with pytest.raises(jwt.InvalidIssuerError):
        store.verify(token, audience=CLIENT, issuer="https://evil.example", now=NOW)
    # Once its key is no longer published, a cached token is refused like any other.
    store.rotate(NOW)
    gone = NOW + store.publish_window + timedelta(seconds=1)
    with pytest.raises(jwt.InvalidTokenError, match="unknown or retired key"):
        store.verify(token, audience=CLIENT, issuer=ISSUER, now=gone, verify_exp=False)


def test_the_cache_is_bounded_and_returns_copies(keys_dir: Path) -> None:
    store = KeyStore(keys_dir, RETENTION, reload_interval=0, verified_cache_size=8)
    tokens = [store.sign(_claims(jti=str(i)), alg="ES256") for i in range(20)]
    for token in tokens:
        claims = store.verify(token, audience=CLIENT, now=NOW)
        claims["sub"] = "mallory"  # a caller changing its copy changes nothing cached
    assert len(store._verified) <= 8
    assert store.verify(tokens[-1], audience=CLIENT, now=NOW)["sub"] == "user-1"


@pytest.mark.parametrize("spelling", ["padded", "junk in signature", "whitespace"])
def test_only_the_canonical_spelling_of_a_token_verifies(shared: KeyStore, spelling: str) -> None:
    token = shared.sign(_claims(), alg="ES256")
    head, body, sig = token.split(".")
    variant = {"padded": f"{head}.{body}.{sig}==", "junk in signature": f"{head}.{body}.{sig}!",
               "whitespace": f"{head}.{body}. {sig}"}[spelling]
    with pytest.raises(jwt.DecodeError):
        shared.verify(variant, audience=CLIENT, now=NOW)
