"""A Dream.OS agent on dreamos-bridge: authenticate, call a tool, publish an event.

Run it after `pip install .` (or `make demo`):

    python examples/agent.py

Everything is in-process and needs no file: the configuration is a dict. The
API key's SHA-256 goes into the config; the key itself stays with the agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets

from dreamos_bridge import AuthorizationError, BridgeManager, Message

API_KEY = "dk_live_" + secrets.token_hex(16)

CONFIG = {
    "bridge": {"request_timeout": "5s"},
    "security": {
        "auth_type": "token",
        "token_expiry": 3600,
        "rate_limit": 1000,  # per principal, per second
        "api_keys": [
            {"principal": "planner", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(), "roles": ["agent"]}
        ],
        "roles": {
            "agent": {
                "route": ["tools.>", "agents.*"],
                "publish": ["events.>"],
                "deny": ["agents.admin"],
            }
        },
    },
    "monitoring": {"metrics_enabled": True},
}


async def main() -> None:
    bridge = BridgeManager(CONFIG)
    async with bridge:
        # An in-process tool: any agent in this process can call it by subject.
        @bridge.handler("tools.summarize")
        async def summarize(msg: Message) -> dict:
            text = msg.payload["text"]
            return {
                "summary": text[:40] + ("..." if len(text) > 40 else ""),
                "words": len(text.split()),
                "asked_by": msg.source,
            }

        audit_log: list = []

        @bridge.handler("events.>")
        def audit(msg: Message) -> None:  # plain functions work too
            audit_log.append((msg.destination, msg.payload))

        token = await bridge.authenticate({"api_key": API_KEY})
        print(f"authenticated as {token.principal} with roles {token.roles}")

        reply = await bridge.route(
            "tools.summarize",
            {"text": "The bridge routes every agent call through one engine: auth, limits, metrics."},
            token=token,
            timeout=2.0,
        )
        print("tool reply:", json.dumps(reply))

        reply = await bridge.route(Message("tools.summarize", {"text": "Short one."}), token=token)
        print("tool reply:", json.dumps(reply))

        try:
            await bridge.route("agents.admin", {}, token=token)
        except AuthorizationError as e:
            print(f"refused as expected: {e.code}: {e}")

        msg_id = await bridge.publish("events.summarized", {"count": 2}, token=token)
        print("published event", msg_id)
        for _ in range(100):  # delivery is in the background
            if audit_log:
                break
            await asyncio.sleep(0.01)
        print("audit log:", audit_log)

        print("health:", await bridge.health())
        metrics = bridge.metrics()
        totals = metrics.get("totals", metrics)
        print("metrics (totals):", json.dumps({k: v for k, v in totals.items() if k != "latency"}))
        print("metrics (per route):", json.dumps({r: s["ok"] for r, s in metrics.get("routes", {}).items()}))


if __name__ == "__main__":
    asyncio.run(main())
