"""Settings: defaults, IDP_* overrides, durations, and the one clear line a bad setting gives.

Every test passes ``environ=`` so the developer's own environment never leaks in.
"""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest

from idp import config
from idp.config import ConfigError, ensure_secret_key, parse_duration, secret_bits
from tests.conftest import SECRET_KEY


def load(environ: dict | None = None, **overrides) -> dict:
    return config.load(overrides, environ=environ or {})


# -- defaults and overrides ---------------------------------------------------------------


def test_defaults_give_a_working_local_development_setup():
    settings = load()
    assert settings["ISSUER"] == "http://localhost:5000"
    assert settings["SESSION_DURATION"] == timedelta(hours=24)
    assert settings["IDLE_TIMEOUT"] == timedelta(hours=2)
    assert settings["ACCESS_TOKEN_LIFETIME"] == timedelta(minutes=10)
    assert settings["CODE_LIFETIME"] == timedelta(seconds=60)
    assert settings["SESSION_RETENTION"] == timedelta(days=30)
    assert settings["ACTIVITY_WRITE_INTERVAL"] == timedelta(seconds=60)
    assert settings["CONCURRENT_SESSIONS_MAX"] == 1000
    assert settings["ACCESS_TOKEN_ALG"] == "ES256"
    assert settings["TRUSTED_PROXIES"] == 0


def test_every_setting_is_documented_with_its_idp_variable_and_default():
    rows = {name: (default, meaning) for name, default, meaning in config.describe()}
    assert set(rows) == {f"IDP_{name}" for name in config.SETTINGS}
    assert rows["IDP_SESSION_DURATION"][0] == "24h"
    assert all(meaning for _default, meaning in rows.values())


def test_idp_environment_variables_override_the_defaults():
    settings = load(
        {
            "IDP_ISSUER": "https://id.example.com",
            "IDP_SESSION_DURATION": "48h",
            "IDP_IDLE_TIMEOUT": "30m",
            "IDP_TRUSTED_PROXIES": "2",
            "IDP_ACCESS_TOKEN_ALG": "RS256",
        }
    )
    assert settings["ISSUER"] == "https://id.example.com"
    assert settings["SESSION_DURATION"] == timedelta(hours=48)
    assert settings["IDLE_TIMEOUT"] == timedelta(minutes=30)
    assert settings["TRUSTED_PROXIES"] == 2
    assert settings["ACCESS_TOKEN_ALG"] == "RS256"
    assert settings["INSECURE_COOKIES"] is False


def test_variables_without_the_idp_prefix_are_ignored():
    settings = load({"ISSUER": "https://wrong.example.com", "SESSION_DURATION": "1h"})
    assert settings["ISSUER"] == "http://localhost:5000"
    assert settings["SESSION_DURATION"] == timedelta(hours=24)


def test_explicit_overrides_win_over_the_environment():
    settings = load({"IDP_SESSION_DURATION": "48h"}, SESSION_DURATION="12h")
    assert settings["SESSION_DURATION"] == timedelta(hours=12)


def test_trailing_slash_of_the_issuer_is_dropped():
    assert load({"IDP_ISSUER": "https://id.example.com/"})["ISSUER"] == "https://id.example.com"


@pytest.mark.parametrize("text", ["1", "true", "YES", "on"])
def test_boolean_settings_accept_the_usual_spellings_of_true(text):
    assert load({"IDP_INSECURE_COOKIES": text})["INSECURE_COOKIES"] is True


def test_a_junk_boolean_names_the_variable():
    with pytest.raises(ConfigError, match="IDP_INSECURE_COOKIES"):
        load({"IDP_INSECURE_COOKIES": "maybe"})


def test_a_junk_integer_names_the_variable():
    with pytest.raises(ConfigError, match="IDP_TRUSTED_PROXIES"):
        load({"IDP_TRUSTED_PROXIES": "two"})


def test_counting_in_each_process_apart_is_refused_with_what_to_do():
    with pytest.raises(ConfigError, match=r"memory:// would count in each worker process apart.*"
                                          r"Unset it"):
        load({"IDP_RATELIMIT_STORAGE_URI": "memory://"})
    assert load({})["RATELIMIT_STORAGE_URI"] == ""  # the node's shared counters file
    assert load({"IDP_REDIS_URL": "redis://r:6379/0"})["RATELIMIT_STORAGE_URI"] == \
        "redis://r:6379/0"


def test_limits_must_be_rates_and_only_the_operator_caps_may_be_empty():
    assert load({})["TOKEN_RATE_LIMIT"] == ""
    with pytest.raises(ConfigError, match="IDP_LOGIN_IP_LIMIT"):
        load({"IDP_LOGIN_IP_LIMIT": ""})
    with pytest.raises(ConfigError, match="IDP_CLIENT_AUTH_FAILURES_PER_IP"):
        load({"IDP_CLIENT_AUTH_FAILURES_PER_IP": "lots"})


