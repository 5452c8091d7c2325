"""`/metrics` of a real ``idp serve`` with two gunicorn workers (issue 20): one scrape,
over HTTP, adds up what every worker answered, the workers that exited included, and
has every family the README's "Watch:" list tells operators to alert on. Labels take
bounded values whatever clients send: a made-up method is ``other``, a made-up path is
``unmatched``. Real processes on loopback; every wait is bounded; nothing sleeps for time
to pass.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PASSWORD
from tests.e2e import processes
from tests.relying_party import csrf_token

pytestmark = pytest.mark.e2e

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
TIMEOUT = 20.0
# One wrong password locks the address (the next attempt is throttled), and the machine
# client may have three tokens an hour (the fourth request is refused by that cap).
ENV = {"IDP_LOGIN_MAX_FAILURES": "1", "IDP_LOGIN_DELAY_AFTER": "1",
       "IDP_TOKEN_RATE_LIMIT": "3 per hour"}
JUNK_METHOD = "FOOBAR"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    yield from processes.served_database(request.param, tmp_path, "metrics")


class Traffic:
    """Requests to the provider, each on a new connection (so any worker may answer),
    counted by the endpoint that answers them."""

    def __init__(self, base: str):
        self.http = httpx.Client(base_url=base, timeout=TIMEOUT, follow_redirects=False,
                                 headers={"Connection": "close"})
        self.sent: Counter[str] = Counter()

    def send(self, endpoint: str, method: str, path: str, **kwargs) -> httpx.Response:
        self.sent[endpoint] += 1
        return self.http.request(method, path, **kwargs)

    def token(self, client: tuple[str, str], **form: str) -> httpx.Response:
        return self.send("oidc.token", "POST", "/oauth/token", data=form, auth=client)

    def every_kind(self, machine: tuple[str, str], app: tuple[str, str]) -> None:
        """Discovery, a token issued and one refused, a refresh refused, an introspection
        answered and one refused, a made-up method and a made-up path."""
        assert self.send("oidc.discovery", "GET",
                         "/.well-known/openid-configuration").status_code == 200
        issued = self.token(machine, grant_type="client_credentials")
        assert issued.status_code == 200, issued.text
        wrong = self.token((machine[0], "not-the-secret"), grant_type="client_credentials")
        assert wrong.json()["error"] == "invalid_client"
        refused = self.token(app, grant_type="refresh_token", refresh_token="bogus.token")
        assert refused.json()["error"] == "invalid_grant", refused.text
        answer = self.send("oidc.introspect", "POST", "/oauth/introspect", auth=machine,
                           data={"token": issued.json()["access_token"]})
        assert answer.status_code == 200 and answer.json()["active"] is True, answer.text
        assert self.send("oidc.introspect", "POST", "/oauth/introspect",
                         auth=(machine[0], "not-the-secret"),
                         data={"token": "x"}).status_code == 401
        assert self.send("unmatched", JUNK_METHOD, "/healthz").status_code == 405
        assert self.send("unmatched", "GET", f"/no-such-page-{secrets.token_hex(4)}"
                         ).status_code == 404

    def sign_in_refused(self, email: str) -> None:
        """A wrong password, then the right one while the address is locked."""
        form = self.send("auth.login", "GET", "/login")
        assert form.status_code == 200
        for password, status in (("wrong password", 401), (PASSWORD, 429)):
            answer = self.send("auth.login", "POST", "/login", data={
                "csrf_token": csrf_token(form.text), "email": email, "password": password})
            assert answer.status_code == status, answer.text[:300]
            form = answer

    def close(self) -> None:
        self.http.close()


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of one scrape, by name and labels."""
    answer = httpx.get(f"{url}/metrics", timeout=TIMEOUT)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items()
               if sample == name and wanted <= have)


def watched_metrics() -> set[str]:
    """The metric names in the README's "Watch:" list."""
    watch = re.search(r"\*\*Watch:\*\*(.*?)\.\n", README, re.S)
    assert watch, "the README's metrics paragraph has no **Watch:** list"
    return set(re.findall(r"\bidp_[a-z_]+", watch.group(1)))


