"""Password guessing, per account: growing delays, then a temporary lockout.

Every check of a password against an account — a sign-in, the current password on the
password-change form — first reserves one attempt on the account's counter (``begin``),
before argon2 runs. The reservation is one atomic increment on the shared store
(``counters``), so guesses sent in parallel, to any worker or node, never get more checks
than the limit: with a limit of 5 the sixth concurrent guess is refused before its check.
A right password clears the counter (``succeeded``); a wrong one leaves its reservation
counted as a failure (``failed``), and from ``delay_after`` failures on, the next attempt
must wait 1, 2, 4 … seconds. Keys are the normalised email whether or not the account
exists, so the answers never tell which accounts exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from .counters import ResilientStrategy


@dataclass(frozen=True)
class Attempt:
    """The answer to ``begin``: go ahead (``number``: this attempt's place among the
    window's failures), or wait ``retry_after`` seconds (``locked``: the limit is reached,
    otherwise a delay after a failure)."""

    number: int = 0
    locked: bool = False
    retry_after: int = 0

    @property
    def allowed(self) -> bool:
        return self.number > 0


class Lockout:
    """At most ``max_failures`` failed password checks per account within ``window``
    seconds, however many workers and nodes answer."""

    def __init__(self, strategy: ResilientStrategy, *, max_failures: int, window: int,
                 delay_after: int = 2):
        self.store = strategy
        self.max_failures = max_failures
        self.window = window
        self.delay_after = delay_after

    @staticmethod
    def _keys(email: str) -> tuple[str, str, str]:
        """The account's reservations (checks in progress and failures), its failures
        alone (what says "locked" rather than "busy"), and its delay."""
        return (f"lockout:reserved:{email}", f"lockout:failures:{email}",
                f"lockout:delay:{email}")

    def begin(self, email: str) -> Attempt:
        """Reserve one password check for ``email``, or say how long to wait: until the
        lockout ends, or a second while other checks of this account are in progress."""
        reserved, failures, delay = self._keys(email)
        if self.store.get(delay) > 0:
            return Attempt(retry_after=self.store.seconds_left(delay))
        number = self.store.incr(reserved, self.window)
        if number > self.max_failures:
            self.store.incr(reserved, self.window, -1)  # a refusal is not a check
            if self.store.get(failures) >= self.max_failures:
                return Attempt(locked=True, retry_after=self.store.seconds_left(failures))
            return Attempt(retry_after=1)
        return Attempt(number)

    def failed(self, email: str, attempt: Attempt) -> bool:
        """The password was wrong: the reservation stays, as a failure, and from
        ``delay_after`` failures on the next attempt waits 2^(failures - delay_after) s.
        True when this failure reached the limit (the account is now locked)."""
        _reserved, failures, delay = self._keys(email)
        count = self.store.incr(failures, self.window)
        if self.delay_after <= count < self.max_failures:
            self.store.forget(delay)
            self.store.incr(delay, 2 ** (count - self.delay_after))
        return count >= self.max_failures

    def passed(self, email: str) -> None:
        """The password was right but a second factor is still to come: the reservation
        is given back and the failures stay, so guessing the second factor counts on the
        same lockout (a right password never clears it)."""
        self.store.incr(self._keys(email)[0], self.window, -1)

    def succeeded(self, email: str) -> None:
        """The right password: the counters start again."""
        self.reset(email)

    def locked(self, email: str) -> bool:
        return self.store.get(self._keys(email)[1]) >= self.max_failures

    def reset(self, email: str) -> None:
        """A right password, or an administrator's "Clear lockout": on every worker."""
        for key in self._keys(email):
            self.store.forget(key)
