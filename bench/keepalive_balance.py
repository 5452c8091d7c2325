"""Do a few long-lived keep-alive connections use every worker? `idp serve` (its
defaults, SQLite in a fresh folder) is started and, as soon as it answers (as a proxy
opens its pool after a deploy), wrk opens N connections to discovery for 10 s; prints
requests/s and the CPU seconds each process of the server used. Connections opened while
only the first worker is up stay on it unless the server closes them now and then.

    .venv/bin/python bench/keepalive_balance.py [--connections 4] [--set IDP_KEEPALIVE_REQUESTS=0]
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.run import LUA, free_port  # noqa: E402
from bench.side_by_side import wait_ready  # noqa: E402


def cpu_seconds(pid: str) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@click.command()
@click.option("--connections", default=4, show_default=True, type=int)
@click.option("--duration", default=10, show_default=True, type=int)
@click.option("--set", "settings", multiple=True, metavar="IDP_NAME=VALUE")
def main(connections, duration, settings):
    workdir, port = Path(tempfile.mkdtemp()), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(IDP_INSTANCE_DIR=str(workdir / "instance"), IDP_KEYS_DIR=str(workdir / "keys"),
               IDP_ISSUER=f"http://127.0.0.1:{port}")
    env.update(setting.split("=", 1) for setting in settings)
    server = subprocess.Popen([str(Path(sys.executable).parent / "idp"), "serve", "--json",
                               "--port", str(port)], cwd=workdir, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        json.loads(server.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/healthz", server)
        pids = subprocess.run(["pgrep", "-g", str(server.pid)], capture_output=True,
                              text=True).stdout.split()
        before = {pid: cpu_seconds(pid) for pid in pids}
        result = subprocess.run(
            ["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s", "-s",
             str(LUA / "get.lua"), f"{base}/.well-known/openid-configuration"],
            capture_output=True, text=True, env={**os.environ, "BENCH_LUA_DIR": str(LUA)})
        used = sorted((round(cpu_seconds(pid) - before[pid], 1) for pid in pids), reverse=True)
        rate = re.search(r"Requests/sec:\s+(\S+)", result.stdout).group(1)
        print(f"{' '.join(settings) or 'defaults'}: {connections} connections, {rate} req/s, "
              f"CPU seconds per server process {used}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
