"""OpenID Connect provider whose core is login-session tracking."""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from flask import Flask
from flask_migrate import Migrate

from . import config as config_module
from . import counters, devices, factors, passwords, postgres, sqlite
from .clock import Clock
from .keys import KeyStore
from .lockout import Lockout
from .models import db
from .runtime import Services
from .signing import Signer

MIGRATIONS_DIR = str(Path(__file__).parent / "migrations")
migrate = Migrate()


def create_app(overrides: dict | None = None, *, clock: Clock | None = None) -> Flask:
    """Build an app. ``overrides`` take precedence over ``IDP_*`` variables."""
    settings = config_module.load(overrides)
    app = Flask(__name__, instance_path=str(settings["INSTANCE_DIR"]))
    app.config.update(settings)
    app.config.update(
        SECRET_KEY=config_module.ensure_secret_key(settings),
        SQLALCHEMY_DATABASE_URI=settings["DATABASE_URL"],
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(settings["DATABASE_URL"]),
        SESSION_COOKIE_NAME="idp" if settings["INSECURE_COOKIES"] else "__Host-idp",
        SESSION_COOKIE_SECURE=not settings["INSECURE_COOKIES"],
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=1024 * 1024,
        MAX_FORM_MEMORY_SIZE=512 * 1024,
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_SSL_STRICT=False,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.debug = False  # never from configuration: `idp serve --dev` is the only way
    app.logger.setLevel(logging.INFO)
    # Authlib logs issued tokens at DEBUG ("Issue token …"): never let that through.
    logging.getLogger("authlib").setLevel(logging.INFO)
    _setup_database(app)
    _setup_services(app, settings, clock or Clock())
    from .web import register

    register(app)
    return app


def _engine_options(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    options: dict = {"pool_size": 10, "max_overflow": 10}  # (stale connections: postgres.py)
    if url.startswith("postgresql") and "connect_timeout" not in sa.engine.make_url(url).query:
        # A server that accepts connections but never answers (hung, overloaded) must not
        # hold a request, and soon every thread, forever: give up connecting (503).
        options["connect_args"] = {"connect_timeout": 5}
    return options


def _setup_database(app: Flask) -> None:
    url: str = app.config["SQLALCHEMY_DATABASE_URI"]
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR, render_as_batch=True)
    with app.app_context():
        if url.startswith("sqlite"):
            sqlite.install(db.engine)
        elif url.startswith("postgresql"):
            postgres.install(db.engine)


def _setup_services(app: Flask, settings: dict, clock: Clock) -> None:
    retention = max(
        settings["ID_TOKEN_LIFETIME"], settings["ACCESS_TOKEN_LIFETIME"]
    ) + settings["ACCESS_TOKEN_LIFETIME"]
    keys = KeyStore(
        settings["KEYS_DIR"], retention=retention,
        reload_interval=settings["KEYS_RELOAD_INTERVAL"],
        jwks_max_age=settings["JWKS_MAX_AGE"],
    )
    hasher = passwords.make_hasher(
        settings["ARGON2_TIME_COST"], settings["ARGON2_MEMORY_COST"], settings["ARGON2_PARALLELISM"]
    )
    keys.ensure(clock.now())
    counted = counters.strategy_for(settings["RATELIMIT_STORAGE_URI"],
                                    Path(settings["INSTANCE_DIR"]) / "counters.db")
    interval = settings["RATE_LIMIT_SYNC"].total_seconds()
    batched = counters.SharedCounts(counted, interval) \
        if counted.shared_between_nodes and interval > 0 else None
    app.extensions["idp"] = Services(
        config=app.config,
        clock=clock,
        keys=keys,
        signer=Signer(keys),
        passwords=passwords.Passwords(hasher, concurrency=settings["ARGON2_CONCURRENCY"]),
        locator=devices.Locator(settings["GEOIP_DATABASE"]),
        limits=counters.Limits(counted, app.config, batched=batched),
        lockout=Lockout(counted, max_failures=settings["LOGIN_MAX_FAILURES"],
                        window=int(settings["LOGIN_LOCKOUT"].total_seconds()),
                        delay_after=settings["LOGIN_DELAY_AFTER"]),
        sealer=factors.Sealer(app.config["SECRET_KEY"]),
    )
    from .oauth import logout, server

    app.extensions["idp.oauth"] = server.build(app)
    logout.install(app)
