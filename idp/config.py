"""Every default of the provider, in one place.

Each key can be overridden by an environment variable of the same name prefixed
with ``IDP_`` (``IDP_ISSUER=https://id.example.com``) or by the mapping passed to
``create_app``. Values are validated once at startup so that a bad setting stops
the process with one clear line instead of failing on the first request.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import secrets
import string
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A setting is wrong; the message says which and how to fix it."""


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_SECONDS = 10 * 365 * 86400

# name -> (default, kind, help). Kinds: str, int, bool, duration, path.
SETTINGS: dict[str, tuple[object, str, str]] = {
    # -- where things live
    "DATABASE_URL": (None, "str", "SQLAlchemy URL; default a SQLite file instance/idp.db"),
    "INSTANCE_DIR": ("instance", "path", "Local state: SQLite file, generated secret key"),
    "KEYS_DIR": ("keys", "path", "Signing keys (0600 PEM files + keys.json); share it between nodes"),
    "ISSUER": ("http://localhost:5000", "str", "Issuer identifier: the public base URL, no trailing slash"),
    "SECRET_KEY": (None, "str", "Signs the cookies; 32 random bytes or more (43 base64 or 64 hex "
                                "characters); generated into INSTANCE_DIR/secret_key if unset"),
    # -- HTTP
    "INSECURE_COOKIES": (False, "bool", "Plain-HTTP cookies without __Host- prefix; loopback issuer only"),
    "TRUSTED_PROXIES": (0, "int", "Proxy hops whose X-Forwarded-For is believed (0-10)"),
    "GEOIP_DATABASE": (None, "str", "MaxMind-format .mmdb for city-level location"),
    # -- token lifetimes
    "ACCESS_TOKEN_LIFETIME": ("10m", "duration", "JWT access token lifetime (1 min - 1 h)"),
    "ID_TOKEN_LIFETIME": ("1h", "duration", "ID token lifetime (1 min - 24 h)"),
    "REFRESH_TOKEN_LIFETIME": ("720h", "duration", "Refresh token cap; never past its session's deadlines"),
    "CODE_LIFETIME": ("60s", "duration", "Authorization code lifetime (10 s - 10 min)"),
    "ACCESS_TOKEN_ALG": ("ES256", "str", "Algorithm of JWT access tokens: ES256 or RS256"),
    "DEVICE_CODE_LIFETIME": ("10m", "duration", "How long a device login waits for approval"),
    "DEVICE_POLL_INTERVAL": ("5s", "duration", "Minimum seconds between two device-code polls"),
    # -- sessions and policy defaults for new accounts
    "SESSION_DURATION": ("24h", "duration", "Default maximum session duration of a new account"),
    "IDLE_TIMEOUT": ("2h", "duration", "Default sign-out after inactivity of a new account"),
    "SESSION_DURATION_MIN": ("5m", "duration", "Lowest maximum session duration an admin may set"),
    "SESSION_DURATION_MAX": ("720h", "duration", "Highest maximum session duration an admin may set"),
    "IDLE_TIMEOUT_MIN": ("5m", "duration", "Lowest inactivity timeout an admin may set"),
    "IDLE_TIMEOUT_MAX": ("24h", "duration", "Highest inactivity timeout an admin may set"),
    "CONCURRENT_SESSIONS_MAX": (1000, "int", "Highest concurrent-session limit an admin may set"),
    "ACTIVITY_WRITE_INTERVAL": ("60s", "duration", "At most one last-active write per session per interval"),
    "SESSION_RETENTION": ("720h", "duration", "How long ended/expired sessions stay in history"),
    # -- back-channel logout
    "BACKCHANNEL_IMMEDIATE": (True, "bool", "Try each logout delivery right after the commit"),
    "BACKCHANNEL_TIMEOUT": ("2s", "duration", "Timeout of one back-channel logout call"),
    "BACKCHANNEL_RETRY_BASE": ("10s", "duration", "First retry delay; doubles each attempt"),
    "BACKCHANNEL_RETRY_MAX": ("1h", "duration", "Longest delay between two attempts"),
    "BACKCHANNEL_GIVE_UP": ("24h", "duration", "Stop retrying a delivery this long after the logout"),
    "LOGOUT_TOKEN_LIFETIME": ("2m", "duration", "Lifetime of a logout token (10 s - 10 min)"),
    # -- email (new-device notices); without IDP_SMTP_URL mail goes to INSTANCE_DIR/mail
    "SMTP_URL": (None, "str", "smtp://user:password@host:587 (STARTTLS), smtps://…:465 "
                 "(implicit TLS); unset: one .eml file per message in INSTANCE_DIR/mail"),
    "MAIL_FROM": (None, "str", "Sender of the provider's email; default "
                  "no-reply@<the issuer's host>"),
    "SMTP_TIMEOUT": ("10s", "duration", "Timeout of one SMTP conversation"),
    "MAIL_RETRY_BASE": ("30s", "duration", "First retry of an undelivered email; doubles each time"),
    "MAIL_RETRY_MAX": ("1h", "duration", "Longest delay between two attempts at an email"),
    "MAIL_GIVE_UP": ("72h", "duration", "Stop retrying an email this long after it was written"),
    "NOTICE_DELAY": ("15s", "duration", "A new-device notice is sent this long after the "
                     "sign-in, naming the apps it signed in to by then"),
    # -- abuse resistance (limits: Flask-Limiter's counters)
    "REDIS_URL": (None, "str", "Redis shared by all nodes (rate-limit and lockout counters)"),
    "RATELIMIT_STORAGE_URI": (None, "str", "Rate-limit and lockout counters; default IDP_REDIS_URL, "
                              "else a file every worker of the node shares"),
    "LOGIN_IP_LIMIT": ("30 per minute", "str", "Failed sign-ins per client IP (an attempt counts "
                       "while its password is checked; a right one is given back)"),
    "LOGIN_MAX_FAILURES": (5, "int", "Failed sign-ins per account before a temporary lockout"),
    "LOGIN_DELAY_AFTER": (2, "int", "Failed sign-ins per account after which each attempt waits "
                          "1, 2, 4 … s (at the failure limit: no delays)"),
    "LOGIN_LOCKOUT": ("15m", "duration", "Lockout window after too many failed sign-ins"),
    "REAUTHENTICATE_AFTER": ("5m", "duration", "Sensitive actions (end all sessions, change "
                             "the password or second factors) need an authentication at most this old"),
    "CLIENT_AUTH_FAILURES_PER_CLIENT": ("100 per minute", "str",
                                        "Failed client authentications per claimed client id"),
    "CLIENT_AUTH_FAILURES_PER_IP": ("100 per minute", "str",
                                    "Failed client authentications per client IP"),
    "TOKEN_RATE_LIMIT": ("", "str", "Token requests per authenticated client (empty: no cap)"),
    "INTROSPECTION_RATE_LIMIT": ("", "str",
                                 "Introspection calls per authenticated client (empty: no cap)"),
    "DEVICE_AUTHORIZATIONS_PER_IP": ("30 per minute", "str",
                                     "Device authorizations (POST /oauth/device) per client IP"),
    "DEVICE_AUTHORIZATIONS_PER_CLIENT": ("600 per minute", "str",
                                         "Device authorizations per client id"),
    "USER_CODE_FAILURES_PER_USER": ("10 per 10 minutes", "str",
                                    "Wrong user codes typed at /device per signed-in user"),
    "PASSKEY_CEREMONIES_PER_IP": ("60 per minute", "str",
                                  "Passkey ceremonies started (challenges issued) per client IP"),
    "RESETS_PER_ADDRESS": ("3 per hour", "str", "Password-reset requests per email address "
                           "(existing or not)"),
    "RESETS_PER_IP": ("20 per hour", "str", "Password-reset requests per client IP"),
    "USER_CODE_FAILURES_PER_IP": ("30 per 10 minutes", "str",
                                  "Wrong user codes typed at /device per client IP"),
    "RATE_LIMIT_SYNC": ("0.25s", "duration",
                        "With Redis: how often a node adds its request counts to the shared ones"),
    # -- passwords (argon2id). The default is OWASP's Password Storage Cheat Sheet baseline
    # (m=19 MiB, t=2, p=1): about 25 ms of one core per check, so sign-ins reach 15+ per
    # second per core. RFC 9106's m=64 MiB, t=3, p=4 costs 8 times as much. Hashes made
    # with other parameters are redone at their next sign-in.
    "ARGON2_TIME_COST": (2, "int", "argon2id iterations"),
    "ARGON2_MEMORY_COST": (19456, "int", "argon2id memory in KiB"),
    "ARGON2_PARALLELISM": (1, "int", "argon2id lanes"),
    "ARGON2_CONCURRENCY": (1, "int", "argon2id checks run at once per worker process, at a "
                           "lower CPU priority than requests; more sign-ins queue (1-16)"),
    # -- keys
    "KEYS_RELOAD_INTERVAL": (30, "int", "Seconds between checks for keys rotated by another node"),
    "JWKS_MAX_AGE": ("5m", "duration", "How long relying parties may cache the JWKS (its "
                     "Cache-Control max-age; 0 - 24 h); a key `idp rotate-keys` adds signs only "
                     "this plus KEYS_RELOAD_INTERVAL after it is published"),
    # -- server
    "WORKERS": (2, "int", "Default worker processes for `idp serve`"),
    "KEEPALIVE_REQUESTS": (100, "int", "Requests answered on one keep-alive connection before "
                           "`idp serve` closes it (so long-lived connections, a proxy's, move "
                           "between workers; 0: never)"),
    "ACCESS_LOG": (True, "bool", "One JSON access-log line per request (path without query)"),
}


