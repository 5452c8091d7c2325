"""Real provider processes for fault and load tests.

``serve(database_url)`` runs the provider the way production does (``idp init``, then
``idp serve``: gunicorn, gthread workers) as a subprocess on a free loopback port, waits for
``/readyz`` and, on exit, stops the master and every worker (SIGTERM, then SIGKILL), even when
the test failed. ``private_postgres()`` runs a throw-away PostgreSQL server (``initdb`` in a
temporary folder, its own port) that a test may stop, start or hang at will (check
``postgres_unavailable()`` first and skip with its reason). ``check_invariants`` reads a
database and lists what would be half-written state.

    with serve(database_url, workers=2, env={"IDP_TOKEN_RATE_LIMIT": "..."}) as provider:
        provider.create_account("acme")                      # the operator's CLI, --json
        provider.create_user("ada@example.com", PASSWORD, account="acme")
        client_id, secret = provider.create_client("Photos", "http://127.0.0.1:9999/callback")
        httpx.get(f"{provider.url}/readyz")
        provider.master_pid, provider.worker_pids(), provider.log_tail()
        provider.wait_ready(workers=1, exclude=(killed_pid,))  # after killing a worker
    assert check_invariants(database_url) == []

    with private_postgres() as pg:
        url = pg.create_database("idp")
        pg.stop("fast"); pg.start()
        with pg.hung(): ...                                  # accepts, never answers

Everything is bounded by a timeout; nothing here sleeps to make time pass for the provider.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

from tests.conftest import SECRET_KEY

FAST_ARGON2 = {"IDP_ARGON2_TIME_COST": "1", "IDP_ARGON2_MEMORY_COST": "1024",
               "IDP_ARGON2_PARALLELISM": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _idp_command() -> list[str]:
    """The console script installed beside this interpreter (what operators run)."""
    script = Path(sys.executable).parent / "idp"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from idp.cli import main; main(sys.argv[1:])"]


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        pass
    except OSError:
        return []
    children = []  # kernels without CONFIG_PROC_CHILDREN: scan every process's parent
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Provider:
    """A running ``idp serve``: its URL, its processes and the operator's CLI on its database."""

    url: str
    database_url: str
    process: subprocess.Popen
    env: dict[str, str]
    workdir: Path
    log_path: Path
    accounts: set[str] = field(default_factory=set)

    @property
    def master_pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """Current gunicorn workers: the master's living children."""
        return sorted(pid for pid in _children(self.master_pid) if _alive(pid))

    def log_tail(self, limit: int = 4000) -> str:
        """The end of the server's stdout and stderr (JSON log lines, gunicorn's own lines)."""
        return _tail(self.log_path, limit)

    def wait_ready(self, timeout: float = 60.0, *, workers: int = 1,
                   exclude: tuple[int, ...] = ()) -> list[int]:
        """Until /readyz answers 200 and ``workers`` workers not in ``exclude`` run;
        returns their pids. Raises with the server's log if that takes over ``timeout``."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"idp serve exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            pids = [pid for pid in self.worker_pids() if pid not in exclude]
            if len(pids) >= workers:
                try:
                    response = httpx.get(f"{self.url}/readyz", timeout=2)
                    last = f"{response.status_code} {response.text[:200]}"
                    if response.status_code == 200:
                        return pids
                except httpx.HTTPError as exc:
                    last = repr(exc)
            time.sleep(0.1)
        raise TimeoutError(f"provider not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def cli(self, *args: str, stdin: str | None = None, timeout: float = 60.0) -> dict:
        """Run ``idp <args> --json`` against the same database and keys; its JSON answer."""
        result = subprocess.run(
            [*_idp_command(), *args, "--json"], env=self.env, input=stdin, capture_output=True,
            text=True, timeout=timeout, cwd=self.workdir, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"idp {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stderr.strip()[-2000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def create_account(self, name: str) -> int:
        return self.cli("create-account", name)["id"]

    def create_user(self, email: str, password: str, *, account: str,
                    role: str = "member", name: str = "Ada Lovelace") -> str:
        """A user in an existing account; returns its ``sub``."""
        return self.cli("create-user", "--account", account, "--email", email, "--role", role,
                        "--name", name, "--password-stdin", stdin=password + "\n")["sub"]

    def create_client(self, name: str, redirect_uri: str, *, first_party: bool = True,
                      scope: str = "openid profile email",
                      extra: tuple[str, ...] = ()) -> tuple[str, str | None]:
        """A confidential client (``extra`` adds CLI flags); returns (client_id, secret)."""
        args = ["create-client", "--name", name, "--redirect-uri", redirect_uri, "--scope", scope,
                *(["--first-party"] if first_party else []), *extra]
        data = self.cli(*args)
        return data["client_id"], data["client_secret"]

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the master (gunicorn stops its workers), SIGKILL to the whole process
        group after ``timeout``; nothing of the provider survives this call."""
        group = self.process.pid  # start_new_session: the master leads its own group
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)  # a worker the master did not take down


