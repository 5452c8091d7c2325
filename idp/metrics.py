"""Prometheus counters shared by the domain and the surfaces (no Flask here)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, values

#: Whether this process keeps its values in a file of its own under
#: ``PROMETHEUS_MULTIPROC_DIR``, for /metrics to add up with every other worker's, rather
#: than in its memory. prometheus_client decides once, when first imported, from that
#: environment variable: setting it later changes nothing in this process or in the
#: workers it forks (so ``idp serve`` starts afresh when it has to set it).
MULTIPROCESS = values.ValueClass is not values.MutexValue

REQUESTS = Counter("idp_http_requests_total", "HTTP requests", ["endpoint", "method", "status"])
LATENCY = Histogram(
    "idp_http_request_seconds", "HTTP request latency", ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EVENTS = Counter(
    "idp_events_total",
    "Sessions started/ended/expired, tokens refused or reused, logins failed (audit events)",
    ["event", "reason"],
)
TOKENS = Counter(
    "idp_token_responses_total",
    "Token endpoint answers: issued, or refused with the OAuth error code",
    ["grant_type", "outcome"],
)
LIMITED = Counter(
    "idp_limit_refusals_total",
    "Requests answered 429 by a limit (the setting's name, e.g. CLIENT_AUTH_FAILURES_PER_IP)",
    ["limit"],
)
