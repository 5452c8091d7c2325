"""Faults against real provider processes (gunicorn, as in production): PostgreSQL restarted
under load, and a worker SIGKILLed in the middle of a refresh. Bounded: every wait has a
timeout, every process started here is stopped here, loopback only."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import PASSWORD
from tests.e2e import processes
from tests.flows import obtain_tokens
from tests.relying_party import Browser, RelyingParty

pytestmark = pytest.mark.e2e

REDIRECT_URI = "http://127.0.0.1:9999/callback"
EMAIL = "ada@example.com"
CLIENT_TIMEOUT = 8.0  # a response slower than this is a hang
PG_URL = os.environ.get("IDP_TEST_DATABASE_URL")


def _seed(provider: processes.Provider) -> tuple[str, str]:
    """An account, a user and a first-party confidential client, through the operator's CLI
    (the client registered while the account and user are created)."""
    client: list[tuple[str, str | None]] = []
    registering = threading.Thread(
        target=lambda: client.append(provider.create_client("Photos", REDIRECT_URI)))
    registering.start()
    try:
        provider.create_account("faults")
        provider.create_user(EMAIL, PASSWORD, account="faults")
    finally:
        registering.join(120)
    (client_id, secret), = client
    assert secret
    return client_id, secret


def _wait(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- PostgreSQL restarted in the middle of load -------------------------------------------

DB_ENDPOINTS = {"introspect", "userinfo", "refresh", "sessions_page"}
NO_DB_ENDPOINTS = {"discovery", "jwks", "login_page"}
PAGES = {"login_page", "sessions_page"}


@dataclass
class Call:
    name: str
    started: float
    ended: float
    status: int | None = None
    content_type: str = ""
    body: str = ""
    error: str | None = None
    tolerated: str | None = None  # why an otherwise wrong answer is the documented one

    def problem(self) -> str | None:
        """What is wrong with this answer whenever it came, or None."""
        if self.error is not None:
            return f"{self.name}: no answer within {CLIENT_TIMEOUT}s or connection broken: {self.error}"
        if "Traceback" in self.body or 'File "' in self.body:
            return f"{self.name}: {self.status} leaks a stack trace: {self.body[:300]}"
        if self.tolerated:
            return None
        if self.status == 200:
            return None
        if self.status == 503:
            if self.name in PAGES:
                if self.content_type.startswith("text/html") and "briefly unavailable" in self.body:
                    return None
            elif self.content_type.startswith("application/json") and \
                    '"error":"temporarily_unavailable"' in self.body.replace(" ", ""):
                return None
            return f"{self.name}: 503 in the wrong format: {self.content_type} {self.body[:300]}"
        return f"{self.name}: unexpected {self.status}: {self.body[:300]}"


class Load:
    """One thread per endpoint, each calling it in a loop until stopped, recording every call."""

    def __init__(self, url: str, client_id: str, secret: str, tokens: dict, refresh_token: str,
                 cookies: httpx.Cookies):
        self.url = url
        self.auth = (client_id, secret)
        self.access_token = tokens["access_token"]
        self.refresh_token = refresh_token
        self.cookies = cookies
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.threads: list[threading.Thread] = []
        self.finished: set[str] = set()  # endpoints whose loop ended by itself

    def _record(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)

    def _call(self, http: httpx.Client, name: str, method: str, path: str, **kwargs) -> Call:
        started = time.monotonic()
        try:
            response = http.request(method, f"{self.url}{path}", **kwargs)
            call = Call(name, started, time.monotonic(), response.status_code,
                        response.headers.get("content-type", ""), response.text)
        except httpx.HTTPError as exc:
            call = Call(name, started, time.monotonic(), error=repr(exc))
        return call

    def _loop(self, name: str, step: Callable[[httpx.Client], Call | None], **client_args) -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT, **client_args) as http:
            while not self.stopped.is_set():
                try:
                    call = step(http)
                except Exception as exc:  # noqa: BLE001 - recorded, and the test fails on it
                    call = Call(name, time.monotonic(), time.monotonic(), error=repr(exc))
                if call is None:
                    with self.lock:
                        self.finished.add(name)
                    return
                self._record(call)
                self.stopped.wait(0.02)

    def _refresh_step(self):
        state = {"token": self.refresh_token, "ambiguous": False}

        def step(http: httpx.Client) -> Call | None:
            call = self._call(http, "refresh", "POST", "/oauth/token", auth=self.auth, data={
                "grant_type": "refresh_token", "refresh_token": state["token"]})
            if call.status == 200:
                state["token"], state["ambiguous"] = json.loads(call.body)["refresh_token"], False
            elif call.status == 503 or call.error is not None:
                # The commit may have landed before the connection died: the retry that
                # follows is then reuse, and invalid_grant is the documented answer.
                state["ambiguous"] = True
            elif call.status == 400 and '"invalid_grant"' in call.body and state["ambiguous"]:
                call.tolerated = "reuse after a failure whose commit may have landed"
                self._record(call)
                return None  # this family is revoked; nothing more to refresh
            return call

        return step

    def start(self) -> None:
        bearer = {"Authorization": f"Bearer {self.access_token}"}
        steps = {
            "discovery": lambda h: self._call(h, "discovery", "GET",
                                              "/.well-known/openid-configuration"),
            "jwks": lambda h: self._call(h, "jwks", "GET", "/.well-known/jwks.json"),
            "login_page": lambda h: self._call(h, "login_page", "GET", "/login"),
            "sessions_page": lambda h: self._call(h, "sessions_page", "GET", "/account/sessions"),
            "introspect": lambda h: self._call(h, "introspect", "POST", "/oauth/introspect",
                                               auth=self.auth, data={"token": self.access_token}),
            "userinfo": lambda h: self._call(h, "userinfo", "GET", "/userinfo", headers=bearer),
            "refresh": self._refresh_step(),
        }
        for name, step in steps.items():
            extra = {"cookies": self.cookies} if name == "sessions_page" else {}
            thread = threading.Thread(target=self._loop, args=(name, step), kwargs=extra,
                                      name=f"load-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT + 5)
        assert not any(t.is_alive() for t in self.threads), "a load thread did not stop"

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)

    def count(self, names: set[str], since: float) -> dict[str, int]:
        """Calls started since ``since``, per endpoint still being called."""
        calls = self.snapshot()
        with self.lock:
            names = names - self.finished
        return {n: sum(1 for c in calls if c.name == n and c.started >= since) for n in names}


def _readyz(url: str) -> Call:
    started = time.monotonic()
    try:
        response = httpx.get(f"{url}/readyz", timeout=CLIENT_TIMEOUT)
        return Call("readyz", started, time.monotonic(), response.status_code,
                    response.headers.get("content-type", ""), response.text)
    except httpx.HTTPError as exc:
        return Call("readyz", started, time.monotonic(), error=repr(exc))


@dataclass
class Outage:
    mode: str
    stop_called: float  # pg_ctl stop called
    down_at: float  # PostgreSQL stopped (pg_ctl returned)
    up_called: float  # pg_ctl start called
    up_at: float  # PostgreSQL accepting connections again
    ready_at: float  # first /readyz 200 after that
    readyz: list[Call]  # /readyz while the database was down

    @property
    def settled(self) -> float:
        return self.ready_at + 0.5


def _outage(pg: processes.PrivatePostgres, provider: processes.Provider, load: Load,
            mode: str) -> Outage:
    """Stop PostgreSQL for a few seconds under load, start it again, wait for /readyz."""
    everything = DB_ENDPOINTS | NO_DB_ENDPOINTS
    stop_called = time.monotonic()
    pg.stop(mode)
    down_at = time.monotonic()
    readyz = [_readyz(provider.url)]
    # A few seconds, and long enough for every endpoint to be called from start to end
    # while the database is down.
    while time.monotonic() - down_at < 3 or min(load.count(everything, down_at).values()) < 3:
        assert time.monotonic() - down_at < 15, "load stalled during the outage"
        time.sleep(0.2)
        readyz.append(_readyz(provider.url))
    up_called = time.monotonic()
    pg.start()
    up_at = time.monotonic()
    _wait(lambda: _readyz(provider.url).status == 200, 20,
          "/readyz to say 200 after PostgreSQL came back", interval=0.1)
    outage = Outage(mode, stop_called, down_at, up_called, up_at, time.monotonic(), readyz)
    _wait(lambda: min(load.count(everything, outage.settled).values()) >= 5, 20,
          "every endpoint to be called again after recovery")
    return outage


def test_postgresql_restarted_and_crashed_under_load_gives_clean_503s_and_recovers_by_itself():
    """Two outages under load on one provider: a clean restart (``pg_ctl stop -m fast``:
    transactions rolled back, connections closed) and a crash (``-m immediate``:
    connections dropped, recovery at the next start)."""
    reason = processes.postgres_unavailable()
    if reason:
        pytest.skip(f"PostgreSQL restart test needs a private server: {reason}")
    began = time.monotonic()
    with processes.private_postgres() as pg:
        database_url = pg.create_database("idp")
        with processes.serve(database_url, workers=2) as provider:
            client_id, secret = _seed(provider)
            rp = RelyingParty(provider.url, client_id, secret, REDIRECT_URI)
            browser = Browser(provider.url)
            steady = obtain_tokens(rp, browser)  # introspection and userinfo under load
            rotating = obtain_tokens(rp, browser)  # refreshed under load
            reserves = [obtain_tokens(rp, browser) for _ in range(2)]  # used after each outage
            workers = provider.worker_pids()
            assert len(workers) == 2

            load = Load(provider.url, client_id, secret, steady, rotating["refresh_token"],
                        browser.http.cookies)
            load.start()
            outages: list[Outage] = []
            try:
                started = time.monotonic()
                _wait(lambda: min(load.count(DB_ENDPOINTS | NO_DB_ENDPOINTS, started).values()) >= 3,
                      15, "every endpoint to answer under load before the outage")
                healthy = [c for c in load.snapshot() if c.status != 200]
                assert not healthy, f"failures before the outage: {[c.problem() for c in healthy]}"
                for mode, reserve in zip(("fast", "immediate"), reserves, strict=True):
                    outages.append(_outage(pg, provider, load, mode))
                    # Back by itself, without a restart: refresh and introspection work again.
                    refreshed = rp.refresh(reserve["refresh_token"])
                    assert refreshed.status_code == 200, (mode, refreshed.text)
                    new = refreshed.json()
                    assert rp.introspect(new["access_token"]).json()["active"] is True
                    assert rp.userinfo(new["access_token"]).json()["email"] == EMAIL
                    assert rp.refresh(reserve["refresh_token"]).json()["error"] == "invalid_grant"
            finally:
                load.stop()
            calls = load.snapshot()

            # Never a 500, a stack trace, a broken connection or a hang; 503s in our format.
            problems = [p for p in (c.problem() for c in calls) if p]
            assert not problems, f"{len(problems)} bad answers, first: {problems[:5]}"
            assert max(c.ended - c.started for c in calls) < CLIENT_TIMEOUT
            for outage, following in zip(outages, [*outages[1:], None], strict=True):
                # While the database was down: what needs it says 503, what does not works.
                down = [c for c in calls if outage.down_at <= c.started and c.ended <= outage.up_called]
                for call in down:
                    if call.name in DB_ENDPOINTS:
                        assert call.status == 503 or call.tolerated, (
                            f"{outage.mode}: {call.name} answered {call.status} without its "
                            f"database: {call.body[:200]}")
                    else:
                        assert call.status == 200, f"{outage.mode}: {call.name}: {call.status}"
                assert {c.name for c in down} >= DB_ENDPOINTS | NO_DB_ENDPOINTS, outage.mode
                assert all(c.status == 503 and '"database":"unreachable"' in c.body.replace(" ", "")
                           for c in outage.readyz), [(c.status, c.body) for c in outage.readyz]
                # Once /readyz says 200 again, every request succeeds again.
                end = following.stop_called if following else float("inf")
                failed = [(c.name, c.status, c.body[:120]) for c in calls
                          if outage.settled <= c.started and c.ended < end
                          and c.status != 200 and not c.tolerated]
                assert not failed, f"{outage.mode}: still failing after recovery: {failed[:5]}"
                assert outage.ready_at - outage.up_at < 20
            assert provider.process.poll() is None
            assert provider.worker_pids() == workers, "a worker died or was replaced"
            # Each refused request is one log line, not a traceback: an outage must not
            # flood the log.
            log = provider.log_tail(10**8).splitlines()
            errors = [line for line in log if '"level": "ERROR"' in line]
            assert errors, "the outage was not logged"
            assert all("database unavailable" in line and "Traceback" not in line
                       for line in errors), errors[:2]
            assert not [line for line in log if "[ERROR]" in line]  # gunicorn's own: none
            statuses: dict[str, dict] = {}
            for call in calls:
                by_status = statuses.setdefault(call.name, {})
                by_status[call.status] = by_status.get(call.status, 0) + 1
            print(f"\n{len(calls)} calls {statuses}; " + "; ".join(
                f"{o.mode}: down {o.up_called - o.down_at:.1f}s, /readyz 200 "
                f"{o.ready_at - o.up_at:.2f}s after start" for o in outages))

        assert processes.check_invariants(database_url) == []
    assert time.monotonic() - began < 60


def test_a_postgresql_that_never_answers_gives_503s_within_a_bound():
    """A database that accepts connections and then says nothing (hung, overloaded): each
    request needing it gives up after the connect timeout with a 503, instead of holding
    its thread forever until none is left for anything, and the provider comes back by
    itself when the database does."""
    reason = processes.postgres_unavailable()
    if reason:
        pytest.skip(f"hung PostgreSQL test needs a private server: {reason}")
    began = time.monotonic()
    bound = 10.0  # the provider's connect timeout (5 s) plus slack for a busy machine
    with processes.private_postgres() as pg:
        database_url = pg.create_database("idp")
        with processes.serve(database_url, workers=1) as provider:
            db_calls = {
                "readyz": ("GET", "/readyz", {}),
                "introspect": ("POST", "/oauth/introspect", {"auth": ("nobody", "x"),
                                                             "data": {"token": "t"}}),
                "token": ("POST", "/oauth/token", {"auth": ("nobody", "x"), "data": {
                    "grant_type": "refresh_token", "refresh_token": "a.b"}}),
            }
            assert httpx.get(f"{provider.url}/readyz").status_code == 200
            results: dict[str, Call] = {}

            def call(name: str, method: str, path: str, kwargs: dict) -> None:
                started = time.monotonic()
                try:
                    response = httpx.request(method, f"{provider.url}{path}", timeout=2 * bound,
                                             **kwargs)
                    results[name] = Call(name, started, time.monotonic(), response.status_code,
                                         response.headers.get("content-type", ""), response.text)
                except httpx.HTTPError as exc:
                    results[name] = Call(name, started, time.monotonic(), error=repr(exc))

            with pg.hung():
                threads = [threading.Thread(target=call, args=(name, *spec), daemon=True)
                           for name, spec in db_calls.items()]
                for thread in threads:
                    thread.start()
                time.sleep(0.5)  # the three are waiting on the database now
                call("discovery", "GET", "/.well-known/openid-configuration", {})
                for thread in threads:
                    thread.join(3 * bound)
                assert not any(t.is_alive() for t in threads)
            assert results["discovery"].status == 200
            assert results["discovery"].ended - results["discovery"].started < 2
            for name in db_calls:
                result = results[name]
                assert result.ended - result.started < bound, (name, result)
                assert result.status == 503, (name, result)
                assert name == "readyz" or not result.problem(), (name, result)
            assert '"database":"unreachable"' in results["readyz"].body.replace(" ", "")

            _wait(lambda: httpx.get(f"{provider.url}/readyz", timeout=bound).status_code == 200,
                  20, "/readyz to say 200 after the database answers again", interval=0.2)
            refused = httpx.post(f"{provider.url}/oauth/introspect", auth=("nobody", "x"),
                                 data={"token": "t"}, timeout=bound)
            assert refused.status_code == 401  # the database answers: an unknown client
            assert provider.process.poll() is None
    assert time.monotonic() - began < 60


def test_the_error_page_of_a_signed_in_user_needs_no_database(live_server, make_user):
    """Found by the restart test: a 503 page for a signed-in browser read the user's role
    for its menu after the rollback, from a database that was gone, and the server
    answered a bare 500. Deterministic here: every statement after the first one fails."""
    from idp.models import db

    make_user(EMAIL)
    browser = Browser(live_server.url)
    page = browser.login(browser.go(f"{live_server.url}/login"), EMAIL, PASSWORD)
    assert page.status_code == 200 and page.url.path == "/account/sessions", page.url
    with live_server.app.app_context():
        engine = db.engine
    seen = {"statements": 0}

    def outage(*_args) -> None:
        seen["statements"] += 1
        if seen["statements"] > 1:  # the session (and its user) loaded, then the database goes
            raise engine.dialect.loaded_dbapi.OperationalError("simulated outage")

    sa.event.listen(engine, "before_cursor_execute", outage)
    try:
        response = browser.http.get(f"{live_server.url}/account/sessions")
    finally:
        sa.event.remove(engine, "before_cursor_execute", outage)
    assert seen["statements"] > 1
    assert response.status_code == 503, response.text[:300]
    assert "briefly unavailable" in response.text and "simulated" not in response.text


# -- a worker SIGKILLed in the middle of a refresh -----------------------------------------

# A gate at COMMIT, installed in this module's own database only: a deferred constraint
# trigger on refresh_tokens that takes a shared advisory lock. While the test holds the
# lock exclusively, a transaction that rotated a refresh token waits inside its COMMIT,
# after every statement of the refresh and before the commit record; otherwise it costs
# nothing.
GATE_KEY = 7160
GATE_SQL = f"""
CREATE FUNCTION fault_commit_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({GATE_KEY});
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER fault_commit_gate AFTER UPDATE ON refresh_tokens
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fault_commit_gate();
"""


def _psycopg_url(url: str) -> str:
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(
        hide_password=False)


@pytest.fixture(scope="module")
def one_worker():
    """One gunicorn worker (so its pid is the one serving) on a database of this module's
    own on the PostgreSQL named by IDP_TEST_DATABASE_URL, dropped afterwards."""
    if not PG_URL:
        pytest.skip("worker-kill test: set IDP_TEST_DATABASE_URL to a PostgreSQL it may use "
                    "(it creates and drops <database>_sigkill there)")
    psycopg = pytest.importorskip("psycopg")
    base = sa.engine.make_url(PG_URL)
    name = f"{base.database}_sigkill"
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            if conn.dialect.server_version_info >= (14,):
                # A backend whose client died mid-COMMIT finishes the commit (the default);
                # pinned so that the outcome below does not depend on the server's settings.
                conn.execute(sa.text(
                    f'ALTER DATABASE "{name}" SET client_connection_check_interval = 0'))
        url = base.set(database=name).render_as_string(hide_password=False)
        with processes.serve(url, workers=1) as provider:
            with psycopg.connect(_psycopg_url(url), autocommit=True) as conn:
                conn.execute(GATE_SQL)
            client_id, secret = _seed(provider)
            yield provider, client_id, secret, url, psycopg
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _family_state(conn, family_id: str) -> dict:
    row = conn.execute(
        "SELECT f.revoked_at, f.revoke_reason, count(r.id), "
        "       count(r.id) FILTER (WHERE r.rotated_at IS NULL) "
        "FROM token_families f LEFT JOIN refresh_tokens r ON r.family_id = f.id "
        "WHERE f.id = %s GROUP BY f.id", [family_id]).fetchone()
    return {"revoked": row[0] is not None, "reason": row[1], "tokens": row[2], "unrotated": row[3]}


def _rotated(conn, token_id: str) -> bool:
    return conn.execute("SELECT rotated_at FROM refresh_tokens WHERE id = %s",
                        [token_id]).fetchone()[0] is not None


POINTS = {
    # where the worker is held when it is killed: (what the test locks, committed?)
    "in_the_middle": ("the token family's row, written during the refresh", False),
    "at_the_claim": ("the refresh token's row, which the rotation's UPDATE must lock", False),
    "after_the_claim_in_the_commit": ("the commit gate, after every statement", True),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_worker_killed_in_the_middle_of_a_refresh(one_worker, point):
    """The kill lands inside the refresh transaction; the family is then rotated or not,
    never half of it, and the client's retry with the same token gets what RFC 6749 §6 and
    RFC 9700 §4.14.2 say: a new pair if the rotation did not commit, invalid_grant (reuse,
    family revoked) if it did."""
    provider, client_id, secret, database_url, psycopg = one_worker
    began = time.monotonic()
    rp = RelyingParty(provider.url, client_id, secret, REDIRECT_URI)
    browser = Browser(provider.url)
    tokens = obtain_tokens(rp, browser)
    old = tokens["refresh_token"]
    token_id = old.split(".")[0]
    (worker,) = provider.wait_ready(30, workers=1)
    conninfo = _psycopg_url(database_url)

    with psycopg.connect(conninfo, autocommit=True) as observer, \
            psycopg.connect(conninfo) as locker:
        family_id = observer.execute("SELECT family_id FROM refresh_tokens WHERE id = %s",
                                     [token_id]).fetchone()[0]
        locker_pid = locker.execute("SELECT pg_backend_pid()").fetchone()[0]
        if point == "in_the_middle":
            locker.execute("SELECT id FROM token_families WHERE id = %s FOR UPDATE", [family_id])
        elif point == "at_the_claim":
            locker.execute("SELECT id FROM refresh_tokens WHERE id = %s FOR UPDATE", [token_id])
        else:
            locker.execute("SELECT pg_advisory_lock(%s)", [GATE_KEY])

        outcome: dict = {}

        def send() -> None:
            try:
                outcome["response"] = httpx.post(
                    f"{provider.url}/oauth/token", auth=(client_id, secret), timeout=30,
                    data={"grant_type": "refresh_token", "refresh_token": old})
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        request = threading.Thread(target=send, daemon=True)
        request.start()
        backend_pid, query = _wait(lambda: observer.execute(
            "SELECT pid, query FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND %s = ANY(pg_blocking_pids(pid))",
            [locker_pid]).fetchone(), 15, f"the refresh to wait on {POINTS[point][0]}")
        if point == "at_the_claim":
            assert "UPDATE refresh_tokens" in query and "rotated_at" in query, query
        if point == "after_the_claim_in_the_commit":
            assert query.strip().upper() == "COMMIT", query
            # The rotation is done in the worker's open transaction: it holds the token's row.
            with pytest.raises(psycopg.errors.LockNotAvailable):
                observer.execute("SELECT id FROM refresh_tokens WHERE id = %s FOR UPDATE NOWAIT",
                                 [token_id])

        os.kill(worker, signal.SIGKILL)
        request.join(15)
        assert not request.is_alive(), "the client hung after its worker died"
        assert "response" not in outcome, outcome["response"].text
        assert isinstance(outcome["error"], httpx.TransportError), repr(outcome["error"])
        locker.rollback()
        if point == "after_the_claim_in_the_commit":
            locker.execute("SELECT pg_advisory_unlock(%s)", [GATE_KEY])
            locker.commit()
        # The dead worker's backend finishes what it was waiting for, finds its client gone
        # and ends: an open transaction is rolled back, a COMMIT already under way completes.
        _wait(lambda: observer.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                       [backend_pid]).fetchone() is None, 15,
              "the killed worker's database backend to end")

        # All of the refresh or none of it.
        committed = _rotated(observer, token_id)
        assert committed is POINTS[point][1]
        assert _family_state(observer, family_id) == {
            "revoked": False, "reason": None, "tokens": 2 if committed else 1, "unrotated": 1}

        # gunicorn replaced the worker; the provider itself was not restarted.
        (replacement,) = provider.wait_ready(60, workers=1, exclude=(worker,))
        assert replacement != worker and provider.process.poll() is None

        # The client never got an answer and retries with the same refresh token.
        retried = rp.refresh(old)
        if committed:
            # Its rotation committed: the same token again is reuse, and the whole family
            # is revoked, including the successor the client never received.
            assert retried.status_code == 400, retried.text
            assert retried.json()["error"] == "invalid_grant"
            assert _family_state(observer, family_id) == {
                "revoked": True, "reason": "refresh_reuse", "tokens": 2, "unrotated": 1}
            assert rp.introspect(tokens["access_token"]).json() == {"active": False}
        else:
            # Never rotated: this is the token's first use, and it succeeds.
            assert retried.status_code == 200, retried.text
            new = retried.json()
            assert new["refresh_token"] != old
            assert rp.introspect(new["access_token"]).json()["active"] is True
            assert _rotated(observer, token_id)
            assert _family_state(observer, family_id) == {
                "revoked": False, "reason": None, "tokens": 2, "unrotated": 1}
            # Had it committed, this is what the retry would have been: reuse.
            again = rp.refresh(old)
            assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
            assert _family_state(observer, family_id) == {
                "revoked": True, "reason": "refresh_reuse", "tokens": 2, "unrotated": 1}
            assert rp.refresh(new["refresh_token"]).json()["error"] == "invalid_grant"
            assert rp.introspect(new["access_token"]).json() == {"active": False}

    # Only the family died, not the login session: the relying party signs in again
    # without a password.
    again = obtain_tokens(rp, browser)
    assert rp.introspect(again["access_token"]).json()["active"] is True
    assert processes.check_invariants(database_url) == []
    assert time.monotonic() - began < 60