def test_one_scrape_adds_up_every_worker_with_bounded_labels(database_url):
    with processes.serve(database_url, workers=2, env=ENV) as provider:
        provider.create_account("acme")
        email = "ada@example.com"
        provider.create_user(email, PASSWORD, account="acme")
        machine = provider.create_client("Backups", "http://127.0.0.1:9999/callback",
                                         extra=("--client-credentials",))
        app = provider.create_client("Photos", "http://127.0.0.1:9999/callback")
        folder = Path(provider.env["IDP_INSTANCE_DIR"]) / "prometheus"
        traffic = Traffic(provider.url)
        try:
            traffic.every_kind(machine, app)
            traffic.sign_in_refused(email)

            # Every worker that answered so far exits (gunicorn starts others): what
            # follows is answered by other processes, and what they counted must stay.
            first = provider.worker_pids()
            for pid in first:
                os.kill(pid, signal.SIGTERM)
            second = provider.wait_ready(TIMEOUT, workers=2, exclude=tuple(first))

            traffic.every_kind(machine, app)
            assert traffic.token(machine, grant_type="client_credentials").status_code == 200
            capped = traffic.token(machine, grant_type="client_credentials")
            assert capped.status_code == 429, capped.text  # the 4th this hour
        finally:
            traffic.close()
        samples = scrape(provider.url)
        written = {int(m.group(1)) for path in folder.glob("*.db")
                   if (m := re.fullmatch(r"[a-z_]+_(\d+)\.db", path.name))}

    # Both generations of workers wrote their counts, and the one scrape has them all.
    assert written & set(first) and written & set(second), (written, first, second)
    requests = {endpoint: total(samples, "idp_http_requests_total", endpoint=endpoint)
                for endpoint in traffic.sent}
    assert requests == dict(traffic.sent)
    readiness = total(samples, "idp_http_requests_total", endpoint="ops.readyz")
    assert total(samples, "idp_http_requests_total") == sum(traffic.sent.values()) + readiness
    for endpoint in ("oidc.token", "oidc.introspect"):  # latency histograms, for their p99
        assert total(samples, "idp_http_request_seconds_count",
                     endpoint=endpoint) == traffic.sent[endpoint]
        assert total(samples, "idp_http_request_seconds_bucket", endpoint=endpoint,
                     le="+Inf") == traffic.sent[endpoint]

    # Labels: a made-up method is "other", a made-up path is no path at all.
    assert total(samples, "idp_http_requests_total", endpoint="unmatched", method="other",
                 status="405") == 2
    assert total(samples, "idp_http_requests_total", endpoint="unmatched", method="GET",
                 status="404") == 2
    label_values = {value for _, labels in samples for _, value in labels}
    assert {method for _, labels in samples for name, method in labels if name == "method"} \
        <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert not any(JUNK_METHOD in value or "no-such-page" in value for value in label_values)
    assert all(re.fullmatch(r"[1-5]\d\d", status) for _, labels in samples
               for name, status in labels if name == "status")

    # What the README's "Watch:" list names, from both generations of workers.
    tokens = "idp_token_responses_total"
    assert total(samples, tokens, grant_type="client_credentials", outcome="issued") == 3
    assert total(samples, tokens, grant_type="client_credentials", outcome="invalid_client") == 2
    assert total(samples, tokens, grant_type="refresh_token", outcome="invalid_grant") == 2
    assert total(samples, "idp_events_total", event="login.failed") == 1
    assert total(samples, "idp_events_total", event="login.throttled") == 1
    assert total(samples, "idp_limit_refusals_total", limit="TOKEN_RATE_LIMIT") == 1
    assert samples[("idp_backchannel_given_up", frozenset())] == 0
    assert samples[("idp_backchannel_pending", frozenset())] == 0
    families = {name for name, _ in samples}
    watched = watched_metrics()
    assert {"idp_http_requests_total", "idp_http_request_seconds", "idp_backchannel_given_up",
            tokens, "idp_events_total", "idp_limit_refusals_total"} <= watched
    for name in watched:
        assert any(family == name or family.startswith(f"{name}_") for family in families), name