def parse_duration(value: object) -> timedelta:
    """Accept seconds (``90``) or a number with a unit (``90s``, ``5m``, ``720h``, ``30d``)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0 <= value < MAX_DURATION_SECONDS:  # also refuses NaN
            raise ValueError(f"not a duration: {value!r}")
        return timedelta(seconds=value)
    text = str(value).strip().lower()
    match = re.fullmatch(r"(\d{1,12}(?:\.\d{1,6})?)\s*([smhd]?)", text)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use seconds or 90s, 5m, 720h, 30d)")
    number, unit = match.groups()
    seconds = float(number) * DURATION_UNITS[unit or "s"]
    if not seconds < MAX_DURATION_SECONDS:
        raise ValueError(f"duration too long: {value!r}")
    return timedelta(seconds=seconds)


def _parse(name: str, kind: str, value: object) -> object:
    if value is None:
        return None
    try:
        if kind == "int":
            return int(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if kind == "duration":
            return parse_duration(value)
        if kind == "path":
            return Path(value).expanduser().resolve()
        return str(value)
    except ValueError as exc:
        raise ConfigError(f"IDP_{name}: {exc}") from None


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(overrides: dict | None = None, environ: dict | None = None) -> dict:
    """Resolve every setting: overrides > IDP_* environment > default; then validate."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    config: dict[str, object] = {}
    for name, (default, kind, _help) in SETTINGS.items():
        if name in overrides:
            raw = overrides[name]
        elif f"IDP_{name}" in environ:
            raw = environ[f"IDP_{name}"]
        else:
            raw = default
        config[name] = _parse(name, kind, raw)
    # Keys that are not IDP_ settings (test hooks, Flask options) pass through.
    for key, value in overrides.items():
        config.setdefault(key, value)
    _validate(config)
    return config


