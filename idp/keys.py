"""The provider's signing keys: kept on disk, rotated, published as the JWKS.

This module decides which key signs at a given moment, which keys a token may be
verified with, and which public keys relying parties see; the JOSE work itself
(signing and verifying with those keys) is ``idp.signing``'s, on joserfc.

Keys live in a directory (``keys/`` by default, git-ignored) that several nodes
may share: one unencrypted PKCS8 PEM per key (mode 0600) and a ``keys.json``
manifest that says which key is current and when the others were retired. Writes
are atomic and serialised with ``flock`` so two processes starting or rotating
at once cannot corrupt the directory; every node notices a rotation done by
another by re-checking the manifest's stat at most every ``reload_interval``
seconds, so the hot paths (``current``/``published_key``/``jwks_json``) never touch disk.

A key is published before it signs: ``rotate`` adds keys that every JWKS lists at
once but that sign only from ``signs_from``, one JWKS cache period (``jwks_max_age``,
the ``Cache-Control: max-age`` of the JWKS endpoint) plus ``reload_interval`` later,
so a relying party whose cached JWKS predates the rotation has refetched it before
it meets a token signed with the new key. Until then the old key keeps signing; it
is retired (``retired_at``) when the new one takes over, and stays published while
a token it signed may still be alive: ``retention`` (the longest token lifetime)
plus ``reload_interval``.

Pure domain code: no Flask, and no reading of the clock. Callers pass ``now``
(timezone-aware) so tests move time instead of sleeping; only the reload
throttle uses ``time.monotonic``, which is not a date.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey

SUPPORTED_ALGORITHMS = ("RS256", "ES256")

MANIFEST_NAME = "keys.json"
LOCK_NAME = ".lock"

_MAX_FILE_SIZE = 1024 * 1024
_KID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_KID_PREFIX = {"RS256": "rs", "ES256": "es"}
_RSA_BITS = 2048
# The only JWK members we ever publish: public parts, by construction never "d".
_PUBLIC_JWK_MEMBERS = ("kty", "crv", "x", "y", "n", "e")

logger = logging.getLogger(__name__)


class KeyStoreError(Exception):
    """Raised with a one-line, user-facing message (missing/corrupt dir, bad permissions...)."""


@dataclass(frozen=True)
class SigningKey:
    """One key pair with its lifecycle.

    It is published from ``created_at``, signs from ``signs_from`` until a newer key
    of its algorithm takes over at ``retired_at`` (None until a rotation sets it),
    and stays published until ``retired_at`` plus the store's ``publish_window``.
    ``jwk`` (the private key, to sign) and ``public_jwk`` are joserfc's objects,
    built once per load so no call re-parses a key.
    """

    kid: str
    alg: str
    private_key: Any = field(repr=False, compare=False)
    created_at: datetime
    retired_at: datetime | None
    signs_from: datetime
    jwk: Any = field(repr=False, compare=False)
    public_jwk: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class _Entry:
    """One manifest record: what keys.json says, before the PEM is read."""

    kid: str
    alg: str
    created_at: datetime
    retired_at: datetime | None
    signs_from: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "created_at": self.created_at.isoformat(),
            "signs_from": self.signs_from.isoformat(),
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
        }


@dataclass(frozen=True)
class _Snapshot:
    """Everything loaded from disk at one moment; replaced whole, never mutated."""

    keys: tuple[SigningKey, ...]  # newest first
    by_kid: dict[str, SigningKey]
    jwk: dict[str, dict[str, str]]  # kid -> public JWK, for the JWKS
    schedule: dict[str, tuple[SigningKey, ...]]  # alg -> its keys, latest signs_from first
    stamp: tuple[int, int, int]  # (inode, mtime_ns, size) of keys.json when read


class KeyStore:
    """The signing keys in one directory, cached in memory and reloaded when it changes."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        retention: timedelta,
        reload_interval: float = 30.0,
        jwks_max_age: timedelta = timedelta(0),
    ):
        if retention < timedelta(0):
            raise ValueError("retention must not be negative")
        if reload_interval < 0:
            raise ValueError("reload_interval must not be negative")
        if jwks_max_age < timedelta(0):
            raise ValueError("jwks_max_age must not be negative")
        self.directory = Path(directory)
        self.retention = retention
        self.reload_interval = float(reload_interval)
        # How long a retired key stays published (see the module docstring).
        self.publish_window = retention + timedelta(seconds=self.reload_interval)
        # How long a rotated-in key is only published before it signs: every node lists
        # it within reload_interval, and a JWKS cached just before that expires within
        # jwks_max_age.
        self.signing_delay = jwks_max_age + timedelta(seconds=self.reload_interval)
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._next_check = 0.0
        self._key_cache: dict[str, Any] = {}
        self._jwks_cache: tuple[_Snapshot, tuple[str, ...], bytes] | None = None

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_NAME

    # -- changing the keys --------------------------------------------------------

    def ensure(self, now: datetime) -> bool:
        """Make sure every supported algorithm has a key; True if any was generated.

        Called at every start, by every node, possibly at the same moment: the
        exclusive lock makes exactly one of them generate. A key made here signs at
        once: there is no other key of its algorithm to sign meanwhile.
        """
        now = _utc(now)
        self._make_dir()
        with self._exclusive_lock():
            entries = self._read_entries()
            missing = [
                alg
                for alg in SUPPORTED_ALGORITHMS
                if not any(e.alg == alg and e.retired_at is None for e in entries)
            ]
            if missing:
                taken = {e.kid for e in entries}
                new = [self._generate(alg, now, taken, signs_from=now) for alg in missing]
                self._write_manifest(entries + new)
                self._fsync_dir()
            snapshot = self._load(locked=True)
        self._install(snapshot)
        return bool(missing)

    def rotate(self, now: datetime) -> list[SigningKey]:
        """Publish new keys now that sign from ``now + signing_delay``; the keys signing
        until then retire at that moment; drop keys nothing can need any more.

        Order matters for the other nodes: new PEMs first, then the manifest that
        names them, and only then deletion of pruned PEMs.
        """
        now = _utc(now)
        signs_from = now + self.signing_delay
        self._make_dir()
        with self._exclusive_lock():
            kept: list[_Entry] = []
            pruned: list[_Entry] = []
            for entry in self._read_entries():
                # A key already retiring (an earlier rotation still pending) keeps its date.
                retired_at = entry.retired_at or signs_from
                record = _Entry(entry.kid, entry.alg, entry.created_at, retired_at, entry.signs_from)
                if retired_at + self.publish_window < now:
                    pruned.append(record)
                else:
                    kept.append(record)
            taken = {e.kid for e in kept} | {e.kid for e in pruned}
            new = [self._generate(alg, now, taken, signs_from=signs_from)
                   for alg in SUPPORTED_ALGORITHMS]
            self._write_manifest(kept + new)
            for entry in pruned:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._pem_path(entry.kid))
                self._key_cache.pop(entry.kid, None)
            self._fsync_dir()
            snapshot = self._load(locked=True)
        self._install(snapshot)
        return [snapshot.by_kid[e.kid] for e in new]

    # -- using the keys ------------------------------------------------------------

    def current(self, alg: str = "RS256", *, now: datetime) -> SigningKey:
        """The key that signs tokens of this algorithm at ``now``: of the keys whose
        ``signs_from`` has come, the latest to start. Should the clock stand before
        every key's start (a node whose clock lags the rotating one), the first to start."""
        if alg not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"unsupported signing algorithm {alg!r}")
        now = _utc(now)
        schedule = self._maybe_reload().schedule.get(alg)
        if not schedule:
            raise KeyStoreError(f"no {alg} signing key in {self.manifest_path}; run: idp rotate-keys")
        for key in schedule:
            if key.signs_from <= now:
                return key
        return schedule[-1]

    def published_key(self, kid: str, now: datetime, *, look_again: bool = True) -> SigningKey | None:
        """The key named ``kid`` if the JWKS publishes it at ``now``, else None.

        An unknown kid makes the store re-read the directory at once (``look_again``):
        maybe another node rotated since our last check.
        """
        now = _utc(now)
        key = self._published_key(self._maybe_reload(), kid, now)
        if key is None and look_again:
            key = self._published_key(self._maybe_reload(force=True), kid, now)
        return key

    def published(self, now: datetime) -> list[SigningKey]:
        """Keys relying parties may need: those signing or about to, and recently retired ones."""
        return self._published(self._maybe_reload(), _utc(now))

    def jwks(self, now: datetime) -> dict[str, list[dict[str, str]]]:
        """The JWK Set document: public members only, with kid, alg and use."""
        snapshot = self._maybe_reload()
        return {"keys": [dict(snapshot.jwk[k.kid]) for k in self._published(snapshot, _utc(now))]}

    def jwks_json(self, now: datetime) -> bytes:
        """The JWKS serialised once per change of the published set, for the endpoint."""
        snapshot = self._maybe_reload()
        published = self._published(snapshot, _utc(now))
        kids = tuple(k.kid for k in published)
        cached = self._jwks_cache
        if cached is not None and cached[0] is snapshot and cached[1] == kids:
            return cached[2]
        body = json.dumps({"keys": [snapshot.jwk[kid] for kid in kids]}, separators=(",", ":")).encode()
        self._jwks_cache = (snapshot, kids, body)
        return body

    def _published_key(self, snapshot: _Snapshot, kid: str, now: datetime) -> SigningKey | None:
        key = snapshot.by_kid.get(kid)
        if key is None or not self._is_published(key, now):
            return None
        return key

    def _is_published(self, key: SigningKey, now: datetime) -> bool:
        return key.retired_at is None or now <= key.retired_at + self.publish_window

    def _published(self, snapshot: _Snapshot, now: datetime) -> list[SigningKey]:
        return [k for k in snapshot.keys if self._is_published(k, now)]

    # -- loading -------------------------------------------------------------------

    def _maybe_reload(self, force: bool = False) -> _Snapshot:
        """The cached keys, re-reading the directory only when keys.json changed.

        A failed reload keeps serving the keys we have (and logs), so a bad edit
        on a shared directory does not take every running node down; a store
        that never loaded raises instead.
        """
        snapshot = self._snapshot
        if snapshot is not None and not force and time.monotonic() < self._next_check:
            return snapshot
        with self._lock:
            snapshot = self._snapshot
            if snapshot is not None and not force and time.monotonic() < self._next_check:
                return snapshot
            try:
                if snapshot is not None and _stamp(os.stat(self.manifest_path)) == snapshot.stamp:
                    self._next_check = time.monotonic() + self.reload_interval
                    return snapshot
                snapshot = self._load(locked=False)
            except (KeyStoreError, OSError) as exc:
                if self._snapshot is None:
                    if isinstance(exc, KeyStoreError):
                        raise
                    raise KeyStoreError(f"cannot read {self.manifest_path}: {exc}") from exc
                logger.warning("keeping the signing keys loaded earlier: %s", exc)
                self._next_check = time.monotonic() + self.reload_interval
                return self._snapshot
            self._snapshot = snapshot
            self._next_check = time.monotonic() + self.reload_interval
            return snapshot

    def _install(self, snapshot: _Snapshot) -> None:
        with self._lock:
            self._snapshot = snapshot
            self._next_check = time.monotonic() + self.reload_interval

    def _load(self, *, locked: bool) -> _Snapshot:
        """Read the manifest and any PEM not already cached; does not install."""
        if not self.directory.is_dir():
            raise KeyStoreError(
                f"keys directory {self.directory} does not exist; "
                "check the KEYS_DIR setting or start the server once to create it"
            )
        with contextlib.nullcontext() if locked else self._shared_lock():
            try:
                raw, st = _read_private_file(self.manifest_path)
            except FileNotFoundError:
                raise KeyStoreError(
                    f"{self.manifest_path} is missing; start the server once to create the keys"
                ) from None
            entries = _parse_manifest(raw, self.manifest_path)
            cache: dict[str, Any] = {}
            keys: list[SigningKey] = []
            for entry in entries:
                private_key = self._key_cache.get(entry.kid)
                if private_key is None:
                    private_key = _load_pem(self._pem_path(entry.kid), entry.alg)
                cache[entry.kid] = private_key
                joserfc_key = RSAKey if entry.alg == "RS256" else ECKey
                keys.append(SigningKey(
                    entry.kid, entry.alg, private_key, entry.created_at, entry.retired_at,
                    entry.signs_from, jwk=joserfc_key.import_key(private_key),
                    public_jwk=joserfc_key.import_key(private_key.public_key())))
        self._key_cache = cache
        order = {k.kid: i for i, k in enumerate(keys)}
        keys.sort(key=lambda k: (k.created_at, order[k.kid]), reverse=True)
        schedule = {
            alg: tuple(sorted((k for k in keys if k.alg == alg),
                              key=lambda k: (k.signs_from, k.created_at, order[k.kid]), reverse=True))
            for alg in SUPPORTED_ALGORITHMS
        }
        return _Snapshot(
            keys=tuple(keys),
            by_kid={k.kid: k for k in keys},
            jwk={k.kid: _public_jwk(k.kid, k.alg, k.public_jwk) for k in keys},
            schedule=schedule,
            stamp=_stamp(st),
        )

    def _read_entries(self) -> list[_Entry]:
        """The manifest as on disk now (under the exclusive lock); empty if there is none."""
        try:
            raw, _ = _read_private_file(self.manifest_path)
        except FileNotFoundError:
            return []
        return _parse_manifest(raw, self.manifest_path)

    # -- writing -------------------------------------------------------------------

    def _generate(self, alg: str, now: datetime, taken: set[str], *, signs_from: datetime) -> _Entry:
        """A new key pair written to its PEM; ``taken`` gains its kid."""
        private_key: Any
        if alg == "RS256":
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
        else:
            private_key = ec.generate_private_key(ec.SECP256R1())
        kid = f"{_KID_PREFIX[alg]}-{now:%Y%m%d}-{secrets.token_hex(4)}"
        while kid in taken:
            kid = f"{_KID_PREFIX[alg]}-{now:%Y%m%d}-{secrets.token_hex(4)}"
        taken.add(kid)
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private_file(self._pem_path(kid), pem)
        self._key_cache[kid] = private_key
        return _Entry(kid, alg, now, None, signs_from)

    def _write_manifest(self, entries: list[_Entry]) -> None:
        document = {"keys": [e.to_json() for e in entries]}
        _write_private_file(self.manifest_path, (json.dumps(document, indent=2) + "\n").encode())

    def _make_dir(self) -> None:
        try:
            os.makedirs(self.directory, mode=0o700)
        except FileExistsError:
            if not self.directory.is_dir():
                raise KeyStoreError(f"{self.directory} exists but is not a directory") from None
            return
        except OSError as exc:
            raise KeyStoreError(f"cannot create keys directory {self.directory}: {exc.strerror}") from exc
        os.chmod(self.directory, 0o700)  # makedirs' mode is filtered by the umask

    def _fsync_dir(self) -> None:
        """Make the renames durable, so a crash cannot leave a manifest naming lost PEMs."""
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _exclusive_lock(self) -> Iterator[None]:
        """Serialise writers across threads and processes sharing the directory."""
        path = self.directory / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise KeyStoreError(f"cannot open lock file {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _shared_lock(self) -> Iterator[None]:
        """Keep a writer from pruning a PEM between our manifest read and PEM read.

        Best effort: a read-only deployment without a lock file has no writers.
        """
        try:
            fd = os.open(self.directory / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _pem_path(self, kid: str) -> Path:
        return self.directory / f"{kid}.pem"


# -- helpers ---------------------------------------------------------------------


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    # The inode catches an os.replace that kept size and mtime (coarse timestamps).
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _public_jwk(kid: str, alg: str, public_key: RSAKey | ECKey) -> dict[str, str]:
    """joserfc's JWK of the *public* key, filtered to public members anyway."""
    exported = public_key.as_dict(private=False)
    jwk = {m: exported[m] for m in _PUBLIC_JWK_MEMBERS if m in exported}
    jwk.update(kid=kid, alg=alg, use="sig")
    return jwk


def _read_private_file(path: Path) -> tuple[bytes, os.stat_result]:
    """A key-material file's bytes, refusing one that others could read.

    FileNotFoundError passes through (the caller knows whether that is fine);
    everything else becomes a KeyStoreError that says how to fix it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyStoreError(f"cannot open {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)  # of the file we opened, not of whatever the path names later
        if not stat.S_ISREG(st.st_mode):
            raise KeyStoreError(f"{path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyStoreError(
                f"{path} is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"fix it with: chmod 600 {path}"
            )
        if st.st_size > _MAX_FILE_SIZE:
            raise KeyStoreError(f"{path} is too large to be a key file")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(_MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return data, st


def _write_private_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600 from the first byte."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask may have removed bits we need
            with os.fdopen(os.dup(fd), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KeyStoreError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _parse_manifest(raw: bytes, path: Path) -> list[_Entry]:
    def corrupt(why: str) -> KeyStoreError:
        return KeyStoreError(f"{path} is corrupt ({why}); restore it from a backup")

    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise corrupt("not valid JSON") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise corrupt('expected {"keys": [...]}')
    entries: list[_Entry] = []
    seen: set[str] = set()
    for i, item in enumerate(document["keys"]):
        if not isinstance(item, dict):
            raise corrupt(f"keys[{i}] is not an object")
        kid, alg = item.get("kid"), item.get("alg")
        # The kid becomes a file name: no path separators, no dots.
        if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
            raise corrupt(f"keys[{i}] has an invalid kid")
        if kid in seen:
            raise corrupt(f"kid {kid} appears twice")
        seen.add(kid)
        if alg not in SUPPORTED_ALGORITHMS:
            raise corrupt(f"key {kid} has unsupported alg {alg!r}")
        created_at = _parse_time(item.get("created_at"))
        if created_at is None:
            raise corrupt(f"key {kid} has no valid created_at")
        retired_at = None
        if item.get("retired_at") is not None:
            retired_at = _parse_time(item["retired_at"])
            if retired_at is None:
                raise corrupt(f"key {kid} has an invalid retired_at")
        signs_from = created_at  # manifests written before keys were published ahead
        if item.get("signs_from") is not None:
            signs_from = _parse_time(item["signs_from"])
            if signs_from is None:
                raise corrupt(f"key {kid} has an invalid signs_from")
        entries.append(_Entry(kid, alg, created_at, retired_at, signs_from))
    return entries


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.astimezone(UTC)


def _load_pem(path: Path, alg: str) -> Any:
    """The private key in ``path``, checked to be the kind ``alg`` needs."""
    try:
        data, _ = _read_private_file(path)
    except FileNotFoundError:
        raise KeyStoreError(
            f"{path} is listed in {MANIFEST_NAME} but missing; restore it from a backup"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyStoreError(f"{path} is not an unencrypted PEM private key") from exc
    if alg == "RS256":
        ok = isinstance(key, rsa.RSAPrivateKey) and key.key_size >= _RSA_BITS
    else:
        ok = isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    if not ok:
        raise KeyStoreError(f"{path} does not hold a key usable for {alg}")
    return key
