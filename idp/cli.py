"""`idp`, the operator's tool. Every command takes ``--json`` (one JSON object on
stdout) and fails with one line on stderr and a non-zero exit on bad input."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import sys
from pathlib import Path

import click
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from . import accounts
from .config import ConfigError


class CommandError(click.ClickException):
    """A failure the operator can fix; its message says how."""


def _app():
    from . import create_app

    try:
        return create_app()
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def _emit(as_json: bool, data: dict, text: str) -> None:
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
    else:
        click.echo(text)


def _new_account(app, name: str):
    services = app.extensions["idp"]
    return accounts.create_account(
        name,
        now=services.clock.now(),
        max_duration=int(app.config["SESSION_DURATION"].total_seconds()),
        idle_timeout=int(app.config["IDLE_TIMEOUT"].total_seconds()),
    )


def _read_json(handle) -> dict:
    try:
        return json.load(handle)
    except ValueError as exc:
        raise CommandError(f"{handle.name} is not JSON: {exc}") from None


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")


@click.group(help="Operate the identity provider. Every command accepts --json.")
def cli() -> None:
    pass


def _init(app) -> dict:
    from flask_migrate import upgrade

    from . import MIGRATIONS_DIR
    from .runtime import Services

    with app.app_context():
        upgrade(directory=MIGRATIONS_DIR)
        services: Services = app.extensions["idp"]
        services.keys.ensure(services.clock.now())
        kids = [k.kid for k in services.keys.published(services.clock.now())]
    return {
        "database": _safe_url(app.config["SQLALCHEMY_DATABASE_URI"]),
        "keys_dir": str(app.config["KEYS_DIR"]),
        "keys": kids,
    }


@cli.command("init")
@json_option
def init_command(as_json: bool) -> None:
    """Apply database migrations and generate signing keys if there are none."""
    app = _app()
    result = _init(app)
    _emit(as_json, result, f"Database ready at {result['database']}; keys in {result['keys_dir']}.")


def _demo(app, port: int, host: str) -> dict | None:
    """On an empty database: a demo account, its owner and a confidential client."""
    from .models import Account, db

    with app.app_context():
        if db.session.scalar(sa.select(sa.func.count()).select_from(Account)):
            return None
        password = secrets.token_urlsafe(12)
        services = app.extensions["idp"]
        account = _new_account(app, "demo")
        user = accounts.create_user(
            account, email="demo@example.com", password=password, role="owner",
            name="Demo Owner", hasher=services.passwords, now=services.clock.now(),
            verified=True,  # an example address: the demo's notices go to the mail folder
        )
        redirect_uri = "http://127.0.0.1:8000/callback"
        client, secret = accounts.create_client(
            name="Demo app",
            redirect_uris=[redirect_uri],
            post_logout_redirect_uris=["http://127.0.0.1:8000/"],
            now=services.clock.now(),
        )
        db.session.commit()
        return {
            "issuer": app.config["ISSUER"],
            "account": account.name,
            "user": user.email,
            "password": password,
            "client_id": client.client_id,
            "client_secret": secret,
            "redirect_uri": redirect_uri,
        }


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", type=click.IntRange(1, 64), help="Worker processes (IDP_WORKERS).")
@click.option("--dev", is_flag=True, help="Flask's development server with the reloader.")
@click.option("--no-demo", is_flag=True, help="Do not create the demo data on an empty database.")
@click.option("--no-worker", is_flag=True,
              help="Do not start `idp worker` beside the server (run it yourself, or on "
                   "another node).")
@json_option
def serve_command(host, port, workers, dev, no_demo, no_worker, as_json) -> None:
    """Migrate, generate keys, create the demo on first start, then serve, with a worker
    that delivers email and retries logout notices."""
    if "IDP_ISSUER" not in os.environ and port != 5000:
        os.environ["IDP_ISSUER"] = f"http://localhost:{port}"
    gunicorn = not dev and os.name == "posix"
    if gunicorn:
        _metrics_shared_by_workers([
            "serve", "--host", host, "--port", str(port),
            *(["--workers", str(workers)] if workers else []),
            *(["--no-demo"] if no_demo else []), *(["--no-worker"] if no_worker else []),
            *(["--json"] if as_json else [])])
    app = _app()
    _init(app)
    demo = None if no_demo else _demo(app, port, host)
    mail_to = (f"email goes through {app.config['SMTP_URL'].split('@')[-1]}"
               if app.config["SMTP_URL"]
               else f"email is written to {app.config['INSTANCE_DIR'] / 'mail'} (set "
                    "IDP_SMTP_URL to send it)")
    if demo and not as_json:
        click.echo(
            "\nDemo data created (shown once — the password and secret are stored hashed):\n"
            f"  issuer         {demo['issuer']}\n"
            f"  sign in as     {demo['user']}  password {demo['password']}\n"
            f"  client_id      {demo['client_id']}\n"
            f"  client_secret  {demo['client_secret']}\n"
            f"  redirect_uri   {demo['redirect_uri']}\n"
            f"Discovery: {demo['issuer']}/.well-known/openid-configuration\n"
            f"Your account: {demo['issuer']}/account\n"
            f"Mail: {mail_to}\n"
        )
    elif as_json:
        click.echo(json.dumps({"serving": f"http://{host}:{port}", "demo": demo,
                               "mail": mail_to}, sort_keys=True))
    sys.stdout.flush()
    workers = workers or app.config["WORKERS"]
    if not gunicorn:
        app.run(host=host, port=port, debug=False, use_reloader=dev)
        return
    _fewer_malloc_arenas()
    worker = None if no_worker else _start_worker()
    try:
        _gunicorn(host, port, workers, app.config["KEEPALIVE_REQUESTS"])
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=15)


def _metrics_shared_by_workers(argv: list[str]) -> None:
    """Every gunicorn worker (and ``idp worker``) keeps its metrics in files of its own in
    one folder, ``PROMETHEUS_MULTIPROC_DIR`` (the operator's, else
    IDP_INSTANCE_DIR/prometheus), which /metrics adds up, an exited worker's counts
    included; the folder is emptied of a previous run's files first, as prometheus_client
    requires.

    prometheus_client decides once per process, when it is first imported, whether values
    go to those files, and ``import idp`` has already imported it here, in the process the
    workers fork from. So when the variable is not set yet, this sets it and replaces the
    process (same pid: supervisors and signals see no difference) with a fresh ``python
    -m idp <argv>``, which imports everything with the variable set and serves."""
    from . import config, metrics

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        try:
            instance = config.load()["INSTANCE_DIR"]
        except ConfigError:
            return  # _app() says what is wrong
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str((instance / "prometheus").resolve())
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "idp", *argv],  # noqa: S606
                  os.environ)  # (no shell: a fixed interpreter and our own arguments)
    if not metrics.MULTIPROCESS:  # never after the fresh start; guards against a loop
        raise CommandError("PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was "
                           "imported; set it before starting idp, or unset it")
    folder_path = Path(folder)
    folder_path.mkdir(parents=True, exist_ok=True)
    for stale in folder_path.glob("*.db"):  # only this process has started: none is live
        stale.unlink(missing_ok=True)


def _start_worker():
    """``idp worker`` as a child: it ends with the server (and, on Linux, if the server is
    killed: the kernel sends it SIGTERM when its parent dies)."""
    import signal
    import subprocess

    def die_with_parent() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return subprocess.Popen([sys.executable, "-m", "idp", "worker"], stdout=subprocess.DEVNULL,
                            preexec_fn=die_with_parent)  # noqa: PLW1509 - before exec only


PR_SET_PDEATHSIG = 1  # Linux prctl option (sys/prctl.h)


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def _fewer_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own arena (up to 8 per core) and keeps
    freed memory in them: with 4 request threads and the hashing pool, a worker grew to
    155–162 MB under the side-by-side load; with 2 arenas, set here before the workers
    fork, 136 MB at the same throughput (bench/BASELINE.md). An operator's
    ``MALLOC_ARENA_MAX`` wins; elsewhere than glibc this does nothing."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)


def _mark_worker_dead(_server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def connection_rotation(requests_per_connection: int):
    """A gunicorn ``pre_request`` hook: the response to the N-th request on a keep-alive
    connection says ``Connection: close``. A connection stays with the worker that
    accepted it, so a proxy's few long-lived connections would otherwise pin the load on
    whichever workers happened to accept them; reconnecting, they land again, most often
    on a worker that is free to accept. Closing after a complete response is safe for
    clients and proxies (RFC 9112 §9.6), unlike an idle timeout."""

    def rotate(_worker, request) -> None:
        if requests_per_connection and request.req_number >= requests_per_connection:
            request.must_close = True

    return rotate


def _gunicorn(host: str, port: int, workers: int, requests_per_connection: int) -> None:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", 4)
            self.cfg.set("accesslog", None)  # the app writes one JSON line per request
            self.cfg.set("control_socket_disable", True)
            self.cfg.set("graceful_timeout", 10)
            # Idle keep-alive connections stay open longer than a proxy's usual 60 s, so a
            # proxy never reuses one the server has just closed (a 502 for the user).
            self.cfg.set("keepalive", 75)
            self.cfg.set("child_exit", _mark_worker_dead)
            self.cfg.set("pre_request", connection_rotation(requests_per_connection))

        def load(self):
            from . import create_app

            return create_app()

    Server().run()


@cli.command("create-account")
@click.argument("name")
@json_option
def create_account_command(name: str, as_json: bool) -> None:
    """Create an account (an organisation) with the default session policy."""
    app = _app()
    with app.app_context():
        from .models import db

        try:
            account = _new_account(app, name)
            db.session.commit()
        except accounts.AccountError as exc:
            raise CommandError(str(exc)) from None
        _emit(as_json, {"account": account.name, "id": account.id},
              f"Created account {account.name} (id {account.id}).")


@cli.command("create-user")
@click.option("--account", "account_name", required=True, help="Account name.")
@click.option("--email", required=True)
@click.option("--role", type=click.Choice(["owner", "admin", "member"]), default="member",
              show_default=True)
@click.option("--name", "full_name", help="Full name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--verified", is_flag=True,
              help="You have checked the address: send no verification link.")
@json_option
def create_user_command(account_name, email, role, full_name, password_stdin, verified,
                        as_json) -> None:
    """Create a user in an account (its address gets a verification link unless
    --verified)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    app = _app()
    with app.app_context():
        from .models import db

        try:
            account = accounts.find_account(account_name)
            user = accounts.create_user(
                account, email=email, password=password, role=role, name=full_name,
                hasher=app.extensions["idp"].passwords, now=app.extensions["idp"].clock.now(),
                verified=verified,
            )
            db.session.commit()
        except accounts.AccountError as exc:
            raise CommandError(str(exc)) from None
        _emit(as_json, {"sub": user.sub, "email": user.email, "email_verified": verified},
              f"Created {user.email} (sub {user.sub}) in {account.name}.")


