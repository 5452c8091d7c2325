"""Property-based tests (Hypothesis): the parsers that see attacker-controlled text never
raise anything but their documented error, and the session lifecycle, driven through
random sequences of sign-ins, token grants, refreshes, reuse, revocation, endings,
policy changes, sweeps and clock moves (backwards too), never leaves an active token
under an ended or expired session, nor two live refresh tokens in one family
(DESIGN invariants 1, 2, 5 and 8)."""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from joserfc.errors import JoseError

from idp import accounts, passwords, policy, policy_changes, sessions, tokens
from idp.config import MAX_DURATION_SECONDS, parse_duration
from idp.devices import UNKNOWN_IP, client_ip, describe
from idp.keys import KeyStore
from idp.models import Account, Client, EndReason, LoginSession, RefreshToken, TokenFamily, User, db
from idp.sessions import _decode_cursor
from idp.signing import Signer
from idp.web.device import normalise
from tests.flows import start_session

# database=None: nothing is written to .hypothesis/ in the work tree.
PROPERTY = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
DEVICE_TYPES = {"desktop", "mobile", "tablet", "bot", "other"}
B64 = st.binary(max_size=120).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode())


# -- parsers ------------------------------------------------------------------------------------


@PROPERTY
@given(st.one_of(st.none(), st.text(max_size=120),
                 st.from_regex(r"[A-Za-z0-9_-]{14,34}\.[A-Za-z0-9_-]{41,45}", fullmatch=True),
                 st.builds(lambda: passwords.new_token()[2])))
def test_split_token_parses_or_refuses_and_never_raises(value):
    parts = passwords.split_token(value)
    if parts is not None:
        row_id, secret = parts
        assert f"{row_id}.{secret}" == value
        assert 16 <= len(row_id) <= 32 and len(secret) == 43
        assert re.fullmatch(r"[A-Za-z0-9_-]+", row_id + secret)


@PROPERTY
@given(st.one_of(st.text(max_size=40), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                 st.booleans(), st.from_regex(r"\s*\d{1,14}(\.\d{1,8})?\s*[smhdSMHD]?\s*",
                                              fullmatch=True)))
def test_parse_duration_returns_a_bounded_duration_or_value_error(value):
    try:
        result = parse_duration(value)
    except ValueError:
        return
    assert isinstance(result, timedelta)
    assert timedelta(0) <= result < timedelta(seconds=MAX_DURATION_SECONDS)


@PROPERTY
@given(st.integers(0, 10**6), st.sampled_from(["", "s", "m", "h", "d"]))
def test_parse_duration_round_trips_whole_units(number, unit):
    seconds = number * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assume(seconds < MAX_DURATION_SECONDS)
    assert parse_duration(f"{number}{unit}") == timedelta(seconds=seconds)


IPS = st.one_of(st.ip_addresses().map(str), st.text(max_size=60),
                st.ip_addresses(v=6).map(lambda ip: f"[{ip}]:443"),
                st.ip_addresses(v=4).map(lambda ip: f"{ip}:51234"))


@PROPERTY
@given(st.one_of(st.none(), IPS), st.one_of(st.none(), st.lists(IPS, max_size=6).map(", ".join),
                                             st.text(max_size=200)),
       st.integers(0, 10))
def test_client_ip_is_an_address_or_unknown_and_trusts_only_the_proxies_hops(remote, xff, hops):
    result = client_ip(remote, xff, hops)
    assert result == UNKNOWN_IP or ipaddress.ip_address(result)
    if hops == 0 or xff is None:
        assert result == client_ip(remote, None, 0)  # the header is never read
    elif result != client_ip(remote, None, 0):
        entries = [e.strip() for e in xff.split(",")]
        assert len(entries) >= hops
        # Only the entry our outermost trusted proxy wrote can be believed.
        assert result == client_ip(entries[-hops], None, 0)


