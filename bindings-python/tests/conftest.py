"""Shared fixtures: bridges on the real engine, and config helpers."""

from __future__ import annotations

import asyncio
import faulthandler
import hashlib
import os
import signal
import sys
import time
from typing import Any, AsyncIterator, Dict, Optional

import pytest

from dreamos_bridge import BridgeManager

API_KEY = "dk_test_planner_0123456789"

# A deadlock in the binding would hold the GIL, and then nothing in Python
# (not even asyncio timeouts) runs again: CI would hang until its own limit.
# faulthandler's watchdog is a C thread that needs no GIL; it prints every
# thread's stack and ends the run, so a hang becomes a failure with a trace.
TEST_WATCHDOG_SECONDS = 240


@pytest.fixture(autouse=True)
def _watchdog() -> Any:
    faulthandler.dump_traceback_later(TEST_WATCHDOG_SECONDS, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


ADMIN_KEY = "dk_test_admin_0123456789"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def security_config(**overrides: Any) -> Dict[str, Any]:
    """A config with security on: `planner` (role agent) and `root` (role admin)."""
    sec: Dict[str, Any] = {
        "auth_type": "token",
        "token_expiry": 3600,
        "signing_keys": [{"id": "k1", "secret": "test-signing-secret-0123456789abcdef"}],
        "api_keys": [
            {"principal": "planner", "sha256": sha256(API_KEY), "roles": ["agent"]},
            {"principal": "root", "sha256": sha256(ADMIN_KEY), "roles": ["admin"]},
        ],
        "roles": {
            "agent": {"route": ["agents.*", "tools.>"], "publish": ["events.>"], "deny": ["agents.admin"]},
            "admin": {"admin": [">"]},
        },
    }
    sec.update(overrides)
    return {"security": sec}


def totals(metrics: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The bridge-wide message counters of a metrics snapshot, or None
    while the metrics module is still the interface stub (empty snapshot)."""
    if not metrics:
        return None
    for key in ("totals", "messages", "total"):
        t = metrics.get(key)
        if isinstance(t, dict) and "accepted" in t:
            return t
    if "accepted" in metrics:
        return metrics
    raise AssertionError(f"no bridge-wide counters with 'accepted' in the metrics snapshot: {list(metrics)}")


def require_totals(bridge: BridgeManager) -> Dict[str, Any]:
    t = totals(bridge.metrics())
    if t is None:
        pytest.skip("metrics module not merged yet (empty snapshot)")
    return t


def count(t: Dict[str, Any], key: str) -> int:
    """A counter that may be a number or a per-code breakdown."""
    v = t.get(key, 0)
    if isinstance(v, dict):
        return sum(int(x) for x in v.values())
    return int(v)


async def eventually(pred: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def bridge() -> AsyncIterator[BridgeManager]:
    b = BridgeManager({"bridge": {"retry_attempts": 0, "shutdown_grace": "1s"}})
    await b.initialize()
    try:
        yield b
    finally:
        await b.shutdown()


def wait_child(pid: int, timeout: float = 60.0) -> int:
    """The exit code of a forked child; a child that hangs is killed and fails the test."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child hung")
