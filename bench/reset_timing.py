"""Does "Forgot your password?" answer as fast for an address no account uses as for one
that an account uses? Through `idp serve` (its defaults, SQLite in a fresh folder), the
same browser asks for both kinds of address, interleaved, and the answer times are
compared (the throttles are raised for the run: they would refuse the repeats).

    .venv/bin/python bench/reset_timing.py [--requests 400]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.run import free_port, stop_server  # noqa: E402
from bench.side_by_side import wait_ready  # noqa: E402

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


@click.command()
@click.option("--requests", "count", default=400, show_default=True, type=int,
              help="Requests of each kind.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def main(count: int, as_json: bool) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="idp-reset-timing-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(IDP_INSTANCE_DIR=str(workdir / "instance"), IDP_KEYS_DIR=str(workdir / "keys"),
               IDP_ISSUER=f"http://127.0.0.1:{port}", IDP_ACCESS_LOG="0",
               IDP_RESETS_PER_ADDRESS="1000000 per hour", IDP_RESETS_PER_IP="1000000 per hour")
    idp = Path(sys.executable).parent / "idp"
    server = subprocess.Popen([str(idp), "serve", "--json", "--port", str(port)], cwd=workdir,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              start_new_session=True, text=True)
    try:
        demo = json.loads(server.stdout.readline())["demo"]
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/healthz", server)
        times: dict[str, list[float]] = {"known": [], "unknown": []}
        with httpx.Client(base_url=base, timeout=10) as browser:
            token = CSRF.search(browser.get("/login/forgot").text).group(1)
            for i in range(count * 2 + 40):
                kind = "known" if i % 2 == 0 else "unknown"
                address = demo["user"] if kind == "known" else f"nobody{i}@example.com"
                started = time.perf_counter()
                answer = browser.post("/login/forgot", data={"csrf_token": token,
                                                             "email": address})
                elapsed = (time.perf_counter() - started) * 1000
                if answer.status_code != 200:
                    raise SystemExit(f"{answer.status_code}: {answer.text[:200]}")
                if i >= 40:  # the first 20 of each warm the worker
                    times[kind].append(elapsed)
        result = {}
        for kind, values in times.items():
            values.sort()
            result[kind] = {"n": len(values), "p50_ms": round(statistics.median(values), 3),
                            "p95_ms": round(values[int(len(values) * 0.95)], 3),
                            "mean_ms": round(statistics.fmean(values), 3)}
        result["p50_difference_ms"] = round(result["known"]["p50_ms"]
                                            - result["unknown"]["p50_ms"], 3)
    finally:
        stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for kind in ("known", "unknown"):
        r = result[kind]
        print(f"{kind:8} n={r['n']}  p50 {r['p50_ms']:.2f} ms  p95 {r['p95_ms']:.2f} ms  "
              f"mean {r['mean_ms']:.2f} ms")
    print(f"p50 difference (known - unknown): {result['p50_difference_ms']:+.2f} ms")


if __name__ == "__main__":
    main()
