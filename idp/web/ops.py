"""Operations: liveness and readiness probes, Prometheus metrics, structured logs.

Metrics use prometheus-client; under gunicorn PROMETHEUS_MULTIPROC_DIR must be set before
the processes start (``idp serve`` sees to it) so every worker's counters add up in one
scrape. Every label has a bounded set of values, whatever clients send: the route's
endpoint name (never the path), a known method or ``other``, the status code. Logs are
JSON, one object a line, with the request id; paths are logged without query strings, so
no code, token or password ever reaches a log line.
"""

from __future__ import annotations

import logging
import os
import random
import time

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from flask.logging import default_handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from pythonjsonlogger.json import JsonFormatter

from ..metrics import LATENCY, MULTIPROCESS, REQUESTS
from ..models import LogoutDelivery, db

bp = Blueprint("ops", __name__)
access_log = logging.getLogger("idp.access")

#: Methods counted as themselves; anything else a client sends is ``other`` (one series,
#: however many made-up methods arrive).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@bp.get("/healthz")
def healthz():
    """The process answers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """The database answers and signing keys are loaded."""
    checks = {}
    try:
        db.session.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except sa.exc.SQLAlchemyError:
        checks["database"] = "unreachable"
    finally:
        db.session.rollback()
    try:
        services = current_app.extensions["idp"]
        services.keys.current("RS256", now=services.clock.now())
        checks["keys"] = "ok"
    except Exception:  # noqa: BLE001 - any failure means not ready
        checks["keys"] = "missing"
    ready = all(v == "ok" for v in checks.values())
    if current_app.config.get("REDIS_URL"):
        # Shown, not required: rate limits fall back to this node's memory meanwhile.
        checks["redis"] = "ok" if _redis_answers() else "unreachable (local counters in use)"
    return jsonify({"status": "ready" if ready else "not ready", **checks}), 200 if ready else 503


def _redis_answers() -> bool:
    import redis

    client = current_app.extensions.get("idp.redis")
    if client is None:
        client = redis.Redis.from_url(current_app.config["REDIS_URL"], socket_timeout=0.5,
                                      socket_connect_timeout=0.5)
        current_app.extensions["idp.redis"] = client
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@bp.get("/metrics")
def metrics():
    registry = DEFAULT_REGISTRY
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    lines = [generate_latest(registry).decode()]
    try:
        pending, failed = db.session.execute(
            sa.select(
                sa.func.count().filter(LogoutDelivery.delivered_at.is_(None),
                                       LogoutDelivery.given_up_at.is_(None)),
                sa.func.count().filter(LogoutDelivery.given_up_at.is_not(None)),
            )
        ).one()
        lines.append(
            "# HELP idp_backchannel_pending Back-channel logout notices not yet delivered\n"
            "# TYPE idp_backchannel_pending gauge\n"
            f"idp_backchannel_pending {pending}\n"
            "# HELP idp_backchannel_given_up Back-channel logout notices given up\n"
            "# TYPE idp_backchannel_given_up gauge\n"
            f"idp_backchannel_given_up {failed}\n"
        )
    except sa.exc.SQLAlchemyError:
        db.session.rollback()
    return Response("".join(lines), mimetype=CONTENT_TYPE_LATEST)


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.request_id = g.get("request_id", "-")
        except RuntimeError:
            record.request_id = "-"
        return True


def setup_logging() -> None:
    """JSON lines on stderr for the idp loggers (once per process)."""
    root = logging.getLogger("idp")
    root.removeHandler(default_handler)  # Flask's plain-text handler: one format only
    if getattr(root, "_idp_configured", False):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(
        "{asctime}{levelname}{name}{message}{request_id}", style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
    ))
    handler.addFilter(RequestContextFilter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    root._idp_configured = True


#: Its own generator (code that seeds the shared one, as test tools do, would repeat ids),
#: seeded again in every forked worker.
_REQUEST_IDS = random.Random()  # noqa: S311 (log correlation, not a secret)
os.register_at_fork(after_in_child=_REQUEST_IDS.seed)


def install(app: Flask) -> None:
    setup_logging()
    app.register_blueprint(bp)

    @app.before_request
    def start_timer():
        context = g._get_current_object()
        context.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        # An id to correlate log lines, not a secret: no system call (os.urandom released
        # the GIL on every request, and each thread then waited to get it back).
        context.request_id = incoming[:64] if incoming.isprintable() and incoming else \
            f"{_REQUEST_IDS.getrandbits(64):016x}"

    @app.after_request
    def observe(response):
        context, current = g._get_current_object(), request._get_current_object()
        endpoint = current.endpoint or "unmatched"
        elapsed = time.perf_counter() - context.get("started", time.perf_counter())
        method = current.method if current.method in KNOWN_METHODS else "other"
        REQUESTS.labels(endpoint, method, str(response.status_code)).inc()
        LATENCY.labels(endpoint).observe(elapsed)
        response.headers["X-Request-ID"] = context.get("request_id", "")
        if app.config.get("ACCESS_LOG"):
            access_log.info("request", extra={
                "method": current.method, "path": current.path,
                "status": response.status_code, "ms": round(elapsed * 1000, 2),
                "endpoint": endpoint,
            })
        return response