#: IDP_SECRET_KEY signs the cookies (and derives email-link secrets): 32 random bytes.
MIN_SECRET_BITS = 256
_ALPHABETS = ((set(string.hexdigits), 4.0),
              (set(string.ascii_letters + string.digits + "-_+/="), 6.0),
              (set(string.printable) - set(string.whitespace[1:]), math.log2(95)))


def secret_bits(key: str) -> int:
    """About how many bits a key carries if it was drawn at random from the smallest usual
    alphabet holding its characters (hex, base64, printable ASCII; else its UTF-8 bytes).
    A key that repeats itself (few distinct characters for its length) counts for nothing:
    random keys use most of their alphabet."""
    chars = set(key)
    per_char = next((bits for alphabet, bits in _ALPHABETS if chars <= alphabet), None)
    length = len(key) if per_char is not None else len(key.encode())
    per_char = per_char or 8.0
    if len(chars) < min(length, 2 ** per_char) / 4:
        return 0
    return int(length * per_char)


def _bounded(config: dict, name: str, low: timedelta, high: timedelta) -> None:
    value = config[name]
    if not low <= value <= high:
        raise ConfigError(f"IDP_{name} must be between {low} and {high}, got {value}")


def _validate(config: dict) -> None:
    issuer = config["ISSUER"].rstrip("/")
    parts = urlsplit(issuer)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"IDP_ISSUER must be an http(s) URL without query or fragment: {issuer!r}")
    if parts.scheme == "http" and not is_loopback_url(issuer):
        raise ConfigError("IDP_ISSUER must use https unless it is a loopback address")
    config["ISSUER"] = issuer
    if config["INSECURE_COOKIES"] and not is_loopback_url(issuer):
        raise ConfigError(
            "IDP_INSECURE_COOKIES=1 is for localhost development only; "
            f"the issuer {issuer} is not a loopback address. Unset it and serve over HTTPS."
        )
    if parts.scheme == "http" and not config["INSECURE_COOKIES"]:
        # Secure cookies are never sent over plain HTTP: a loopback http issuer needs
        # insecure cookies to work at all, so development turns them on by itself.
        config["INSECURE_COOKIES"] = True
    if not config["RATELIMIT_STORAGE_URI"]:
        config["RATELIMIT_STORAGE_URI"] = config["REDIS_URL"] or ""
    if config["RATELIMIT_STORAGE_URI"].startswith(("memory:", "async+memory:")):
        raise ConfigError(
            "IDP_RATELIMIT_STORAGE_URI=memory:// would count in each worker process apart "
            "(4 workers, 4 times the allowed attempts). Unset it: the counters then live in "
            "a file every worker of this node shares (IDP_INSTANCE_DIR/counters.db), or set "
            "IDP_REDIS_URL to share them between nodes.")
    if not 0 <= config["TRUSTED_PROXIES"] <= 10:
        raise ConfigError("IDP_TRUSTED_PROXIES must be between 0 and 10")
    if config["ACCESS_TOKEN_ALG"] not in {"RS256", "ES256"}:
        raise ConfigError("IDP_ACCESS_TOKEN_ALG must be RS256 or ES256")
    if config["SECRET_KEY"] and secret_bits(config["SECRET_KEY"]) < MIN_SECRET_BITS:
        raise ConfigError(
            f"IDP_SECRET_KEY is too weak (about {secret_bits(config['SECRET_KEY'])} bits; "
            f"{MIN_SECRET_BITS} needed): it signs the cookies, so a guessable one lets anyone "
            "forge them. Use 32 random bytes: python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))', or unset it to have one generated")
    _bounded(config, "ACCESS_TOKEN_LIFETIME", timedelta(minutes=1), timedelta(hours=1))
    _bounded(config, "LOGOUT_TOKEN_LIFETIME", timedelta(seconds=10), timedelta(minutes=10))
    _bounded(config, "ID_TOKEN_LIFETIME", timedelta(minutes=1), timedelta(hours=24))
    _bounded(config, "CODE_LIFETIME", timedelta(seconds=10), timedelta(minutes=10))
    _bounded(config, "REAUTHENTICATE_AFTER", timedelta(seconds=1), timedelta(hours=1))
    _bounded(config, "REFRESH_TOKEN_LIFETIME", timedelta(minutes=5), timedelta(days=365))
    if config["SESSION_DURATION_MIN"] > config["SESSION_DURATION_MAX"]:
        raise ConfigError("IDP_SESSION_DURATION_MIN is above IDP_SESSION_DURATION_MAX")
    if config["IDLE_TIMEOUT_MIN"] > config["IDLE_TIMEOUT_MAX"]:
        raise ConfigError("IDP_IDLE_TIMEOUT_MIN is above IDP_IDLE_TIMEOUT_MAX")
    _bounded(
        config, "SESSION_DURATION", config["SESSION_DURATION_MIN"], config["SESSION_DURATION_MAX"]
    )
    _bounded(config, "IDLE_TIMEOUT", config["IDLE_TIMEOUT_MIN"], config["IDLE_TIMEOUT_MAX"])
    if config["IDLE_TIMEOUT"] > config["SESSION_DURATION"]:
        raise ConfigError("IDP_IDLE_TIMEOUT must not be above IDP_SESSION_DURATION")
    if not timedelta(seconds=1) <= config["ACTIVITY_WRITE_INTERVAL"] < config["IDLE_TIMEOUT_MIN"]:
        raise ConfigError(
            "IDP_ACTIVITY_WRITE_INTERVAL must be at least 1s and below IDP_IDLE_TIMEOUT_MIN, "
            "or active users would be signed out for inactivity"
        )
    _bounded(config, "RATE_LIMIT_SYNC", timedelta(0), timedelta(seconds=60))
    _bounded(config, "JWKS_MAX_AGE", timedelta(0), timedelta(hours=24))
    if config["SMTP_URL"]:
        from .mail import Smtp  # the URL's own checks, said at start rather than at first mail

        try:
            Smtp.from_url(config["SMTP_URL"], 1)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if not config["MAIL_FROM"]:
        config["MAIL_FROM"] = f"no-reply@{parts.hostname}"
    _bounded(config, "NOTICE_DELAY", timedelta(0), timedelta(minutes=1))
    if not 1 <= config["ARGON2_CONCURRENCY"] <= 16:
        raise ConfigError("IDP_ARGON2_CONCURRENCY must be between 1 and 16")
    if not (config["KEEPALIVE_REQUESTS"] == 0 or 10 <= config["KEEPALIVE_REQUESTS"] <= 100000):
        raise ConfigError("IDP_KEEPALIVE_REQUESTS must be 0 (never close) or 10-100000")
    if not 1 <= config["LOGIN_MAX_FAILURES"] <= 100:
        raise ConfigError("IDP_LOGIN_MAX_FAILURES must be between 1 and 100")
    if not 1 <= config["LOGIN_DELAY_AFTER"] <= config["LOGIN_MAX_FAILURES"]:
        raise ConfigError("IDP_LOGIN_DELAY_AFTER must be between 1 and IDP_LOGIN_MAX_FAILURES")
    for name in LIMIT_SETTINGS:
        try:
            from limits import parse_many

            if config[name].strip():
                parse_many(config[name])
            elif name not in OPTIONAL_LIMITS:
                raise ValueError(name)
        except ValueError:
            raise ConfigError(f"IDP_{name}: not a rate like '30 per minute'") from None
    if not 1 <= config["CONCURRENT_SESSIONS_MAX"] <= 100000:
        raise ConfigError("IDP_CONCURRENT_SESSIONS_MAX must be between 1 and 100000")
    if config["DATABASE_URL"] is None:
        config["DATABASE_URL"] = f"sqlite:///{config['INSTANCE_DIR'] / 'idp.db'}"