def _user_by_email(email: str):
    """Emails are unique across accounts, so an address names one user."""
    from .models import User, db

    user = db.session.scalar(sa.select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise CommandError(f"no user has the email {email.strip()!r} (check the address; "
                           "create a user with: idp create-user)")
    return user


def _user_json(user) -> dict:
    return {"email": user.email, "sub": user.sub, "account": user.account.name,
            "role": str(user.role), "disabled": user.disabled_at is not None}


def _owner_rule(exc, command: str) -> CommandError:
    """The owner rule refused: say how to keep an owner, and how to override it."""
    return CommandError(f"{exc.message.rstrip('.')} (idp set-role --email OTHER --role owner), "
                        f"or run again with --force: {command}")


force_option = click.option(
    "--force", is_flag=True,
    help="Even if this leaves the account without an enabled owner (recorded in the audit).")


@cli.command("disable-user")
@click.option("--email", required=True)
@force_option
@json_option
def disable_user_command(email: str, force: bool, as_json: bool) -> None:
    """Disable a user: they can no longer sign in and every session of theirs ends now
    (tokens revoked, back-channel logout notices sent), as the admin page does. Refused
    for an account's last enabled owner unless --force."""
    from . import roles
    from .models import db

    app = _app()
    with app.app_context():
        user = _user_by_email(email)
        try:
            ended = roles.disable(None, user, now=app.extensions["idp"].clock.now(),
                                  force=force)
        except roles.LastOwner as exc:
            raise _owner_rule(exc, f"idp disable-user --email {user.email} --force") from None
        db.session.commit()
        # Logout notices go out now; what does not arrive in time stays in the outbox
        # for `idp worker`.
        app.extensions["idp.logout"].drain(app.config["BACKCHANNEL_TIMEOUT"].total_seconds() + 1)
        data = {**_user_json(user), "changed": ended is not None,
                "sessions_ended": len(ended or [])}
        text = (f"{user.email} was already disabled; nothing changed."
                if ended is None else
                f"Disabled {user.email} ({user.account.name}); ended {len(ended)} session"
                f"{'s' if len(ended) != 1 else ''}. Undo with: idp enable-user --email "
                f"{user.email}")
        _emit(as_json, data, text)


@cli.command("enable-user")
@click.option("--email", required=True)
@json_option
def enable_user_command(email: str, as_json: bool) -> None:
    """Let a disabled user sign in again (no session comes back)."""
    from . import roles
    from .models import db

    app = _app()
    with app.app_context():
        user = _user_by_email(email)
        changed = roles.enable(None, user, now=app.extensions["idp"].clock.now())
        db.session.commit()
        text = (f"{user.email} ({user.account.name}) can sign in again." if changed
                else f"{user.email} was not disabled; nothing changed.")
        _emit(as_json, {**_user_json(user), "changed": changed}, text)


@cli.command("set-role")
@click.option("--email", required=True)
@click.option("--role", required=True, type=click.Choice(["owner", "admin", "member"]))
@force_option
@json_option
def set_role_command(email: str, role: str, force: bool, as_json: bool) -> None:
    """Give a user a role in their account (owner, admin or member). Demoting an
    account's last enabled owner is refused unless --force."""
    from . import roles
    from .models import db

    app = _app()
    with app.app_context():
        user = _user_by_email(email)
        try:
            previous = roles.set_role(None, user, role, now=app.extensions["idp"].clock.now(),
                                      force=force)
        except roles.LastOwner as exc:
            raise _owner_rule(exc, f"idp set-role --email {user.email} --role {role} "
                                   "--force") from None
        db.session.commit()
        text = (f"{user.email} is already {role} in {user.account.name}; nothing changed."
                if previous == role else
                f"{user.email} is now {role} in {user.account.name} (was {previous}).")
        _emit(as_json, {**_user_json(user), "previous_role": str(previous),
                        "changed": previous != role}, text)


@cli.command("create-client")
@click.option("--name", required=True)
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Repeat for several.")
@click.option("--public", is_flag=True, help="No secret; PKCE required (SPAs, native apps).")
@click.option("--first-party", is_flag=True, help="Skip the consent page for this client.")
@click.option("--resource-server", is_flag=True, help="May introspect tokens meant for it.")
@click.option("--backchannel-logout-uri")
@click.option("--post-logout-redirect-uri", "post_logout_uris", multiple=True)
@click.option("--scope", default="openid profile email", show_default=True)
@click.option("--id-token-alg", type=click.Choice(["RS256", "ES256"]), default="RS256",
              show_default=True)
@click.option("--device", is_flag=True, help="May use the device flow (command-line tools).")
@click.option("--client-credentials", is_flag=True, help="May get tokens for itself (machines).")
@click.option("--jwks", "jwks_file", type=click.File("r"),
              help="Public JWKS file: authenticate with private_key_jwt instead of a secret.")
@json_option
def create_client_command(name, redirect_uris, public, first_party, resource_server,
                          backchannel_logout_uri, post_logout_uris, scope, id_token_alg,
                          device, client_credentials, jwks_file, as_json) -> None:
    """Register a relying party or resource server. The secret is shown only here."""
    app = _app()
    with app.app_context():
        from .models import db

        try:
            client, secret = accounts.create_client(
                name=name,
                redirect_uris=list(redirect_uris),
                public=public,
                first_party=first_party,
                resource_server=resource_server,
                backchannel_logout_uri=backchannel_logout_uri,
                post_logout_redirect_uris=list(post_logout_uris),
                scope=scope,
                id_token_alg=id_token_alg,
                device=device,
                client_credentials=client_credentials,
                jwks=_read_json(jwks_file) if jwks_file else None,
                now=app.extensions["idp"].clock.now(),
            )
            db.session.commit()
        except accounts.AccountError as exc:
            raise CommandError(str(exc)) from None
        data = {"client_id": client.client_id, "client_secret": secret}
        text = f"client_id      {client.client_id}\n"
        if secret:
            text += f"client_secret  {secret}  (shown once; stored hashed)"
        elif client.jwks:
            text += "authenticates with private_key_jwt (no secret)"
        else:
            text += "public client: no secret; use PKCE (S256)"
        _emit(as_json, data, text)


@cli.command("set-policy")
@click.option("--account", "account_name", required=True)
@click.option("--max-duration", help="Maximum session duration: seconds or 90m, 24h, 30d.")
@click.option("--idle-timeout", help="Sign-out after inactivity: seconds or 5m, 2h.")
@click.option("--max-concurrent", help="A number, or 'unlimited'.")
@click.option("--on-limit", type=click.Choice(["deny", "end_oldest"]))
@click.option("--require-mfa/--no-require-mfa", default=None,
              help="Every user signs in with a second factor (those without one set it up).")
@click.option("--require-notices/--no-require-notices", default=None,
              help="Every user gets an email when a new device signs in (they cannot opt out).")
@click.option("--end-password-only-sessions", is_flag=True,
              help="With --require-mfa: also end, now, sessions that signed in without one.")
@click.option("--dry-run", is_flag=True, help="Only show what the new values would do.")
@json_option
def set_policy_command(account_name, max_duration, idle_timeout, max_concurrent, on_limit,
                       require_mfa, require_notices, end_password_only_sessions, dry_run,
                       as_json) -> None:
    """Change an account's session policy (bounds: IDP_SESSION_DURATION_MIN/_MAX, ...)."""
    from . import policy, policy_changes
    from .models import db

    app = _app()
    with app.app_context():
        try:
            account = accounts.find_account(account_name)
        except accounts.AccountError as exc:
            raise CommandError(str(exc)) from None
        now = app.extensions["idp"].clock.now()
        current = policy.SessionPolicy.of(account)
        values = {
            "max_duration": max_duration or int(current.max_duration.total_seconds()),
            "idle_timeout": idle_timeout or int(current.idle_timeout.total_seconds()),
            "max_concurrent": max_concurrent if max_concurrent is not None else (
                current.max_concurrent or "unlimited"),
            "on_limit": on_limit or str(current.on_limit),
            "require_mfa": current.require_mfa if require_mfa is None else require_mfa,
            "require_notices": (current.require_notices if require_notices is None
                                else require_notices),
        }
        try:
            new = policy.validate(policy.PolicyBounds.from_config(app.config), **values)
        except policy.PolicyError as exc:
            raise CommandError(f"invalid policy: {exc}") from None
        changes = {}
        if dry_run:
            impact = policy_changes.preview(
                account, new, now, end_password_only=end_password_only_sessions).as_dict()
        else:
            applied = policy_changes.apply(account, new, now=now, actor="operator:cli",
                                           end_password_only=end_password_only_sessions)
            db.session.commit()
            changes, impact = applied.changes, applied.impact.as_dict()
        stored = policy.SessionPolicy.of(account)
        data = {
            "account": account.name,
            "dry_run": dry_run,
            "changes": changes,
            "impact": impact,
            "policy": {
                "max_duration": int(stored.max_duration.total_seconds()),
                "idle_timeout": int(stored.idle_timeout.total_seconds()),
                "max_concurrent": stored.max_concurrent,
                "on_limit": str(stored.on_limit),
                "require_mfa": stored.require_mfa,
                "require_notices": stored.require_notices,
            },
        }
        verb = "Would change" if dry_run else "Changed"
        text = (f"{verb} {', '.join(changes) or 'nothing'} for {account.name}. "
                if not dry_run else f"Dry run for {account.name}: ")
        text += (f"{impact['sessions_ended_now']} active sessions of "
                 f"{impact['users_with_sessions_ended_now']} users end at once; "
                 f"{impact['users_over_concurrent_limit']} users above the concurrent limit.")
        _emit(as_json, data, text)


@cli.command("worker")
@click.option("--once", is_flag=True, help="One pass over due deliveries, then exit.")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds between passes.")
@json_option
def worker_command(once: bool, interval: float, as_json: bool) -> None:
    """Deliver back-channel logout notices and email, retrying with backoff until
    delivered."""
    import signal
    import time

    from .models import db

    app = _app()
    outboxes = {"logout": app.extensions["idp.logout"], "mail": app.extensions["idp.mail"]}
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    totals = {name: {"attempted": 0, "delivered": 0, "retry": 0, "given_up": 0}
              for name in outboxes}
    totals["mail"]["dropped"] = 0
    with app.app_context():
        while True:
            for name, deliverer in outboxes.items():
                counts = deliverer.run_due()
                db.session.remove()
                for key, value in counts.items():
                    totals[name][key] += value
                if counts["attempted"] and not as_json:
                    click.echo(f"{name}: attempted {counts['attempted']}: delivered "
                               f"{counts['delivered']}, retrying {counts['retry']}, gave up "
                               f"{counts['given_up']}", err=True)
            if once or stop["now"]:
                break
            time.sleep(interval)
    _emit(as_json, totals,
          f"Delivered {totals['logout']['delivered']} of {totals['logout']['attempted']} "
          f"logout notices and {totals['mail']['delivered']} of "
          f"{totals['mail']['attempted']} emails.")


@cli.command("rotate-keys")
@json_option
def rotate_keys_command(as_json: bool) -> None:
    """New signing keys, published at once and signing once relying parties' cached JWKS
    expired; old public keys stay in the JWKS until what they signed expired."""
    app = _app()
    services = app.extensions["idp"]
    now = services.clock.now()
    new = services.keys.rotate(now)
    published = [k.kid for k in services.keys.published(now)]
    signs_from = min(k.signs_from for k in new).isoformat()
    _emit(as_json, {"new": [k.kid for k in new], "published": published, "signs_from": signs_from},
          f"New keys: {', '.join(k.kid for k in new)}, published now, signing from {signs_from} "
          f"(until then the current keys sign). Published: {len(published)} keys.")


def _in_parallel(app, workers: int, task) -> int:
    """``task()`` in ``workers`` threads, each in an app context of its own (its own
    database session and connection); the sum of what they return."""
    from concurrent.futures import ThreadPoolExecutor

    from .models import db

    def run() -> int:
        with app.app_context():
            try:
                return task()
            finally:
                db.session.remove()

    if workers == 1:
        return run()
    with ThreadPoolExecutor(workers, thread_name_prefix="sweep") as pool:
        futures = [pool.submit(run) for _ in range(workers)]
        return sum(future.result() for future in futures)


def _shared(bar):
    """A progress callback several threads may call."""
    import threading

    lock = threading.Lock()

    def update(count: int) -> None:
        with lock:
            bar.update(count)

    return update


@cli.command("sweep")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 10000),
              help="Sessions per transaction.")
