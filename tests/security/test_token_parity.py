"""One verdict per state, whoever asks (DESIGN invariants 1 and 10).

Every state a user's tokens can be in is built fresh through the real domain paths, then
put to every caller that judges a token or the session behind it: introspection by the
owning client, by the resource server named in ``aud`` (RFC 8707) and by an unrelated
client, each on the one-query fast path and on Authlib's full path; userinfo on both
paths; the sessions API; the session cookie; the refresh grant. All of them must give the
verdict the table below gives for that state (access token, refresh token, cookie), and
the fast and full paths must give the same status and JSON body. The rule itself
(``SessionPolicy.end_reason``, ``end_reason_sql``, ``Holder.active``) is asked too.

The state is checked as built (the ending recorded on the session row, or none: the
"direct write" states leave only the rule to say inactive) before anyone asks. A caller
that finds the session over may record its end (the cookie check does, and so does a
read-only check that answers "inactive", ``Holder.settle``); that must never
change anyone's verdict, and afterwards the row must carry the end the rule named. The
cookie check and the refresh grant (which rotates) ask last, the refresh grant very last.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from idp import credentials, policy_changes, sessions, tokens
from idp.models import Account, Client, EndReason, LoginSession, User, db
from idp.oauth import introspection
from idp.policy import PolicyBounds, end_reason_sql, validate
from idp.web import oidc
from tests.compact import claims_of, header_of
from tests.conftest import PASSWORD
from tests.security.conftest import ADA, Browser, Party, read

SCOPE = "openid profile email sessions"
NEW_PASSWORD = "another horse battery staple"


@pytest.fixture
def settings(settings, tmp_path):
    """A private copy of the shared signing keys, so that a state may withdraw a key
    (``KeyStore.rotate``) without touching the keys every other test signs with."""
    keys = tmp_path / "keys"
    shutil.copytree(settings["KEYS_DIR"], keys)
    return {**settings, "KEYS_DIR": keys}


# -- the world every state starts from -----------------------------------------------------------


@dataclass
class World:
    app: object
    clock: object
    owner: Party  # the first-party confidential client the tokens were issued to
    api: Party  # a registered resource server, named in the access token's aud
    other: Party  # an unrelated confidential client
    browser: Browser  # signed in as ada; its cookie names the session
    sid: str
    access: str
    refresh: str
    owner_disabled: bool = False

    @property
    def services(self):
        return self.app.extensions["idp"]

    def claims(self, token: str | None = None) -> dict:
        return claims_of(token or self.access)

    def do(self, work: Callable):
        """Run domain code in an app context and commit what it did."""
        with self.app.app_context():
            try:
                result = work()
                db.session.commit()
                return result
            finally:
                db.session.remove()

    def session(self) -> LoginSession:
        return db.session.get(LoginSession, self.sid)

    def user(self) -> User:
        return db.session.scalar(sa.select(User).where(User.email == ADA))

    def account(self) -> Account:
        return db.session.get(Account, self.session().account_id)

    def refresh_with_resource(self):
        """The refresh grant, keeping the resource server in the new access token's aud."""
        return self.owner.token({"grant_type": "refresh_token", "refresh_token": self.refresh,
                                 "resource": self.api.client_id})


@pytest.fixture
def world(app, clock, make_account, make_user, make_client) -> World:
    account = make_account("acme")  # 24 h maximum duration, 2 h idle timeout
    make_user(ADA, account_id=account)
    owner = Party(app, make_client("Photos", scope=SCOPE))
    api = Party(app, make_client("Photos API", resource_server=True,
                                 redirect_uri="https://api.example/unused"))
    other = Party(app, make_client("Mail", scope=SCOPE))
    browser = Browser(app)
    browser.login()
    # Tokens issued a while after the sign-in: a stricter maximum duration can then end the
    # session while its access token is still within its exp.
    clock.advance(minutes=6)
    response = owner.exchange(owner.code(browser, scope=SCOPE), resource=api.client_id)
    assert response.status_code == 200, response.get_json()
    issued = response.get_json()
    world = World(app, clock, owner, api, other, browser, browser.sid,
                  issued["access_token"], issued["refresh_token"])
    claims = world.claims()
    assert claims["aud"] == [owner.client_id, api.client_id] and claims["sid"] == world.sid
    assert claims["scope"] == SCOPE
    # The starting point is active for every token, so each state's verdict is its own doing.
    assert owner.active(world.access) and owner.active(world.refresh) and api.active(world.access)
    return world


# -- the states ----------------------------------------------------------------------------------


def nothing(w: World) -> None:
    pass


