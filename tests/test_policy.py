"""The session policy: deadlines at their exact instants, what admins may set, and logins
at the concurrent limit. Pure functions: no database, no app."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from idp import config
from idp.models import Account, EndReason, LoginSession, OnLimit
from idp.policy import (
    LoginDecision,
    PolicyBounds,
    PolicyError,
    SessionPolicy,
    decide_login,
    validate,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
POLICY = SessionPolicy(
    max_duration=timedelta(hours=8),
    idle_timeout=timedelta(hours=1),
    max_concurrent=None,
    on_limit=OnLimit.DENY,
)


def session(created: datetime = T0, last_active: datetime | None = None, sid: str = "s") -> LoginSession:
    return LoginSession(id=sid, created_at=created, last_active_at=last_active or created)


@pytest.fixture(scope="module")
def bounds() -> PolicyBounds:
    return PolicyBounds.from_config(config.load(environ={}))


def check(bounds: PolicyBounds, **values) -> SessionPolicy:
    fields = {"max_duration": "24h", "idle_timeout": "2h", "max_concurrent": "unlimited", "on_limit": "deny"}
    fields.update(values)
    return validate(bounds, **fields)


# -- reading an account --------------------------------------------------------------------------


def test_policy_of_an_account_reads_its_limits_in_seconds():
    account = Account(
        max_session_duration=3600, idle_timeout=600, max_concurrent_sessions=3,
        on_concurrent_limit="end_oldest",
    )
    assert SessionPolicy.of(account) == SessionPolicy(
        timedelta(hours=1), timedelta(minutes=10), 3, OnLimit.END_OLDEST
    )


# -- deadlines -----------------------------------------------------------------------------------


def test_deadlines_count_from_sign_in_and_from_last_activity():
    s = session(last_active=T0 + timedelta(minutes=20))
    assert POLICY.absolute_deadline(s) == T0 + timedelta(hours=8)
    assert POLICY.idle_deadline(s) == T0 + timedelta(hours=1, minutes=20)
    assert POLICY.deadline(s) == T0 + timedelta(hours=1, minutes=20)


def test_the_nearer_deadline_is_the_absolute_one_late_in_a_busy_session():
    s = session(last_active=T0 + timedelta(hours=7, minutes=30))
    assert POLICY.deadline(s) == T0 + timedelta(hours=8)


def test_idle_session_is_active_one_second_before_its_idle_deadline():
    assert POLICY.expiry_reason(session(), T0 + timedelta(hours=1) - SECOND) is None


def test_idle_session_expires_exactly_at_the_deadline_not_a_second_later():
    assert POLICY.expiry_reason(session(), T0 + timedelta(hours=1)) is EndReason.EXPIRED_IDLE


def test_busy_session_is_active_one_second_before_its_maximum_duration():
    s = session(last_active=T0 + timedelta(hours=7, minutes=59))
    assert POLICY.expiry_reason(s, T0 + timedelta(hours=8) - SECOND) is None


def test_busy_session_expires_exactly_at_its_maximum_duration():
    s = session(last_active=T0 + timedelta(hours=7, minutes=59))
    assert POLICY.expiry_reason(s, T0 + timedelta(hours=8)) is EndReason.EXPIRED_DURATION


def test_when_both_deadlines_have_passed_the_duration_is_the_reason_given():
    s = session(last_active=T0 + timedelta(hours=1))
    assert POLICY.expiry_reason(s, T0 + timedelta(days=3)) is EndReason.EXPIRED_DURATION


def test_a_fresh_session_is_active():
    assert POLICY.expiry_reason(session(), T0) is None


# -- what an administrator may set ---------------------------------------------------------------


def test_valid_values_give_a_policy_with_parsed_durations(bounds):
    policy = check(bounds, max_duration="12h", idle_timeout="30m", max_concurrent="3", on_limit="end_oldest")
    assert policy == SessionPolicy(timedelta(hours=12), timedelta(minutes=30), 3, OnLimit.END_OLDEST)


@pytest.mark.parametrize("value", ["unlimited", "", None])
def test_unlimited_concurrent_sessions_is_no_limit(bounds, value):
    assert check(bounds, max_concurrent=value).max_concurrent is None


def test_the_bounds_themselves_are_allowed(bounds):
    low = check(bounds, max_duration="5m", idle_timeout="5m", max_concurrent="1")
    assert (low.max_duration, low.idle_timeout, low.max_concurrent) == (
        timedelta(minutes=5), timedelta(minutes=5), 1
    )
    high = check(bounds, max_duration="720h", idle_timeout="24h", max_concurrent="1000")
    assert (high.max_duration, high.idle_timeout, high.max_concurrent) == (
        timedelta(hours=720), timedelta(hours=24), 1000
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_duration", "4m", "must be between 5 min and 720 h"),
        ("max_duration", "721h", "must be between 5 min and 720 h"),
        ("max_duration", "forever", "not a duration"),
        ("idle_timeout", "299", "must be between 5 min and 24 h"),
        ("idle_timeout", "25h", "must be between 5 min and 24 h"),
        ("idle_timeout", "later", "not a duration"),
        ("max_concurrent", "0", "must be between 1 and 1000"),
        ("max_concurrent", "1001", "must be between 1 and 1000"),
        ("max_concurrent", "lots", "must be a whole number or 'unlimited'"),
        ("max_concurrent", "2.5", "must be a whole number or 'unlimited'"),
        ("on_limit", "kick", "must be 'deny' or 'end_oldest'"),
    ],
)
def test_each_bad_field_is_named_with_what_is_allowed(bounds, field, value, message):
    with pytest.raises(PolicyError) as caught:
        check(bounds, **{field: value})
    assert list(caught.value.errors) == [field]
    assert message in caught.value.errors[field]
    assert field in str(caught.value)


def test_idle_timeout_longer_than_the_session_duration_is_refused_on_the_idle_field(bounds):
    with pytest.raises(PolicyError) as caught:
        check(bounds, max_duration="1h", idle_timeout="2h")
    assert caught.value.errors == {
        "idle_timeout": "must not be longer than the maximum session duration"
    }


def test_idle_timeout_equal_to_the_session_duration_is_allowed(bounds):
    policy = check(bounds, max_duration="1h", idle_timeout="60m")
    assert policy.idle_timeout == policy.max_duration


def test_every_bad_field_is_reported_at_once(bounds):
    with pytest.raises(PolicyError) as caught:
        validate(bounds, max_duration="1m", idle_timeout="99h", max_concurrent="-3", on_limit="?")
    assert set(caught.value.errors) == {"max_duration", "idle_timeout", "max_concurrent", "on_limit"}


def test_tighter_operator_bounds_are_what_admins_are_held_to():
    tight = PolicyBounds.from_config(
        config.load(
            environ={
                "IDP_SESSION_DURATION_MAX": "12h",
                "IDP_SESSION_DURATION": "12h",
                "IDP_CONCURRENT_SESSIONS_MAX": "5",
            }
        )
    )
    with pytest.raises(PolicyError) as caught:
        check(tight, max_duration="24h", max_concurrent="6")
    assert caught.value.errors["max_duration"] == "must be between 5 min and 12 h"
    assert caught.value.errors["max_concurrent"] == "must be between 1 and 5"


# -- logging in at the concurrent limit ----------------------------------------------------------


def limited(limit: int | None, on_limit: OnLimit) -> SessionPolicy:
    return SessionPolicy(timedelta(hours=8), timedelta(hours=1), limit, on_limit)


def test_logins_below_the_limit_are_allowed():
    decision = decide_login(limited(2, OnLimit.DENY), [session(sid="a")])
    assert decision.outcome is LoginDecision.ALLOW
    assert decision.to_end == ()


def test_unlimited_policy_allows_any_number_of_sessions():
    active = [session(sid=str(i)) for i in range(50)]
    assert decide_login(limited(None, OnLimit.DENY), active).outcome is LoginDecision.ALLOW


def test_at_the_limit_a_deny_policy_refuses_the_new_login_and_ends_nothing():
    decision = decide_login(limited(2, OnLimit.DENY), [session(sid="a"), session(sid="b")])
    assert decision.outcome is LoginDecision.DENY
    assert decision.to_end == ()


def test_at_the_limit_end_oldest_ends_the_least_recently_active_not_the_first_created():
    first = session(T0, last_active=T0 + timedelta(minutes=50), sid="first")
    second = session(T0 + timedelta(minutes=5), last_active=T0 + timedelta(minutes=10), sid="second")
    third = session(T0 + timedelta(minutes=20), last_active=T0 + timedelta(minutes=30), sid="third")
    decision = decide_login(limited(3, OnLimit.END_OLDEST), [first, third, second])
    assert decision.outcome is LoginDecision.END_OLDEST
    assert [s.id for s in decision.to_end] == ["second"]


def test_equal_activity_ends_the_earlier_sign_in():
    late = session(T0 + timedelta(minutes=5), last_active=T0 + timedelta(minutes=30), sid="late")
    early = session(T0, last_active=T0 + timedelta(minutes=30), sid="early")
    decision = decide_login(limited(2, OnLimit.END_OLDEST), [late, early])
    assert [s.id for s in decision.to_end] == ["early"]


def test_after_the_limit_was_lowered_enough_sessions_end_to_fit_the_new_one():
    active = [session(T0, last_active=T0 + timedelta(minutes=m), sid=f"m{m}") for m in (40, 10, 30, 20)]
    decision = decide_login(limited(2, OnLimit.END_OLDEST), active)
    assert [s.id for s in decision.to_end] == ["m10", "m20", "m30"]
