"""The README's promises: its first two shell blocks are the run and test commands,
one line each, and the first one really starts a usable provider from a clean clone."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from idp.config import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def shell_blocks() -> list[str]:
    return re.findall(r"```(?:bash|sh|shell)\n(.*?)```", README, re.S)


def test_first_two_shell_blocks_are_one_line_commands():
    run, test = shell_blocks()[:2]
    assert run.strip().count("\n") == 0 and "idp serve" in run
    assert test.strip().count("\n") == 0 and "pytest" in test


def test_every_setting_is_in_the_configuration_table():
    for name in SETTINGS:
        assert f"`IDP_{name}`" in README, f"IDP_{name} missing from README"


def test_ci_runs_the_readme_test_command():
    assert shell_blocks()[1].strip() in (ROOT / ".ci" / "run").read_text()


@pytest.mark.skipif(not os.environ.get("IDP_TEST_README"),
                    reason="slow (fresh venv + install): set IDP_TEST_README=1 (.ci/run does)")
def test_first_command_starts_a_usable_provider_from_a_clean_clone(tmp_path):
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                      capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    try:
        httpx.get("http://127.0.0.1:5000/", timeout=1)
        pytest.skip("port 5000 is already in use on this machine")
    except httpx.TransportError:
        pass
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    log = (tmp_path / "out.log").open("w+")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    started = time.monotonic()
    process = subprocess.Popen(["bash", "-c", shell_blocks()[0].strip()], cwd=clone, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready = None
        while time.monotonic() - started < 420 and process.poll() is None:
            try:
                ready = httpx.get("http://127.0.0.1:5000/.well-known/openid-configuration",
                                  timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(1)
        elapsed = time.monotonic() - started
        log.seek(0)
        output = log.read()
        assert ready is not None and ready.status_code == 200, output[-3000:]
        print(f"fresh install + first start: {elapsed:.1f} s")
        assert ready.json()["issuer"] == "http://localhost:5000"
        assert (clone / "keys").stat().st_mode & 0o077 == 0
        for label in ("client_id", "client_secret", "redirect_uri", "password"):
            assert label in output
        password = re.search(r"demo@example.com\s+password (\S+)", output).group(1)
        login = httpx.Client(base_url="http://127.0.0.1:5000", timeout=10)
        page = login.get("/login")
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text).group(1)
        response = login.post("/login", data={"csrf_token": token, "email": "demo@example.com",
                                              "password": password})
        assert response.status_code == 303 and response.headers["location"] == "/account/sessions"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(clone, ignore_errors=True)
