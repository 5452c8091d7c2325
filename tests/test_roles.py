"""The two rules of ``roles`` as plain functions: the ordering (``may_manage``) and the
owner every account keeps (``leaves_an_owner``). The surfaces' matrix is in
``tests/web/test_roles.py``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from idp.models import User
from idp.roles import leaves_an_owner, may_manage

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def user(id_: int, role: str, *, account: int = 1, disabled: bool = False) -> User:
    return User(id=id_, account_id=account, role=role, disabled_at=NOW if disabled else None)


@pytest.mark.parametrize(("actor", "target", "allowed"), [
    ("owner", "owner", True), ("owner", "admin", True), ("owner", "member", True),
    ("admin", "owner", False), ("admin", "admin", False), ("admin", "member", True),
    ("member", "owner", False), ("member", "admin", False), ("member", "member", False),
])
def test_the_ordering(actor, target, allowed):
    assert may_manage(user(1, actor), user(2, target)) is allowed


@pytest.mark.parametrize("actor", ["owner", "admin", "member"])
def test_nobody_acts_across_accounts_or_while_disabled(actor):
    assert not may_manage(user(1, actor), user(2, "member", account=2))
    assert not may_manage(user(1, actor, disabled=True), user(2, "member"))


def test_acting_on_oneself_and_the_roles_one_may_grant():
    owner, admin, member = user(1, "owner"), user(2, "admin"), user(3, "member")
    assert may_manage(admin, admin) and may_manage(owner, owner)
    assert not may_manage(member, member)  # members have no admin surface at all
    assert may_manage(admin, admin, "member")
    assert not may_manage(admin, admin, "owner") and not may_manage(admin, admin, "admin")
    assert not may_manage(admin, member, "admin") and not may_manage(admin, member, "owner")
    assert all(may_manage(owner, target, role) for target in (owner, admin, member)
               for role in ("owner", "admin", "member"))


def test_the_last_enabled_owner_stays():
    olive, otto, mia = user(1, "owner"), user(2, "owner"), user(3, "member")
    both = {1, 2}
    assert leaves_an_owner(olive, both, disabled=True, role="owner")
    assert leaves_an_owner(olive, both, disabled=False, role="member")
    assert not leaves_an_owner(olive, {1}, disabled=True, role="owner")
    assert not leaves_an_owner(olive, {1}, disabled=False, role="admin")
    assert leaves_an_owner(olive, {1}, disabled=False, role="owner")
    # Someone who is not an enabled owner takes nothing away, even from an account that
    # has none left.
    assert leaves_an_owner(mia, set(), disabled=True, role="member")
    assert leaves_an_owner(otto, {1}, disabled=True, role="member")
