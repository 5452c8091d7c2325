"""Do a few long-lived keep-alive connections use every worker? `idp serve` (its
defaults, SQLite in a fresh folder) under wrk with N connections to discovery for 10 s;
prints requests/s and the CPU seconds each process of the server used.

    .venv/bin/python bench/keepalive_balance.py [--connections 4] [--set IDP_KEEPALIVE_REQUESTS=0]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.run import LUA  # noqa: E402
from bench.side_by_side import start_ours, stop  # noqa: E402


def cpu_seconds(pid: str) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@click.command()
@click.option("--connections", default=4, show_default=True, type=int)
@click.option("--duration", default=10, show_default=True, type=int)
@click.option("--set", "settings", multiple=True, metavar="IDP_NAME=VALUE")
def main(connections, duration, settings):
    ours = start_ours(Path(tempfile.mkdtemp()), None, settings)
    try:
        pids = subprocess.run(["pgrep", "-g", str(ours.process.pid)], capture_output=True,
                              text=True).stdout.split()
        before = {pid: cpu_seconds(pid) for pid in pids}
        result = subprocess.run(
            ["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s", "-s",
             str(LUA / "get.lua"), f"{ours.base}/.well-known/openid-configuration"],
            capture_output=True, text=True, env={**os.environ, "BENCH_LUA_DIR": str(LUA)})
        used = sorted((round(cpu_seconds(pid) - before[pid], 1) for pid in pids), reverse=True)
        rate = re.search(r"Requests/sec:\s+(\S+)", result.stdout).group(1)
        print(f"{' '.join(settings) or 'defaults'}: {connections} connections, {rate} req/s, "
              f"CPU seconds per server process {used}")
    finally:
        stop(ours)


if __name__ == "__main__":
    main()
