"""Process-level safety: fork(), interpreter exit with a live bridge, the stubs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dreamos_bridge as db
from dreamos_bridge import BridgeManager

from conftest import wait_child


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_after_initialize() -> None:
    """The parent's bridge fails clearly in the child; a new one works; the parent's keeps working."""
    parent = BridgeManager()

    async def setup() -> None:
        await parent.initialize()
        parent._n._register_rust_echo("rust.echo")
        assert await parent.route("rust.echo", 1) == 1

    loop = asyncio.new_event_loop()
    loop.run_until_complete(setup())

    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            signal.alarm(30)

            async def child() -> int:
                try:
                    await parent.route("rust.echo", 1)
                    return 10
                except db.ShutdownError as e:
                    if "fork" not in str(e):
                        return 11
                fresh = BridgeManager()
                async with fresh:
                    fresh.register_route("agents.echo", lambda m: m.payload)
                    fresh._n._register_rust_echo("rust.echo")
                    assert await fresh.route("agents.echo", {"a": 1}) == {"a": 1}
                    assert await fresh.route("rust.echo", 2) == 2
                return 0

            code = asyncio.run(child())
        except BaseException:
            code = 12
        finally:
            os._exit(code)
    assert wait_child(pid) == 0
    # the parent is unaffected
    assert loop.run_until_complete(parent.route("rust.echo", 3)) == 3
    loop.run_until_complete(parent.shutdown())
    loop.close()


def test_interpreter_exit_with_live_bridge(tmp_path: Path) -> None:
    script = tmp_path / "live.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, dreamos_bridge as db
            b = db.BridgeManager()
            async def main():
                await b.initialize()
                async def hang(msg):
                    await asyncio.sleep(100)
                b.register_route("agents.hang", hang)
                b.register_route("events.x", lambda m: None)
                b._n._register_rust_echo("rust.echo")
                await b.publish("events.x", 1)
                asyncio.ensure_future(b.route("agents.hang", 1))
                print(await b.route("rust.echo", "alive"), flush=True)
            loop = asyncio.new_event_loop()
            loop.run_until_complete(main())
            # exit with the bridge running and a call in flight
            """
        )
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "alive"


def test_stubs_match_the_native_module() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "dreamos_bridge._native", "--ignore-missing-stub"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_package_type_checks() -> None:
    pkg = Path(db.__file__).parent
    assert (pkg / "py.typed").exists()
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "-p", "dreamos_bridge"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