#: Every limit setting; those an operator may leave empty (no cap) in OPTIONAL_LIMITS.
LIMIT_SETTINGS = ("LOGIN_IP_LIMIT", "CLIENT_AUTH_FAILURES_PER_CLIENT", "CLIENT_AUTH_FAILURES_PER_IP",
                  "TOKEN_RATE_LIMIT", "INTROSPECTION_RATE_LIMIT", "DEVICE_AUTHORIZATIONS_PER_IP",
                  "DEVICE_AUTHORIZATIONS_PER_CLIENT", "USER_CODE_FAILURES_PER_USER",
                  "USER_CODE_FAILURES_PER_IP", "PASSKEY_CEREMONIES_PER_IP", "RESETS_PER_ADDRESS",
                  "RESETS_PER_IP")
OPTIONAL_LIMITS = ("TOKEN_RATE_LIMIT", "INTROSPECTION_RATE_LIMIT")


def ensure_secret_key(config: dict) -> str:
    """Use IDP_SECRET_KEY, or generate one into the instance folder and keep it."""
    if config.get("SECRET_KEY"):
        return config["SECRET_KEY"]
    instance: Path = config["INSTANCE_DIR"]
    instance.mkdir(parents=True, exist_ok=True)
    path = instance / "secret_key"
    if path.exists():
        existing = path.read_text().strip()
        if len(existing) >= 32:
            return existing
    # Write to a temporary file and rename: a crash never leaves an empty key behind,
    # and concurrent first starts agree on whichever key landed first.
    temp = instance / f".secret_key.{os.getpid()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48))
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temp, path)
    except FileExistsError:
        if len(path.read_text().strip()) < 32:
            os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path.read_text().strip()


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) rows for the README and `idp config`."""
    rows = []
    for name, (default, _kind, help_text) in SETTINGS.items():
        rows.append((f"IDP_{name}", "" if default is None else str(default), help_text))
    return rows