@click.option("--parallel", default=1, show_default=True, type=click.IntRange(1, 16),
              help="Connections sweeping side by side (PostgreSQL; SQLite always uses one).")
@json_option
def sweep_command(batch: int, parallel: int, as_json: bool) -> None:
    """Expire sessions past their deadlines and purge history past retention.

    Set-based and in short batches: logins are never held up for long, and several
    sweeps (nodes, or --parallel connections) may run at once on PostgreSQL without
    ending a session twice. Back-channel logout notices it writes are delivered by
    `idp worker`.
    """
    from . import sessions
    from .models import db

    app = _app()
    # A mass expiry must not turn this process into a delivery worker: the notices are
    # in the outbox, committed with each batch, and `idp worker` sends them.
    immediate = app.config["BACKCHANNEL_IMMEDIATE"]
    app.config["BACKCHANNEL_IMMEDIATE"] = False
    try:
        with app.app_context():
            if db.engine.dialect.name != "postgresql":
                parallel = 1
            now = app.extensions["idp"].clock.now()
            retention = app.config["SESSION_RETENTION"]
            due = purgeable = 0
            if not as_json:
                due, purgeable = sessions.due_for_expiry(now), sessions.due_for_purge(now, retention)
                db.session.remove()
        with _progress(as_json, due, "Expiring sessions past their deadlines") as progress:
            expired = _in_parallel(app, parallel, lambda: sessions.expire_due(
                now, batch=batch, progress=progress))
        with _progress(as_json, purgeable, "Purging history past retention") as progress:
            purged = _in_parallel(app, parallel, lambda: sessions.purge_before(
                now - retention, batch=batch, progress=progress))
        with app.app_context():
            spent = sessions.purge_spent(now, batch=batch)
            db.session.remove()
    finally:
        app.config["BACKCHANNEL_IMMEDIATE"] = immediate
    _emit(as_json, {"expired": expired, "purged": purged, "spent": spent},
          f"Expired {expired} sessions; purged {purged} old ones and {spent} spent device "
          "codes, assertions and revocations.")


