"""Authenticator-app codes (TOTP, RFC 6238) and recovery codes, with the injectable clock:
the current step and one on either side are accepted, each code once (even when two
requests race with it), a wrong one never; recovery codes work once; secrets are sealed
at rest under the provider's secret key."""

from __future__ import annotations

from datetime import timedelta

import pyotp
import pytest
import sqlalchemy as sa

from idp import accounts, factors
from idp.models import AuthFactor, RecoveryCode, db
from tests.conftest import race

STEP = timedelta(seconds=30)


@pytest.fixture
def ada(ctx, clock):
    account = accounts.create_account("acme", now=clock.now(), max_duration=86400,
                                      idle_timeout=7200)
    user = accounts.create_user(account, email="ada@example.com", password="a long password",
                                role="member", name=None, hasher=ctx.extensions["idp"].passwords,
                                now=clock.now())
    db.session.commit()
    return user


@pytest.fixture
def sealer(ctx):
    return ctx.extensions["idp"].sealer


def code_at(secret: str, when) -> str:
    return pyotp.TOTP(secret).at(int(when.timestamp()))


@pytest.fixture
def enrolled(ada, sealer, clock):
    started = factors.start_totp(ada, issuer_name="id.example", sealer=sealer, now=clock.now())
    codes = factors.confirm_totp(ada, started.factor_id, code_at(started.secret, clock.now()),
                                 sealer=sealer, now=clock.now())
    db.session.commit()
    assert codes is not None and len(codes) == 10
    return started.secret, codes


def test_enrolment_needs_a_right_first_code_and_stores_the_secret_sealed(ada, sealer, clock):
    started = factors.start_totp(ada, issuer_name="id.example", sealer=sealer, now=clock.now())
    assert started.uri.startswith("otpauth://totp/id.example:ada%40example.com?secret=")
    assert started.qr.startswith("data:image/svg+xml;base64,")
    assert factors.confirm_totp(ada, started.factor_id, "000000", sealer=sealer,
                                now=clock.now()) is None
    assert not factors.has_second_factor(ada)
    row = db.session.get(AuthFactor, started.factor_id)
    assert started.secret not in row.secret_sealed
    assert sealer.open(row.secret_sealed) == started.secret
    assert factors.Sealer("another secret key" * 2).open(row.secret_sealed) is None
    assert factors.confirm_totp(ada, started.factor_id, code_at(started.secret, clock.now()),
                                sealer=sealer, now=clock.now()) is not None
    assert factors.has_second_factor(ada)


def test_the_current_step_and_one_either_side_are_accepted_once_each(ada, sealer, clock,
                                                                      enrolled):
    secret, _ = enrolled
    clock.advance(minutes=5)
    now = clock.now()
    for offset in (-STEP, timedelta(0), STEP):
        assert factors.check_code(ada, code_at(secret, now + offset), sealer=sealer,
                                  now=now) == "totp", offset
    assert factors.check_code(ada, code_at(secret, now + STEP), sealer=sealer, now=now) is None


def test_a_used_code_and_older_ones_are_refused(ada, sealer, clock, enrolled):
    secret, _ = enrolled
    clock.advance(minutes=5)
    now = clock.now()
    current = code_at(secret, now)
    assert factors.check_code(ada, current, sealer=sealer, now=now) == "totp"
    assert factors.check_code(ada, current, sealer=sealer, now=now) is None
    # The previous step's code came before the one used: refused too.
    assert factors.check_code(ada, code_at(secret, now - STEP), sealer=sealer, now=now) is None


def test_codes_two_steps_away_and_junk_are_refused(ada, sealer, clock, enrolled):
    secret, _ = enrolled
    clock.advance(minutes=5)
    now = clock.now()
    for wrong in (code_at(secret, now + 2 * STEP), code_at(secret, now - 2 * STEP), "12345",
                  "abcdef", "", "1234567"):
        assert factors.check_code(ada, wrong, sealer=sealer, now=now) is None, wrong


def test_two_requests_racing_with_one_code_pass_once(app, ada, sealer, clock, enrolled):
    secret, _ = enrolled
    clock.advance(minutes=5)
    code = code_at(secret, clock.now())
    user_id = ada.id
    answers = race(app, lambda: factors.check_code(db.session.get(type(ada), user_id), code,
                                                   sealer=sealer, now=clock.now()))
    assert sorted(answers, key=str) == [None, "totp"]


def test_recovery_codes_work_once_and_are_stored_as_hashes(ada, sealer, clock, enrolled):
    _, codes = enrolled
    assert factors.recovery_codes_left(ada) == 10
    stored = {row.code_hash for row in db.session.scalars(sa.select(RecoveryCode))}
    assert not any(code.replace("-", "") in stored for code in codes)
    assert factors.check_code(ada, codes[0].upper(), sealer=sealer, now=clock.now()) == "recovery"
    assert factors.check_code(ada, codes[0], sealer=sealer, now=clock.now()) is None
    assert factors.recovery_codes_left(ada) == 9
    assert factors.check_code(ada, "abcd-efgh-ij", sealer=sealer, now=clock.now()) is None