@PROPERTY
@given(st.one_of(st.none(), st.text(max_size=2000),
                 st.builds(lambda a, b: f"Mozilla/5.0 ({a}) {b}/1.0", st.text(max_size=300),
                           st.text(max_size=300)),
                 st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,200}/[0-9][^ ]{0,20}.*", fullmatch=True)))
def test_describe_never_raises_and_fits_the_columns(user_agent):
    device = describe(user_agent)
    assert device.device_type in DEVICE_TYPES
    # LoginSession.device_label is VARCHAR(120): a longer label fails the sign-in on PostgreSQL.
    assert 0 < len(device.label) <= 120, device.label


@PROPERTY
@given(st.one_of(st.none(), st.text(max_size=200),
                 st.from_regex(r"[BCDFGHJKLMNPQRSTVWXZbcdfghjk -]{0,20}", fullmatch=True)))
def test_normalise_user_code_gives_a_canonical_code_or_nothing(code):
    result = normalise(code)
    assert result == "" or re.fullmatch(r"[A-Z]{4}-[A-Z]{4}", result)
    if result:
        assert normalise(result) == result


@PROPERTY
@given(st.one_of(st.text(max_size=200), B64,
                 st.builds(lambda when, sid: base64.urlsafe_b64encode(
                     f"{when}|{sid}".encode()).decode().rstrip("="),
                     st.one_of(st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
                               st.text(max_size=40)), st.text(max_size=40))))
def test_cursor_decoding_never_raises(cursor):
    decoded = _decode_cursor(cursor)
    if decoded is not None:
        when, sid = decoded
        assert when.tzinfo is not None and 0 < len(sid) <= 32


@PROPERTY
@given(st.one_of(st.text(max_size=120),
                 st.builds(lambda s, h, p: f"{s}://{h}{p}",
                           st.sampled_from(["http", "https", "javascript", "data", "file",
                                            "com.example.app", "HTTP", "ftp", ""]),
                           st.sampled_from(["127.0.0.1", "localhost", "[::1]", "10.0.0.1",
                                            "example.com", "", "evil.example@127.0.0.1",
                                            "127.0.0.1.nip.io", "0x7f000001"]),
                           st.text(max_size=30))))
@example("http://[::1/cb")  # malformed bracketed hosts, found by this test
@example("https://]evil.example/cb")
def test_client_uris_are_https_loopback_http_or_private_use_only(uri):
    for web_only in (False, True):
        try:
            accepted = accounts._check_uri(uri, what="uri", web_only=web_only)
        except accounts.AccountError:
            continue
        assert accepted == uri
        scheme = uri.split(":", 1)[0].lower()
        assert scheme not in ("javascript", "data", "file", "vbscript")
        assert "#" not in uri
        if scheme == "http":
            host = urlsplit(uri).hostname
            assert host == "localhost" or ipaddress.ip_address(host).is_loopback
        if web_only:
            assert scheme in ("http", "https")


BOUNDS = policy.PolicyBounds(timedelta(minutes=5), timedelta(hours=720), timedelta(minutes=5),
                             timedelta(hours=24), 1000)
VALUES = st.one_of(st.text(max_size=20), st.integers(-10**6, 10**9), st.none(),
                   st.sampled_from(["5m", "24h", "unlimited", "deny", "end_oldest", "0", "30d"]))


@PROPERTY
@given(VALUES, VALUES, VALUES, VALUES)
def test_policy_validation_gives_a_policy_within_bounds_or_field_errors(duration, idle, limit,
                                                                        on_limit):
    try:
        result = policy.validate(BOUNDS, max_duration=duration, idle_timeout=idle,
                                 max_concurrent=limit, on_limit=on_limit)
    except policy.PolicyError as exc:
        assert exc.errors and set(exc.errors) <= {"max_duration", "idle_timeout",
                                                  "max_concurrent", "on_limit"}
        return
    assert BOUNDS.duration_min <= result.max_duration <= BOUNDS.duration_max
    assert BOUNDS.idle_min <= result.idle_timeout <= min(BOUNDS.idle_max, result.max_duration)
    assert result.max_concurrent is None or 1 <= result.max_concurrent <= BOUNDS.concurrent_max


@pytest.fixture(scope="module")
def keystore(keys_dir):
    store = KeyStore(keys_dir, retention=timedelta(hours=2), reload_interval=30)
    store.ensure(datetime.now(UTC))
    return store


def _jws(header: dict, claims: object, signature: bytes) -> str:
    def enc(value) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{enc(header)}.{enc(claims)}.{enc(signature)}"


def test_key_store_verify_raises_only_invalid_token_errors(keystore):
    kids = [k.kid for k in keystore.published(datetime.now(UTC))]
    headers = st.fixed_dictionaries(
        {"alg": st.sampled_from(["RS256", "ES256", "none", "HS256", "PS256", "", None, 1]),
         "kid": st.one_of(st.sampled_from(kids), st.text(max_size=20), st.none(), st.integers())},
        optional={"typ": st.sampled_from(["JWT", "at+jwt", "logout+jwt", 5]),
                  "jwk": st.just({"kty": "RSA"}), "crit": st.just(["exp"]),
                  "b64": st.booleans()})
    claims = st.one_of(st.dictionaries(st.sampled_from(["iss", "sub", "exp", "nbf", "iat", "aud"]),
                                       st.one_of(st.integers(), st.floats(allow_nan=True),
                                                 st.text(max_size=10), st.booleans(), st.none()),
                                       max_size=6),
                       st.lists(st.integers(), max_size=3), st.text(max_size=10))
    tokens_ = st.one_of(st.text(max_size=300), st.builds(_jws, headers, claims, st.binary(max_size=300)),
                        st.builds(lambda a, b, c: f"{a}.{b}.{c}", B64, B64, B64))

    signer = Signer(keystore)

    @PROPERTY
    @given(tokens_, st.sampled_from([None, "JWT", "at+jwt"]), st.booleans())
    def check(token, typ, verify_exp):
        try:
            signer.verify(token, issuer="http://127.0.0.1:5000", now=datetime.now(UTC),
                          typ=typ, verify_exp=verify_exp)
        except JoseError:
            return
        raise AssertionError(f"a random token verified: {token!r}")

    check()


# -- the session lifecycle as a state machine ---------------------------------------------------

HOUR = 3600
POLICIES = st.tuples(st.sampled_from([5 * 60, HOUR, 8 * HOUR, 24 * HOUR, 720 * HOUR]),
                     st.sampled_from([5 * 60, 30 * 60, 2 * HOUR, 24 * HOUR]),
                     st.sampled_from([None, 1, 2, 3]), st.sampled_from(["deny", "end_oldest"]))
END_REASONS = st.sampled_from([EndReason.LOGOUT, EndReason.ENDED_BY_USER, EndReason.ENDED_BY_ADMIN,
                               EndReason.PASSWORD_CHANGED, EndReason.DISABLED])
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class SessionLifecycle(RuleBasedStateMachine):
    """Mirrors what the token endpoint's hooks do (grants.py) with the domain's own
    functions, committing and rolling back where the views do."""

    app = None
    examples = 0
    steps = 0

    live_sessions = Bundle("sessions")
    refresh_tokens = Bundle("refresh_tokens")

    def __init__(self):
        super().__init__()
        type(self).examples += 1
        self.ctx = self.app.app_context()
        self.ctx.push()
        self.now = START
        tag = uuid.uuid4().hex[:10]
        account = accounts.create_account(f"acct-{tag}", now=self.now, max_duration=24 * HOUR,
                                          idle_timeout=2 * HOUR)
        user = accounts.create_user(account, email=f"u-{tag}@example.com", password="p" * 12,
                                    role="member", name=None, now=self.now,
                                    hasher=self.app.extensions["idp"].passwords)
        client, _ = accounts.create_client(name=f"rp-{tag}", redirect_uris=["http://127.0.0.1/cb"],
                                           now=self.now)
        db.session.commit()
        self.account_id, self.user_id, self.client_id = account.id, user.id, client.client_id
        self.issued: list[str] = []
        self.answered_inactive: set[str] = set()

    def teardown(self):
        db.session.remove()
        self.ctx.pop()

    # -- helpers
    def user(self) -> User:
        return db.session.get(User, self.user_id)

    def session(self, sid: str) -> LoginSession | None:
        return db.session.get(LoginSession, sid)

    def independently_active(self, s: LoginSession) -> bool:
        account = db.session.get(Account, self.account_id)
        return (s.ended_at is None
                and self.now < s.created_at + timedelta(seconds=account.max_session_duration)
                and self.now < s.last_active_at + timedelta(seconds=account.idle_timeout))

    def active_count(self) -> int:
        rows = db.session.scalars(sa.select(LoginSession).where(
            LoginSession.user_id == self.user_id)).all()
        return sum(self.independently_active(s) for s in rows)

    # -- rules
    @rule(target=live_sessions)
    def sign_in(self):
        type(self).steps += 1
        # A second apart, so "the least recently active" is never a tie that the database's
        # row order would break differently when Hypothesis replays the example.
        self.now += timedelta(seconds=1)
        try:
            started = start_session(self.user(), sessions.Origin(ip="127.0.0.1"), now=self.now)
        except sessions.SessionLimitReached:
            db.session.commit()
            return multiple()
        db.session.commit()
        limit = db.session.get(Account, self.account_id).max_concurrent_sessions
        assert limit is None or self.active_count() <= limit
        return started.session.id

    @rule(target=refresh_tokens)
    def sign_in_and_authorize(self):
        type(self).steps += 1
        sid = self.sign_in()
        if not isinstance(sid, str):
            return multiple()
        return self.exchange_a_code(sid)

    @rule(target=refresh_tokens, sid=live_sessions)
    def exchange_a_code(self, sid):
        """authenticate_user of the code grant: a live session, then a new family."""
        type(self).steps += 1
        s = self.session(sid)
        if s is None or sessions.check(s, self.now) is not None:
            db.session.commit()
            return multiple()
        family = tokens.start_family(session=s, client=db.session.get(Client, self.client_id),
                                     scope="openid", now=self.now)
        value = tokens.issue_refresh(tokens.Holder.of(family, issuing=True),
                                     now=self.now, lifetime=timedelta(days=30))
        db.session.commit()
        self.issued.append(value)
        return value

    @rule(target=refresh_tokens, value=refresh_tokens)
    def refresh(self, value):
        """The refresh grant: claim (rotate or detect reuse), then check family and session."""
        type(self).steps += 1
        return self._refresh(value)

    @rule(target=refresh_tokens, value=refresh_tokens)
    def a_thief_replays_a_token(self, value):
        """Same grant; drawn from every token ever issued, so often a rotated one."""
        type(self).steps += 1
        return self._refresh(value)

    @rule(target=refresh_tokens, data=st.data())
    def refresh_the_newest(self, data):
        """The legitimate client: the newest refresh token of some family."""
        type(self).steps += 1
        newest = db.session.scalars(
            sa.select(RefreshToken.id).join(TokenFamily, TokenFamily.id == RefreshToken.family_id)
            .where(TokenFamily.user_id == self.user_id, RefreshToken.rotated_at.is_(None))).all()
        db.session.rollback()
        known = [v for v in self.issued if v.split(".")[0] in set(newest)]
        if not known:
            return multiple()
        return self._refresh(data.draw(st.sampled_from(known)))

    def _refresh(self, value):
        claim = tokens.claim_refresh(value, now=self.now)
        if claim.reused:
            db.session.commit()
            return multiple()
        if claim.row is None:
            stale = tokens.find_refresh(value)
            if stale is not None and stale.holder.session_id is not None and sessions.check(
                    db.session.get(LoginSession, stale.holder.session_id), self.now) is not None:
                db.session.commit()
            db.session.rollback()
            return multiple()
        family = db.session.get(TokenFamily, claim.row.family_id)
        if family.revoked_at is not None:
            db.session.rollback()
            return multiple()
        if sessions.check(family.session, self.now) is not None:
            db.session.commit()
            return multiple()
        assert self.independently_active(family.session)
        sessions.touch(family.session, self.now, "127.0.0.1", timedelta(seconds=60))
        family.last_issued_at = self.now
        new = tokens.issue_refresh(tokens.Holder.of(family, issuing=True),
                                   now=self.now, lifetime=timedelta(days=30))
        db.session.commit()
        self.issued.append(new)
        return new

    @rule(value=refresh_tokens)
    def revoke(self, value):
        type(self).steps += 1
        found = tokens.find_refresh(value)
        if found is not None:
            tokens.revoke_family(found.family_id, "revoked_by_client", now=self.now)
        db.session.commit()

    @rule(sid=live_sessions)
    def use_the_session(self, sid):
        """What every page with the cookie does: check, then touch (throttled)."""
        type(self).steps += 1
        s = self.session(sid)
        if s is not None and sessions.check(s, self.now) is None:
            sessions.touch(s, self.now, "127.0.0.1", timedelta(seconds=60))
        db.session.commit()

    @rule(sid=live_sessions, reason=END_REASONS)
    def end(self, sid, reason):
        type(self).steps += 1
        s = self.session(sid)
        if s is not None:
            sessions.end(s, reason, now=self.now, actor="test")
        db.session.commit()

    @rule(keep=st.booleans(), sid=live_sessions)
    def end_all(self, keep, sid):
        type(self).steps += 1
        sessions.end_all(self.user(), EndReason.ENDED_ALL, now=self.now, actor="test",
                         keep=sid if keep else None)
        db.session.commit()

    @rule(values=POLICIES)
    def change_policy(self, values):
        type(self).steps += 1
        duration, idle, limit, on_limit = values
        try:
            new = policy.validate(BOUNDS, max_duration=duration, idle_timeout=idle,
                                  max_concurrent=limit, on_limit=on_limit)
        except policy.PolicyError:
            return
        policy_changes.apply(db.session.get(Account, self.account_id), new, now=self.now,
                             actor="test")
        db.session.commit()

    @rule(seconds=st.one_of(st.integers(0, 900), st.integers(0, 30 * HOUR)))
    def time_passes(self, seconds):
        type(self).steps += 1
        self.now += timedelta(seconds=seconds)

    @rule(seconds=st.one_of(st.integers(1, 900), st.integers(1, 30 * HOUR)))
    def clock_moves_back(self, seconds):
        type(self).steps += 1
        self.now -= timedelta(seconds=seconds)

    @precondition(lambda self: self.now > START)
    @rule()
    def sweep(self):
        type(self).steps += 1
        sessions.sweep(self.now, timedelta(hours=720))
        db.session.commit()

    # -- invariants
    @invariant()
    def no_active_token_under_a_dead_session(self):
        """A resource server introspects every family after every step (the holder as the
        hot paths read it, judged by the one rule; an inactive answer settles the session
        as introspection does): never active under a dead session, and never active again
        once answered inactive, whatever policy change, sweep or clock step came between."""
        families = db.session.scalars(sa.select(TokenFamily).where(
            TokenFamily.user_id == self.user_id)).all()
        db.session.rollback()
        for family in families:
            if family.session is not None and family.session.ended_at is not None:
                assert family.revoked_at is not None, "an ended session left a family unrevoked"
            holder, _ = tokens.load_holder(family.id, "no-such-jti")
            if holder.active(self.now):
                assert self.independently_active(family.session), "active token, dead session"
                assert family.id not in self.answered_inactive, "an inactive token came back"
            else:
                self.answered_inactive.add(family.id)
                holder.settle(self.now)
            db.session.rollback()

    @invariant()
    def at_most_one_live_refresh_token_per_family(self):
        counts = db.session.execute(
            sa.select(RefreshToken.family_id, sa.func.count())
            .join(TokenFamily, TokenFamily.id == RefreshToken.family_id)
            .where(TokenFamily.user_id == self.user_id, RefreshToken.rotated_at.is_(None))
            .group_by(RefreshToken.family_id)).all()
        assert all(count <= 1 for _, count in counts), counts
        db.session.rollback()


def test_the_session_lifecycle_never_leaves_an_active_token_under_a_dead_session(app):
    SessionLifecycle.app = app
    SessionLifecycle.examples = SessionLifecycle.steps = 0
    run_state_machine_as_test(SessionLifecycle, settings=settings(
        max_examples=50, stateful_step_count=40, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    assert SessionLifecycle.examples >= 30 and SessionLifecycle.steps >= 300