# -- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        ("720h", timedelta(hours=720)),
        ("30d", timedelta(days=30)),
        ("90", timedelta(seconds=90)),
        (" 2H ", timedelta(hours=2)),
        ("1.5h", timedelta(minutes=90)),
        (45, timedelta(seconds=45)),
        (timedelta(minutes=3), timedelta(minutes=3)),
    ],
)
def test_durations_are_seconds_or_a_number_with_a_unit(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("junk", ["", "soon", "5 minutes", "5w", "-5m", "h", "1h30m", "0x10", True])
def test_junk_durations_are_rejected_with_an_example_of_the_format(junk):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(junk)


def test_a_junk_duration_in_the_environment_stops_startup_naming_the_variable():
    with pytest.raises(ConfigError, match=r"IDP_IDLE_TIMEOUT: not a duration: 'two hours'"):
        load({"IDP_IDLE_TIMEOUT": "two hours"})


# -- issuer, HTTPS and cookies --------------------------------------------------------------


def test_insecure_cookies_are_refused_for_a_public_issuer_with_a_clear_message():
    with pytest.raises(ConfigError) as caught:
        load({"IDP_ISSUER": "https://id.example.com", "IDP_INSECURE_COOKIES": "1"})
    message = str(caught.value)
    assert "IDP_INSECURE_COOKIES" in message
    assert "https://id.example.com" in message
    assert "loopback" in message or "localhost" in message


@pytest.mark.parametrize(
    "issuer", ["http://127.0.0.1:5000", "http://localhost:8080", "http://[::1]:5000", "http://127.0.0.2"]
)
def test_a_plain_http_loopback_issuer_turns_insecure_cookies_on_by_itself(issuer):
    settings = load({"IDP_ISSUER": issuer})
    assert settings["INSECURE_COOKIES"] is True


def test_an_https_issuer_keeps_secure_cookies():
    assert load({"IDP_ISSUER": "https://localhost:8443"})["INSECURE_COOKIES"] is False
    assert load({"IDP_ISSUER": "https://id.example.com"})["INSECURE_COOKIES"] is False


@pytest.mark.parametrize(
    "issuer", ["http://id.example.com", "http://192.168.1.10:5000", "http://localhost.example.com"]
)
def test_a_non_loopback_issuer_must_use_https(issuer):
    with pytest.raises(ConfigError, match="IDP_ISSUER must use https"):
        load({"IDP_ISSUER": issuer})


@pytest.mark.parametrize(
    "issuer", ["ftp://id.example.com", "https://", "https://id.example.com?x=1", "https://id.example.com#f"]
)
def test_an_issuer_that_is_not_a_plain_https_url_is_refused(issuer):
    with pytest.raises(ConfigError, match="IDP_ISSUER"):
        load({"IDP_ISSUER": issuer})


# -- bounds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IDP_ACCESS_TOKEN_LIFETIME", "30s"),
        ("IDP_ACCESS_TOKEN_LIFETIME", "2h"),
        ("IDP_ID_TOKEN_LIFETIME", "25h"),
        ("IDP_CODE_LIFETIME", "5s"),
        ("IDP_CODE_LIFETIME", "11m"),
        ("IDP_REFRESH_TOKEN_LIFETIME", "1m"),
        ("IDP_SESSION_DURATION", "1m"),
        ("IDP_SESSION_DURATION", "721h"),
        ("IDP_IDLE_TIMEOUT", "1m"),
    ],
)
def test_out_of_bounds_lifetimes_name_the_variable_and_its_bounds(variable, value):
    with pytest.raises(ConfigError, match=f"{variable} must be between .* and .*, got"):
        load({variable: value})


def test_idle_timeout_above_the_session_duration_is_refused():
    with pytest.raises(ConfigError, match="IDP_IDLE_TIMEOUT must not be above IDP_SESSION_DURATION"):
        load({"IDP_SESSION_DURATION": "1h", "IDP_IDLE_TIMEOUT": "2h"})


def test_bounds_follow_configured_minimums_and_maximums():
    # Operators may tighten what administrators can set; the defaults must then fit.
    settings = load({"IDP_SESSION_DURATION_MAX": "12h", "IDP_SESSION_DURATION": "8h"})
    assert settings["SESSION_DURATION_MAX"] == timedelta(hours=12)
    with pytest.raises(ConfigError, match="IDP_SESSION_DURATION must be between"):
        load({"IDP_SESSION_DURATION_MAX": "12h"})  # default 24 h no longer fits