@contextlib.contextmanager
def _progress(quiet: bool, length: int, label: str):
    if quiet:
        yield None
        return
    with click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True,
                           show_eta=True) as bar:
        yield _shared(bar)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", click.exceptions.Exit)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors, exit 2 for usage, 1 for failures."""
    try:
        cli.main(args=argv, prog_name="idp", standalone_mode=False)
    except _NO_ARGS_IS_HELP:
        click.echo(cli.get_help(click.Context(cli, info_name="idp")))
        sys.exit(0)
    except click.UsageError as exc:
        click.echo(f"idp: {exc.format_message()} (see idp {_cmd(exc)}--help)", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"idp: {exc.format_message()}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("idp: aborted", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the operator gets one line, never a traceback
        click.echo(f"idp: {_explain(exc)}", err=True)
        sys.exit(1)


def _explain(exc: Exception) -> str:
    """One line that says what went wrong and, where we know, what to do."""
    from sqlalchemy.exc import DBAPIError

    from .keys import KeyStoreError

    if isinstance(exc, KeyStoreError):
        return str(exc).splitlines()[0]
    if isinstance(exc, DBAPIError):
        text = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
        if "no such table" in text or "does not exist" in text:
            return f"the database is not initialised ({text}); run: idp init"
        return f"database error: {text} (check IDP_DATABASE_URL)"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({exc.filename or ''}); check IDP_INSTANCE_DIR and IDP_KEYS_DIR"
    return f"unexpected error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _cmd(exc: click.UsageError) -> str:
    ctx = exc.ctx
    if ctx is not None and ctx.command is not None and ctx.command is not cli:
        return f"{ctx.command.name} "
    return ""
