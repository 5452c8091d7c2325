"""The retry discipline every outbox shares (back-channel logout notices, email).

A delivery written in the transaction of the event that causes it is attempted until it
is delivered or given up: the next attempt waits twice as long as the one before (with
jitter, so a mail server or relying party coming back is not hit by every node at once),
never longer than ``longest``, and nothing is attempted past ``give_up_after``.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta


def after_failure(row, *, now: datetime, first: timedelta, longest: timedelta,
                  give_up_after: timedelta) -> None:
    """A delivery (a ``LogoutDelivery``, a ``MailMessage``) whose attempt number
    ``row.attempts`` just failed: its next attempt, or given up."""
    delay = min(first * (2 ** (row.attempts - 1)), longest)
    delay = delay * (0.8 + 0.4 * random.random())  # noqa: S311 - jitter, not a secret
    if now + delay - row.created_at > give_up_after:
        row.given_up_at = now
    else:
        row.next_attempt_at = now + delay