def provider_env(database_url: str, url: str, workdir: Path,
                 extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a provider process: this process's, minus every ``IDP_*`` and
    Prometheus setting, plus the database, issuer, folders, a secret key and fast argon2."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IDP_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({
        "IDP_DATABASE_URL": database_url,
        "IDP_ISSUER": url,
        "IDP_KEYS_DIR": str(workdir / "keys"),
        "IDP_INSTANCE_DIR": str(workdir / "instance"),
        "IDP_SECRET_KEY": SECRET_KEY,
        **FAST_ARGON2,
        **(extra or {}),
    })
    return env


@contextlib.contextmanager
def serve(database_url: str, *, workers: int = 2, env: Mapping[str, str] | None = None,
          ready_timeout: float = 60.0) -> Iterator[Provider]:
    """``idp init`` then ``idp serve --workers N --port <free> --no-demo --no-worker`` (a test
    that needs ``idp worker`` runs it) on ``database_url``
    (an empty or migrated database); yields once /readyz answers 200 with N workers up.
    ``env`` adds or overrides ``IDP_*`` settings. Always stops every process on exit; when
    the body raised, the server's log tail goes to stderr (pytest shows it)."""
    workdir = Path(tempfile.mkdtemp(prefix="idp-serve-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = provider_env(database_url, url, workdir, env)
    log_path = workdir / "server.log"
    provider = None
    try:
        init = subprocess.run([*_idp_command(), "init", "--json"], env=environment, cwd=workdir,
                              capture_output=True, text=True, timeout=120, check=False)
        if init.returncode != 0:
            raise RuntimeError(f"idp init failed: {init.stderr.strip()[-2000:]}")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*_idp_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", str(workers), "--no-demo", "--no-worker", "--json"],
                env=environment, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        provider = Provider(url, database_url, process, environment, workdir, log_path)
        provider.wait_ready(ready_timeout, workers=workers)
        yield provider
    except BaseException:
        if provider is not None:
            sys.stderr.write(f"--- idp serve log (tail) ---\n{provider.log_tail()}\n")
        raise
    finally:
        if provider is not None:
            provider.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def served_database(kind: str, folder: Path, suffix: str) -> Iterator[str]:
    """For a fixture parametrized sqlite/postgresql: a fresh, empty database for a served
    instance (``idp init`` migrates it); the PostgreSQL one skips without
    IDP_TEST_DATABASE_URL."""
    import pytest

    if kind == "sqlite":
        yield f"sqlite:///{folder / 'idp.db'}"
        return
    server = os.environ.get("IDP_TEST_DATABASE_URL")
    if not server:
        pytest.skip("PostgreSQL variant: set IDP_TEST_DATABASE_URL to run it (.ci/run does)")
    pytest.importorskip("psycopg")
    with scratch_database(server, suffix) as url:
        yield url


@contextlib.contextmanager
def scratch_database(server_url: str, suffix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database ``<database of server_url>_<suffix>`` on the same
    server (one a previous run left behind is dropped first); yields its URL and drops it
    on exit."""
    base = sa.engine.make_url(server_url)
    name = f"{base.database}_{suffix}"
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield base.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


# -- a private PostgreSQL server -------------------------------------------------------


def postgres_bindir() -> Path | None:
    """Where ``initdb``/``pg_ctl`` live: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                        else 0)
    return candidates[-1].parent if candidates else None


def postgres_unavailable() -> str | None:
    """Why ``private_postgres()`` cannot run here, or None."""
    bindir = postgres_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        return "no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run initdb as"
        if not shutil.which("runuser"):
            return "running as root and runuser is missing (initdb refuses to run as root)"
    with contextlib.suppress(ImportError):
        import psycopg  # noqa: F401

        return None
    return "psycopg is not installed: pip install -e '.[postgres]'"


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of the test's own: trust authentication, loopback only."""

    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3) of ``database`` on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        # Output to a file, never a pipe: the postmaster started by pg_ctl would keep a
        # pipe open and a reader waiting for its end would wait forever.
        with open(self.root / "commands.log", "ab") as out:
            result = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}):\n"
                               f"{_tail(self.root / 'commands.log', 2000)}\n"
                               f"{_tail(self.root / 'postgres.log', 2000)}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--no-sync")

    def start(self, timeout: int = 30) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off -c max_connections=100")
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.root / "postgres.log"),
                  "-w", "-t", str(timeout), "-o", options, timeout=timeout + 10)

    def stop(self, mode: str = "fast", timeout: int = 30) -> None:
        """``fast`` rolls back open transactions and closes every connection;
        ``immediate`` is a crash (recovery runs at the next start)."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", str(timeout),
                  timeout=timeout + 10)

    def running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and _alive(pid)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def log_tail(self, limit: int = 4000) -> str:
        return _tail(self.root / "postgres.log", limit)

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        """A server that accepts TCP connections but never answers: the postmaster is
        SIGSTOPped (the kernel still completes handshakes into its backlog) and every
        client connection it had is dropped. Answers again on exit, whatever happened."""
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                backends = conn.execute(sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()")).scalars().all()
        finally:
            engine.dispose()
        postmaster = self.postmaster_pid()
        assert postmaster is not None, "the server is not running"
        os.kill(postmaster, signal.SIGSTOP)
        try:
            for pid in backends:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            yield
        finally:
            os.kill(postmaster, signal.SIGCONT)

    def destroy(self) -> None:
        """Stop at once (even a half-started server) and delete every file."""
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a stopped postmaster cannot even stop
        if self.running():
            try:
                self.stop("immediate", timeout=10)
            except (RuntimeError, subprocess.TimeoutExpired):
                pid = self.postmaster_pid()
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """initdb + start on a free loopback port; stopped and deleted on exit, whatever
    happened. Check ``postgres_unavailable()`` first (skip the test with its reason)."""
    reason = postgres_unavailable()
    if reason:
        raise RuntimeError(reason)
    root = Path(tempfile.mkdtemp(prefix="idp-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
    server = PrivatePostgres(postgres_bindir(), root, free_port())
    try:
        server.init()
        server.start()
        yield server
    except BaseException:
        sys.stderr.write(f"--- private PostgreSQL log (tail) ---\n{server.log_tail()}\n")
        raise
    finally:
        server.destroy()


# -- half-written state -----------------------------------------------------------------

INVARIANT_QUERIES = {
    "active token family under an ended session": """
        SELECT f.id FROM token_families f JOIN login_sessions s ON s.id = f.session_id
        WHERE s.ended_at IS NOT NULL AND f.revoked_at IS NULL""",
    "token family with two unrotated refresh tokens": """
        SELECT family_id FROM refresh_tokens WHERE rotated_at IS NULL
        GROUP BY family_id HAVING count(*) > 1""",
    "active token family whose refresh tokens are all rotated (rotation without successor)": """
        SELECT f.id FROM token_families f JOIN refresh_tokens r ON r.family_id = f.id
        WHERE f.revoked_at IS NULL GROUP BY f.id
        HAVING count(*) FILTER (WHERE r.rotated_at IS NULL) = 0""",
    "code used but no family issued, session still open": """
        SELECT c.id FROM authorization_codes c JOIN login_sessions s ON s.id = c.session_id
        WHERE c.used_at IS NOT NULL AND c.family_id IS NULL AND s.ended_at IS NULL""",
    "unused code under an ended session": """
        SELECT c.id FROM authorization_codes c JOIN login_sessions s ON s.id = c.session_id
        WHERE c.used_at IS NULL AND s.ended_at IS NOT NULL""",
}


def check_invariants(database_url: str) -> list[str]:
    """Each violation found in the database, as "<what>: <ids>"; empty when consistent."""
    engine = sa.create_engine(database_url)
    problems = []
    try:
        with engine.connect() as conn:
            for what, query in INVARIANT_QUERIES.items():
                ids = conn.execute(sa.text(query)).scalars().all()
                if ids:
                    problems.append(f"{what}: {', '.join(map(str, ids[:10]))}")
    finally:
        engine.dispose()
    return problems


@contextlib.contextmanager
def serving(wsgi_app, port: int = 0) -> Iterator[int]:
    """A WSGI app (a relying party's endpoint, a resource server) on a loopback port in a
    thread of this process; yields the port; shut down and joined on exit."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", port, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()
