"""The sign-in lockout holds on every worker of a served instance, and on every node with
Redis: guesses sent all at once never get more password checks than the limit, however
many workers (or nodes) answer, and an administrator's "Clear lockout" lets the user in
on all of them. Real ``idp serve`` processes (gunicorn, gthread) on loopback; no sleeps.
"""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import PASSWORD, redis_up
from tests.e2e import processes
from tests.relying_party import csrf_token

pytestmark = pytest.mark.e2e

ADMIN = "root@example.com"
GUESSES = 16
LIMIT = 5  # IDP_LOGIN_MAX_FAILURES, the default
# Growing delays off (they would refuse part of a burst before the limit: pacing, tested
# in-process), so what is measured is the limit alone.
LIMITS = {"IDP_LOGIN_IP_LIMIT": "1000 per minute", "IDP_LOGIN_DELAY_AFTER": str(LIMIT)}
TIMEOUT = 20.0


def login_form(base: str) -> tuple[httpx.Client, str]:
    http = httpx.Client(base_url=base, timeout=TIMEOUT, follow_redirects=False)
    return http, csrf_token(http.get("/login").text)


def burst(bases: list[str], email: str, password: str, count: int) -> list[int]:
    """``count`` sign-ins released together (each its own browser), spread over ``bases``;
    their status codes."""
    forms = [login_form(bases[i % len(bases)]) for i in range(count)]
    start = threading.Barrier(count)

    def post(form) -> int:
        http, token = form
        start.wait(TIMEOUT)
        try:
            return http.post("/login", data={"csrf_token": token, "email": email,
                                             "password": password}).status_code
        finally:
            http.close()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, forms))


def one_by_one(bases: list[str], email: str, password: str, count: int) -> list[int]:
    """``count`` sign-ins one after the other, each a new connection (any worker)."""
    statuses = []
    for i in range(count):
        http, token = login_form(bases[i % len(bases)])
        try:
            statuses.append(http.post("/login", data={"csrf_token": token, "email": email,
                                                      "password": password}).status_code)
        finally:
            http.close()
    return statuses


def unlock(base: str, sub: str) -> None:
    """The owner clears the user's lockout from /admin/users."""
    with httpx.Client(base_url=base, timeout=TIMEOUT) as admin:
        token = csrf_token(admin.get("/login").text)
        assert admin.post("/login", data={"csrf_token": token, "email": ADMIN,
                                          "password": PASSWORD}).status_code == 303
        page = admin.get("/admin/users").text
        assert "locked: too many failed sign-ins" in page and sub in page
        token = csrf_token(page)
        assert admin.post(f"/admin/users/{sub}/unlock",
                          data={"csrf_token": token}).status_code == 303


def people(provider) -> tuple[str, str]:
    """An owner who may clear lockouts, and a user (email, sub) to guess at."""
    provider.create_account("acme")
    provider.create_user(ADMIN, PASSWORD, account="acme", role="owner", name="Root")
    email = f"ada-{secrets.token_hex(4)}@example.com"
    return email, provider.create_user(email, PASSWORD, account="acme")


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_guesses_sent_at_once_get_exactly_the_limit_on_any_number_of_workers(tmp_path, workers):
    with processes.serve(f"sqlite:///{tmp_path / 'idp.db'}", workers=workers,
                         env=LIMITS) as provider:
        email, sub = people(provider)
        statuses = burst([provider.url], email, "wrong password", GUESSES)
        checked = statuses.count(401)
        print(f"{workers} worker(s): {checked} of {GUESSES} guesses checked, "
              f"{statuses.count(429)} refused")
        assert checked == LIMIT and statuses.count(429) == GUESSES - LIMIT, statuses
        # Locked for the right password too, whichever worker answers.
        assert set(one_by_one([provider.url], email, PASSWORD, 3 * workers)) == {429}
        unlock(provider.url, sub)
        assert set(one_by_one([provider.url], email, PASSWORD, 3 * workers)) == {303}


@pytest.mark.skipif(not redis_up(), reason="needs Redis on 127.0.0.1:6379 (two nodes share it)")
def test_two_nodes_with_redis_share_one_lockout(tmp_path):
    database = f"sqlite:///{tmp_path / 'idp.db'}"
    shared = {"IDP_REDIS_URL": "redis://127.0.0.1:6379/12", **LIMITS}
    with processes.serve(database, workers=2, env=shared) as first:
        email, sub = people(first)
        with processes.serve(database, workers=2, env=shared) as second:
            nodes = [first.url, second.url]
            statuses = burst(nodes, email, "wrong password", GUESSES)
            assert statuses.count(401) == LIMIT and statuses.count(429) == GUESSES - LIMIT
            assert set(one_by_one(nodes, email, PASSWORD, 6)) == {429}
            unlock(second.url, sub)
            assert set(one_by_one(nodes, email, PASSWORD, 6)) == {303}