def revoke_family(w: World) -> None:
    assert w.owner.revoke(w.refresh, token_type_hint="refresh_token").status_code == 200


def revoke_access_token(w: World) -> None:
    assert w.owner.revoke(w.access, token_type_hint="access_token").status_code == 200


def end_session(reason: EndReason, actor: str) -> Callable[[World], None]:
    def build(w: World) -> None:
        assert w.do(lambda: sessions.end(w.session(), reason, now=w.clock.now(), actor=actor,
                                         ip="127.0.0.1"))

    return build


def end_all(w: World) -> None:
    ended = w.do(lambda: sessions.end_all(w.user(), EndReason.ENDED_ALL, now=w.clock.now(),
                                          actor=f"user:{w.user().sub}", ip="127.0.0.1"))
    assert len(ended) == 1


def _policy(w: World, **values):
    bounds = PolicyBounds.from_config(w.app.config)
    return validate(bounds, **{"max_concurrent": None, "on_limit": "deny", **values})


def _apply(w: World, **values) -> None:
    new = _policy(w, **values)
    w.do(lambda: policy_changes.apply(w.account(), new, now=w.clock.now(), actor="admin:test",
                                      ip="127.0.0.1"))


def evict_concurrent(w: World) -> None:
    """The account allows one session and ends the oldest; a second sign-in evicts ours."""
    _apply(w, max_duration="24h", idle_timeout="2h", max_concurrent=1, on_limit="end_oldest")
    Browser(w.app).login()


def change_password(w: World) -> None:
    """The password is changed from another session, which ends every other one (ours)."""
    elsewhere = Browser(w.app)
    elsewhere.login()

    def work():
        return credentials.change_password(
            w.user(), current=PASSWORD, new=NEW_PASSWORD, confirm=NEW_PASSWORD,
            hasher=w.services.passwords, lockout=w.app.extensions["idp"].lockout,
            keep=db.session.get(LoginSession, elsewhere.sid),
            now=w.clock.now(), ip="127.0.0.1")

    assert [s.id for s in w.do(work)] == [w.sid]


def disable_user(w: World) -> None:
    ended = w.do(lambda: credentials.disable(w.user(), now=w.clock.now(), actor="admin:test"))
    assert [s.id for s in ended] == [w.sid]


def disable_then_enable_user(w: World) -> None:
    disable_user(w)
    w.do(lambda: credentials.enable(w.user(), now=w.clock.now(), actor="admin:test"))


def disable_user_directly(w: World) -> None:
    """users.disabled_at written by hand: nothing ended, no family revoked."""
    w.do(lambda: db.session.execute(sa.update(User).where(User.email == ADA)
                                    .values(disabled_at=w.clock.now())))


def tighten_idle_timeout(w: World) -> None:
    """Six minutes idle, then the idle timeout drops to five: "Ended: policy changed"."""
    w.clock.advance(minutes=6)
    assert w.claims()["exp"] > w.clock.now().timestamp()  # the token alone would still pass
    _apply(w, max_duration="24h", idle_timeout="5m")


def tighten_duration(w: World) -> None:
    """Signed in six minutes ago; the maximum duration drops to five."""
    assert w.claims()["exp"] > w.clock.now().timestamp()
    _apply(w, max_duration="5m", idle_timeout="5m")


def tighten_then_relax(w: World) -> None:
    tighten_duration(w)
    _apply(w, max_duration="24h", idle_timeout="2h")


def tighten_directly(w: World) -> None:
    """accounts' policy written by hand: nothing ended; the rule reads the current values."""
    w.do(lambda: db.session.execute(sa.update(Account).where(Account.id == w.account().id)
                                    .values(max_session_duration=300, idle_timeout=300)))


def idle_past_timeout(w: World) -> None:
    """The clock at the exact idle deadline (its first inactive instant); nothing recorded."""
    w.clock.set(read(w.app, lambda: w.session().last_active_at) + timedelta(hours=2))


def past_max_duration(w: World) -> None:
    """Kept in use (a refresh every 110 minutes, never idle) up to the exact absolute
    deadline; nothing recorded."""
    deadline = read(w.app, lambda: w.session().created_at) + timedelta(hours=24)
    while w.clock.now() + timedelta(minutes=110) < deadline:
        w.clock.advance(minutes=110)
        fresh = w.refresh_with_resource()
        assert fresh.status_code == 200, fresh.get_json()
        w.access, w.refresh = fresh.get_json()["access_token"], fresh.get_json()["refresh_token"]
    w.clock.set(deadline)
    assert read(w.app, lambda: sessions.end_reason(w.session(), w.clock.now())) \
        is EndReason.EXPIRED_DURATION


