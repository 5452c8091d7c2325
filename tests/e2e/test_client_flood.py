"""Someone who knows a relying party's client id (it is public: it travels in every
authorization URL) floods the token and introspection endpoints with it and junk
credentials, from the same address as the relying party itself. The flood meets its own
limits (401, then 429 per claimed client id and per IP); the relying party, which
authenticates, is refused nothing: every code exchange and introspection it makes during
the flood succeeds. Over real HTTP, bounded in count; no sleeps."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.flows import obtain_tokens
from tests.relying_party import Browser, RelyingParty

pytestmark = pytest.mark.e2e

ADA = "ada@example.com"
JUNK = 1200  # requests the attacker sends
ATTACKERS = 4


def test_a_flood_with_a_victims_client_id_never_refuses_the_victim(live_server, make_user,
                                                                 make_client):
    make_user(ADA)
    photos = make_client("Photos", resource_server=True)
    rp = RelyingParty(live_server.url, photos.client_id, photos.client_secret,
                      photos.redirect_uri)
    token_url, introspect_url = rp.metadata["token_endpoint"], rp.metadata["introspection_endpoint"]
    answers: dict[int, int] = {}
    lock = threading.Lock()

    def flood(worker: int) -> None:
        with httpx.Client(timeout=10, trust_env=False) as http:
            for i in range(worker, JUNK, ATTACKERS):
                url, data = ((token_url, {"grant_type": "client_credentials"}) if i % 2
                             else (introspect_url, {"token": "junk"}))
                status = http.post(url, data=data,
                                   auth=(photos.client_id, f"guess-{i}")).status_code
                with lock:
                    answers[status] = answers.get(status, 0) + 1

    with ThreadPoolExecutor(ATTACKERS) as pool:
        attackers = [pool.submit(flood, n) for n in range(ATTACKERS)]
        try:
            served = []
            for _ in range(5):  # the victim's own traffic, during the flood
                tokens = obtain_tokens(rp, Browser(live_server.url), ADA)
                seen = rp.introspect(tokens["access_token"])
                served.append((seen.status_code, seen.json().get("active")))
                refreshed = rp.refresh(tokens["refresh_token"])
                served.append((refreshed.status_code, "refresh_token" in refreshed.json()))
        finally:
            for attacker in attackers:
                attacker.result(timeout=120)
    assert served == [(200, True)] * 10
    assert set(answers) <= {401, 429} and answers.get(429, 0) > 0, answers
    assert sum(answers.values()) == JUNK
