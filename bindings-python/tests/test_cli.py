"""The `dreamos-bridge` console script that `pip install dreamos-bridge` installs.

It runs the engine's own command line (the server crate's `run`) inside the
native module, so these tests run the installed script as a user would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import List

import pytest


def _script() -> str:
    # The venv's bin/ first (where pip puts console scripts), then PATH.
    beside = Path(sys.executable).parent / "dreamos-bridge"
    if beside.exists():
        return str(beside)
    found = shutil.which("dreamos-bridge")
    assert found, "the dreamos-bridge console script is not installed"
    return found


def run(args: List[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([_script(), *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_help_lists_the_commands() -> None:
    out = run(["--help"])
    assert out.returncode == 0, out.stderr
    for command in ["serve", "check-config", "hash-key", "token", "route", "dead-letters", "bench"]:
        assert command in out.stdout
    # Usage names the command, not the script's path.
    assert "Usage: dreamos-bridge" in out.stdout
    sub = run(["check-config", "--help"])
    assert sub.returncode == 0 and "Example:" in sub.stdout
    bad = run(["no-such-command"])
    assert bad.returncode == 2 and "no-such-command" in bad.stderr


def test_hash_key_from_argument_and_stdin() -> None:
    want = hashlib.sha256(b"dk_example_key").hexdigest()
    out = run(["hash-key", "dk_example_key"])
    assert (out.returncode, out.stdout.strip()) == (0, want)
    out = run(["hash-key"], stdin="dk_example_key\n")
    assert (out.returncode, out.stdout.strip()) == (0, want)


def test_check_config_good_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("bridge:\n  host: 127.0.0.1\n  port: 8123\n")
    out = run(["check-config", str(good)])
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("bridge:\n  max_connections: many\n")
    out = run(["check-config", str(bad)])
    assert out.returncode == 1
    assert "bridge.max_connections" in out.stderr
    missing = run(["check-config", str(tmp_path / "nope.yaml")])
    assert missing.returncode == 1


def test_arguments_that_are_not_utf8_are_read_as_the_binary_reads_them(tmp_path: Path) -> None:
    # Python hands such bytes over as lone surrogates (surrogateescape); the
    # binary reads them lossily (U+FFFD), and so does the script, instead of
    # dying with a UnicodeEncodeError traceback.
    out = subprocess.run([_script(), b"hash-key", b"dk_\xff"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256("dk_\ufffd".encode()).hexdigest()
    missing = subprocess.run(
        [_script(), b"check-config", os.path.join(os.fsencode(tmp_path), b"nope-\xff.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "nope-\ufffd.yaml" in missing.stderr, missing.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_answers_health_then_drains_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("bridge:\n  host: 127.0.0.1\n  port: 0\nmonitoring:\n  log_level: WARN\n")
    proc = subprocess.Popen(
        [_script(), "serve", "--config", str(cfg), "--echo", "py.echo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.strip().rsplit(" ", 1)[-1]
        with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["status"] == "up"
        req = urllib.request.Request(
            f"{url}/v1/route",
            data=json.dumps({"destination": "py.echo", "payload": {"x": 1}}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read()) == {"payload": {"x": 1}}
        os.kill(proc.pid, sig)
        # Drained and exited cleanly: 0, not killed by the signal, no KeyboardInterrupt.
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