def disable_client(w: World) -> None:
    w.owner_disabled = True
    w.do(lambda: db.session.execute(sa.update(Client).where(Client.client_id == w.owner.client_id)
                                    .values(disabled_at=w.clock.now())))


def expire_access_token(w: World) -> None:
    """The clock at the token's exp exactly (exp is the first instant it is expired)."""
    w.clock.set(datetime.fromtimestamp(w.claims()["exp"], tz=UTC))


def not_yet_valid(w: World) -> None:
    """The real claims, signed by the provider's own key, but nbf a minute ahead."""
    signer, alg, now = w.services.signer, w.app.config["ACCESS_TOKEN_ALG"], w.clock.now()
    claims = w.claims()
    control = signer.sign(claims, alg=alg, typ=tokens.ACCESS_TOKEN_TYP, now=now)
    assert w.owner.active(control)  # re-signed as it was: accepted, so only nbf differs
    w.access = signer.sign({**claims, "nbf": int(now.timestamp()) + 60}, alg=alg,
                           typ=tokens.ACCESS_TOKEN_TYP, now=now)


def _kid(w: World) -> str:
    return header_of(w.access)["kid"]


def retire_key_long_ago(w: World) -> None:
    """The signing key was retired longer ago than it stays published: no longer trusted,
    though its file is still there."""
    keys = w.services.keys
    # (retired when its successor started signing, signing_delay after the rotation)
    keys.rotate(w.clock.now() - keys.publish_window - keys.signing_delay - timedelta(seconds=1))
    assert _kid(w) not in {k.kid for k in keys.published(w.clock.now())}


def drop_key(w: World) -> None:
    """Two rotations far enough apart that the key that signed the token is pruned from the
    store (manifest entry and PEM file gone)."""
    keys = w.services.keys
    keys.rotate(w.clock.now())
    keys.rotate(w.clock.now() + keys.signing_delay + keys.publish_window + timedelta(seconds=1))
    manifest = json.loads(keys.manifest_path.read_text())
    assert _kid(w) not in {entry["kid"] for entry in manifest["keys"]}
    assert not (keys.directory / f"{_kid(w)}.pem").exists()


@dataclass(frozen=True)
class State:
    name: str
    build: Callable[[World], None]
    access: bool  # the access token's verdict
    refresh: bool  # the refresh token's verdict
    cookie: bool  # the session cookie's verdict (= the session rule's)
    recorded: EndReason | None = None  # the ending on the session row before any writer asks


ACTIVE, INACTIVE = True, False
STATES = [
    State("active", nothing, ACTIVE, ACTIVE, ACTIVE),
    State("family_revoked", revoke_family, INACTIVE, INACTIVE, ACTIVE),
    State("access_token_revoked", revoke_access_token, INACTIVE, ACTIVE, ACTIVE),
    State("ended_logout", end_session(EndReason.LOGOUT, "user:ada"),
          INACTIVE, INACTIVE, INACTIVE, EndReason.LOGOUT),
    State("ended_by_user", end_session(EndReason.ENDED_BY_USER, "user:ada"),
          INACTIVE, INACTIVE, INACTIVE, EndReason.ENDED_BY_USER),
    State("ended_all", end_all, INACTIVE, INACTIVE, INACTIVE, EndReason.ENDED_ALL),
    State("ended_by_admin", end_session(EndReason.ENDED_BY_ADMIN, "admin:test"),
          INACTIVE, INACTIVE, INACTIVE, EndReason.ENDED_BY_ADMIN),
    State("evicted_concurrent", evict_concurrent,
          INACTIVE, INACTIVE, INACTIVE, EndReason.EVICTED_CONCURRENT),
    State("password_changed", change_password,
          INACTIVE, INACTIVE, INACTIVE, EndReason.PASSWORD_CHANGED),
    State("disabled", disable_user, INACTIVE, INACTIVE, INACTIVE, EndReason.DISABLED),
    State("policy_changed_idle", tighten_idle_timeout,
          INACTIVE, INACTIVE, INACTIVE, EndReason.POLICY_CHANGED),
    State("past_idle_timeout", idle_past_timeout, INACTIVE, INACTIVE, INACTIVE),
    State("past_max_duration", past_max_duration, INACTIVE, INACTIVE, INACTIVE),
    State("past_stricter_duration", tighten_duration,
          INACTIVE, INACTIVE, INACTIVE, EndReason.POLICY_CHANGED),
    State("stricter_then_relaxed", tighten_then_relax,
          INACTIVE, INACTIVE, INACTIVE, EndReason.POLICY_CHANGED),
    State("stricter_policy_direct_write", tighten_directly, INACTIVE, INACTIVE, INACTIVE),
    State("disabled_then_enabled", disable_then_enable_user,
          INACTIVE, INACTIVE, INACTIVE, EndReason.DISABLED),
    State("user_disabled_direct_write", disable_user_directly, INACTIVE, INACTIVE, INACTIVE),
    State("client_disabled", disable_client, INACTIVE, INACTIVE, ACTIVE),
    State("access_token_expired", expire_access_token, INACTIVE, ACTIVE, ACTIVE),
    State("access_token_nbf_future", not_yet_valid, INACTIVE, ACTIVE, ACTIVE),
    State("signing_key_retired", retire_key_long_ago, INACTIVE, ACTIVE, ACTIVE),
    State("signing_key_dropped", drop_key, INACTIVE, ACTIVE, ACTIVE),
]