def test_inverted_bounds_are_refused():
    with pytest.raises(ConfigError, match="IDP_SESSION_DURATION_MIN is above IDP_SESSION_DURATION_MAX"):
        load({"IDP_SESSION_DURATION_MIN": "48h", "IDP_SESSION_DURATION_MAX": "24h"})
    with pytest.raises(ConfigError, match="IDP_IDLE_TIMEOUT_MIN is above IDP_IDLE_TIMEOUT_MAX"):
        load({"IDP_IDLE_TIMEOUT_MIN": "3h", "IDP_IDLE_TIMEOUT_MAX": "2h"})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("IDP_TRUSTED_PROXIES", "11", "IDP_TRUSTED_PROXIES must be between 0 and 10"),
        ("IDP_TRUSTED_PROXIES", "-1", "IDP_TRUSTED_PROXIES must be between 0 and 10"),
        ("IDP_CONCURRENT_SESSIONS_MAX", "0", "IDP_CONCURRENT_SESSIONS_MAX must be between"),
        ("IDP_ACCESS_TOKEN_ALG", "HS256", "IDP_ACCESS_TOKEN_ALG must be RS256 or ES256"),
    ],
)
def test_other_out_of_range_settings_say_what_is_allowed(variable, value, message):
    with pytest.raises(ConfigError, match=message):
        load({variable: value})


# -- where things live ---------------------------------------------------------------------


def test_database_defaults_to_a_sqlite_file_in_the_instance_dir(tmp_path):
    settings = load({"IDP_INSTANCE_DIR": str(tmp_path / "state")})
    assert settings["INSTANCE_DIR"] == (tmp_path / "state").resolve()
    assert settings["DATABASE_URL"] == f"sqlite:///{(tmp_path / 'state').resolve() / 'idp.db'}"


def test_a_relative_instance_dir_still_gives_an_absolute_database_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = load({"IDP_INSTANCE_DIR": "var"})["DATABASE_URL"]
    assert url == f"sqlite:///{tmp_path.resolve() / 'var' / 'idp.db'}"
    assert Path(url.removeprefix("sqlite:///")).is_absolute()


def test_an_explicit_database_url_is_kept():
    url = "postgresql+psycopg://idp@db.internal/idp"
    assert load({"IDP_DATABASE_URL": url})["DATABASE_URL"] == url


# -- the secret key ---------------------------------------------------------------------------


def test_secret_key_is_generated_once_private_and_kept_across_restarts(tmp_path):
    settings = load(INSTANCE_DIR=tmp_path / "instance")
    first = ensure_secret_key(settings)
    path = tmp_path / "instance" / "secret_key"
    assert len(first) >= 43  # at least 256 bits, URL-safe
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_secret_key(load(INSTANCE_DIR=tmp_path / "instance")) == first
    assert path.read_text().strip() == first


def test_secret_keys_of_two_instances_differ(tmp_path):
    one = ensure_secret_key(load(INSTANCE_DIR=tmp_path / "a"))
    two = ensure_secret_key(load(INSTANCE_DIR=tmp_path / "b"))
    assert one != two


def test_a_configured_secret_key_is_used_and_nothing_is_written(tmp_path):
    settings = load({"IDP_SECRET_KEY": SECRET_KEY}, INSTANCE_DIR=tmp_path / "instance")
    assert ensure_secret_key(settings) == SECRET_KEY
    assert not (tmp_path / "instance" / "secret_key").exists()


def test_an_empty_secret_key_file_is_never_used_as_the_key(tmp_path):
    """A second worker starting while the first is between creating and writing the
    file (or a file left empty by a crash) must not run with an empty key: Flask then
    has no session at all and every login fails in that worker."""
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "secret_key").touch(mode=0o600)
    try:
        key = ensure_secret_key(load(INSTANCE_DIR=instance))
    except ConfigError:
        return  # refusing to start with a clear message is acceptable too
    assert len(key) >= 32


@pytest.mark.parametrize("weak", ["x" * 32, "x" * 200, "s" * 40, "password" * 8, "0123456789abcdef" * 2,
                                  "changeme", "ab" * 40, "secret-key-" + "0" * 40])
def test_a_weak_secret_key_refuses_to_start_and_says_how_to_make_one(weak, tmp_path):
    with pytest.raises(ConfigError, match="IDP_SECRET_KEY is too weak .*token_urlsafe\\(32\\)"):
        load({"IDP_SECRET_KEY": weak}, INSTANCE_DIR=tmp_path)


def test_32_random_bytes_in_any_usual_spelling_are_enough(tmp_path):
    import base64
    import secrets

    for strong in (secrets.token_urlsafe(32), secrets.token_hex(32),
                   base64.b64encode(secrets.token_bytes(32)).decode(), SECRET_KEY):
        assert secret_bits(strong) >= 256
        assert load({"IDP_SECRET_KEY": strong}, INSTANCE_DIR=tmp_path)["SECRET_KEY"] == strong
    assert secret_bits(secrets.token_hex(16)) == 128  # 16 bytes are not


@pytest.mark.parametrize("lifetime, ok", [("5s", False), ("10s", True), ("2m", True),
                                          ("10m", True), ("1h", False)])
def test_the_logout_token_lifetime_is_bounded(lifetime, ok, tmp_path):
    if ok:
        assert load({"IDP_LOGOUT_TOKEN_LIFETIME": lifetime}, INSTANCE_DIR=tmp_path)
    else:
        with pytest.raises(ConfigError, match="IDP_LOGOUT_TOKEN_LIFETIME must be between"):
            load({"IDP_LOGOUT_TOKEN_LIFETIME": lifetime}, INSTANCE_DIR=tmp_path)
