"""Back-channel logout delivery: signed logout tokens POSTed to relying parties.

Tried right after the commit that ended the session (in a small thread pool, so
the user's response does not wait), then by the worker (``idp worker``) with
exponential backoff until delivered or given up. Redirects are never followed and
every call has a short timeout: a relying party cannot point us elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import sqlalchemy as sa
from flask import Flask, current_app, has_app_context

from .. import backchannel, passwords
from ..models import db

log = logging.getLogger("idp.logout")


class Deliverer:
    def __init__(self, app: Flask):
        self.app = app
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="logout")
        self.pending = 0
        self.lock = threading.Condition()

    # -- the attempt itself
    def attempt(self, delivery_id: int) -> str:
        """One attempt at one delivery: 'delivered', 'retry', 'given_up' or 'skipped'."""
        services = self.app.extensions["idp"]
        cfg = self.app.config
        now = services.clock.now()
        delivery = backchannel.claim(delivery_id, now=now, lease=cfg["BACKCHANNEL_TIMEOUT"] * 3)
        if delivery is None:
            return "skipped"
        claims = backchannel.logout_claims(
            delivery, issuer=cfg["ISSUER"], now=now, jti=passwords.new_id(),
            lifetime=cfg["LOGOUT_TOKEN_LIFETIME"],
        )
        token = services.signer.sign(claims, alg=delivery.client.id_token_signed_response_alg
                                     or "RS256", typ="logout+jwt", now=now)
        status, error = None, None
        started = time.monotonic()
        try:
            with httpx.Client(timeout=cfg["BACKCHANNEL_TIMEOUT"].total_seconds(),
                              follow_redirects=False, trust_env=False) as http:
                response = http.post(delivery.uri, data={"logout_token": token},
                                     headers={"Cache-Control": "no-store"})
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        duration = int((time.monotonic() - started) * 1000)
        backchannel.record(
            delivery, now=services.clock.now(), status=status, error=error,
            duration_ms=duration, retry_base=cfg["BACKCHANNEL_RETRY_BASE"],
            retry_max=cfg["BACKCHANNEL_RETRY_MAX"], give_up_after=cfg["BACKCHANNEL_GIVE_UP"],
        )
        db.session.commit()
        if delivery.delivered_at:
            return "delivered"
        log.info("back-channel logout to client %s failed (%s)", delivery.client_id, error)
        return "given_up" if delivery.given_up_at else "retry"

    def _run(self, delivery_id: int) -> None:
        try:
            with self.app.app_context():
                try:
                    self.attempt(delivery_id)
                except sa.exc.SQLAlchemyError:
                    log.exception("back-channel logout attempt %s failed", delivery_id)
                finally:
                    db.session.remove()
        finally:
            with self.lock:
                self.pending -= 1
                self.lock.notify_all()

    def submit(self, delivery_ids: list[int]) -> None:
        with self.lock:
            self.pending += len(delivery_ids)
        for delivery_id in delivery_ids:
            self.pool.submit(self._run, delivery_id)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait for submitted attempts (tests, shutdown); bounded."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(left)
        return True

    # -- the worker
    def run_due(self, limit: int = 100) -> dict:
        counts = {"attempted": 0, "delivered": 0, "retry": 0, "given_up": 0}
        now = self.app.extensions["idp"].clock.now()
        for delivery_id in backchannel.due(now, limit):
            outcome = self.attempt(delivery_id)
            if outcome == "skipped":
                continue
            counts["attempted"] += 1
            counts[outcome] += 1
        return counts


def _after_commit(session) -> None:
    pending = session.info.pop(backchannel.PENDING_KEY, None)
    if not pending or not has_app_context():
        return
    deliverer = current_app.extensions.get("idp.logout")
    if deliverer is not None and current_app.config["BACKCHANNEL_IMMEDIATE"]:
        deliverer.submit([d.id for d in pending])


def _after_rollback(session, _previous) -> None:
    session.info.pop(backchannel.PENDING_KEY, None)


# One listener for every app in the process; each commit is dispatched to the app
# whose context it happened in.
sa.event.listen(sa.orm.Session, "after_commit", _after_commit)
sa.event.listen(sa.orm.Session, "after_soft_rollback", _after_rollback)


def install(app: Flask) -> Deliverer:
    """Attempt each delivery right after the commit that wrote it."""
    deliverer = Deliverer(app)
    app.extensions["idp.logout"] = deliverer
    return deliverer