# -- the callers ---------------------------------------------------------------------------------


@dataclass
class Heard:
    caller: str
    expected: bool
    verdict: bool | None  # None: an answer no caller should ever give
    said: str


class Paths:
    """Introspection's and userinfo's one-query answers, on (spied) or off."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.answers = (introspection.answer, oidc.userinfo_answer)
        self.answered: bool | None = None

    def _spy(self, real):
        def call(*args, **kwargs):
            result = real(*args, **kwargs)
            self.answered = result is not None
            return result

        return call

    def fast(self) -> None:
        self.answered = None
        self.monkeypatch.setattr(introspection, "answer", self._spy(self.answers[0]))
        self.monkeypatch.setattr(oidc, "userinfo_answer", self._spy(self.answers[1]))

    def slow(self) -> None:
        self.answered = None
        self.monkeypatch.setattr(introspection, "answer", lambda *args, **kwargs: None)
        self.monkeypatch.setattr(oidc, "userinfo_answer", lambda *args, **kwargs: None)


def _body(response) -> str:
    return response.get_data(as_text=True)[:160]


def introspection_verdict(response, *, caller_disabled: bool) -> tuple[bool | None, str]:
    body = response.get_json(silent=True) or {}
    if response.status_code == 200 and body == {"active": False}:
        return False, "200 {active: false}"
    if response.status_code == 200 and body.get("active") is True:
        return True, "200 {active: true}"
    if response.status_code == 401 and body.get("error") == "invalid_client" and caller_disabled:
        return False, "401 invalid_client (the caller is disabled)"
    return None, f"{response.status_code} {_body(response)}"


def bearer_verdict(response) -> tuple[bool | None, str]:
    if response.status_code == 200:
        return True, "200"
    challenge = response.headers.get("WWW-Authenticate", "")
    if response.status_code == 401 and 'error="invalid_token"' in challenge:
        return False, "401 invalid_token"
    return None, f"{response.status_code} {challenge} {_body(response)}"


def refresh_grant_verdict(response, *, client_disabled: bool) -> tuple[bool | None, str]:
    body = response.get_json(silent=True) or {}
    if response.status_code == 200 and "access_token" in body and "refresh_token" in body:
        return True, "200 new tokens"
    if response.status_code == 400 and body.get("error") == "invalid_grant":
        return False, f"400 invalid_grant ({body.get('error_description')})"
    if response.status_code == 401 and body.get("error") == "invalid_client" and client_disabled:
        return False, "401 invalid_client (the client is disabled)"
    return None, f"{response.status_code} {_body(response)}"


def cookie_verdict(response) -> tuple[bool | None, str]:
    if response.status_code == 200:
        return True, "200 sessions page"
    location = response.headers.get("Location", "")
    if response.status_code == 303 and urlsplit(location).path == "/login":
        return False, "303 -> /login"
    return None, f"{response.status_code} {location} {_body(response)}"


def _table(state: State, heard: list[Heard], notes: list[str]) -> str:
    def word(value: bool | None) -> str:
        return {True: "active", False: "inactive", None: "???"}[value]

    width = max(len(h.caller) for h in heard)
    lines = [f"state {state.name}: expected access {word(state.access)}, refresh "
             f"{word(state.refresh)}, cookie {word(state.cookie)}",
             f"  {'caller':<{width}}  {'expected':<8}  {'verdict':<8}  answer"]
    for h in heard:
        flag = "  " if h.verdict is h.expected else "!!"
        lines.append(f"{flag}{h.caller:<{width}}  {word(h.expected):<8}  {word(h.verdict):<8}  "
                     f"{h.said}")
    return "\n".join(lines + [f"!! {note}" for note in notes])


@pytest.mark.parametrize("state", STATES, ids=[s.name for s in STATES])
def test_every_caller_gives_the_states_one_verdict(world, state, monkeypatch):
    w = world
    state.build(w)
    ending = read(w.app, lambda: w.session().end_reason)
    assert ending == (str(state.recorded) if state.recorded else None), \
        f"{state.name} built wrong: the session row records {ending!r}, not {state.recorded}"
    paths = Paths(monkeypatch)
    heard: list[Heard] = []
    notes: list[str] = []
    claims = w.claims()

    def hear(caller: str, expected: bool, outcome: tuple[bool | None, str]) -> None:
        heard.append(Heard(caller, expected, *outcome))

    # The rule itself, before anyone asks.
    def rule():
        now = w.clock.now()
        session = w.session()
        in_python = sessions.end_reason(session, now)
        in_sql = db.session.scalar(sa.select(end_reason_sql(now)).where(LoginSession.id == w.sid))
        holder, _ = tokens.load_holder(claims["fam"], claims["jti"])
        return in_python, in_sql, holder.active(now)

    in_python, in_sql, holder_active = read(w.app, rule)
    hear("rule: SessionPolicy.end_reason", state.cookie,
         (in_python is None, f"end reason {in_python}"))
    hear("rule: end_reason_sql", state.cookie, (in_sql is None, f"end reason {in_sql}"))
    if str(in_python or "") != str(in_sql or ""):
        notes.append(f"the two forms of the rule name different reasons: {in_python} / {in_sql}")
    hear("rule: Holder.active (the family)", state.refresh, (holder_active, f"{holder_active}"))

    # Introspection, fast then full, by each client, of each token.
    askers = [("owner", w.owner, w.owner_disabled), ("resource server", w.api, False),
              ("unrelated", w.other, False)]
    full_answers: dict[str, list] = {}
    for kind, value, expected_for_owner in (("access", w.access, state.access),
                                            ("refresh", w.refresh, state.refresh)):
        for who, party, disabled in askers:
            # A resource server sees access tokens naming it in aud; no one sees other
            # clients' refresh tokens.
            permitted = who == "owner" or (who == "resource server" and kind == "access")
            expected = expected_for_owner if permitted else INACTIVE
            for path in ("fast", "full"):
                getattr(paths, "fast" if path == "fast" else "slow")()
                response = party.introspect(value)
                caller = f"introspect {kind} / {who} / {path}"
                hear(caller, expected, introspection_verdict(response, caller_disabled=disabled))
                full_answers.setdefault(f"introspect {kind} / {who}", []).append(
                    (response.status_code, response.get_json(silent=True)))
                if path == "fast" and not disabled and paths.answered is not True:
                    notes.append(f"{caller}: the one-query path did not answer")

    # Userinfo, fast then full; then the sessions API.
    for path in ("fast", "full"):
        getattr(paths, "fast" if path == "fast" else "slow")()
        response = w.owner.userinfo(w.access)
        verdict = bearer_verdict(response)
        if verdict[0] and response.get_json().get("email") != ADA:
            verdict = (None, f"200 but not ada's claims: {_body(response)}")
        hear(f"userinfo / {path}", state.access, verdict)
        full_answers.setdefault("userinfo", []).append(
            (response.status_code, response.get_json(silent=True)))
        if path == "fast" and paths.answered is not (verdict[0] is True):
            notes.append(f"userinfo / fast: the one-query path answered={paths.answered} "
                         "(it answers exactly the active tokens)")
    paths.fast()
    response = w.owner.http.get("/api/v1/sessions", headers={"Authorization": f"Bearer {w.access}"})
    verdict = bearer_verdict(response)
    if verdict[0] and w.sid not in {s["id"] for s in response.get_json()["sessions"]}:
        verdict = (None, f"200 without the session: {_body(response)}")
    hear("sessions API GET /api/v1/sessions", state.access, verdict)

    for what, (fast, full) in full_answers.items():
        if fast != full:
            notes.append(f"{what}: fast path answered {fast}, full path {full}")

    # The cookie check (it records an ending it finds), then the refresh grant (it rotates).
    hear("cookie GET /account/sessions", state.cookie, cookie_verdict(
        w.browser.get("/account/sessions")))
    hear("refresh grant", state.refresh, refresh_grant_verdict(
        w.owner.refresh(w.refresh), client_disabled=w.owner_disabled))

    # Whoever recorded the session's end recorded the one the rule named; an active
    # session is still open.
    recorded = read(w.app, lambda: w.session().end_reason)
    if recorded != (str(in_python) if in_python else None):
        notes.append(f"the session row now records {recorded!r}; the rule said {in_python}")

    wrong = [h for h in heard if h.verdict is not h.expected]
    assert not wrong and not notes, "\n" + _table(state, heard, notes)
