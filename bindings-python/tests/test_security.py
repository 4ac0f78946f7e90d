"""Token flows against the engine's security layer (config keys of core/src/config.rs)."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest

import dreamos_bridge as db
from dreamos_bridge import BridgeManager, Message, Token

from conftest import ADMIN_KEY, API_KEY, security_config


async def test_authenticate_route_and_source() -> None:
    async with BridgeManager(security_config()) as b:
        seen = []
        b.register_route("agents.*", lambda m: seen.append(m) or {"from": m.source})
        token = await b.authenticate({"api_key": API_KEY})
        assert isinstance(token, Token)
        assert token.principal == "planner" and token.roles == ["agent"]
        assert isinstance(token.value, str) and token.value.count(".") == 2
        assert token.expires_at > 0
        assert token.value not in repr(token)
        assert await b.route("agents.summarize", {"t": 1}, token=token) == {"from": "planner"}
        assert await b.route("agents.summarize", {"t": 1}, token=token.value) == {"from": "planner"}
        assert seen[0].source == "planner"


async def test_missing_bad_forged_tokens() -> None:
    async with BridgeManager(security_config()) as b:
        b.register_route("agents.*", lambda m: "ok")
        with pytest.raises(db.AuthenticationError) as e:
            await b.route("agents.x", 1)
        assert e.value.code == "UNAUTHENTICATED"
        with pytest.raises(db.AuthenticationError):
            await b.authenticate({"api_key": "dk_wrong"})
        with pytest.raises(db.AuthenticationError):
            await b.authenticate({"nothing": "here"})
        token = await b.authenticate({"api_key": API_KEY})
        header, body, sig = token.value.split(".")
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        claims["roles"] = ["admin"]
        forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        for forged in (f"{header}.{forged_body}.{sig}", f"{header}.{body}.{sig[:-4]}AAAA", "not.a.jwt", ""):
            with pytest.raises(db.AuthenticationError):
                await b.route("agents.x", 1, token=forged)
        none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        with pytest.raises(db.AuthenticationError):
            await b.route("agents.x", 1, token=f"{none_header}.{body}.")
        assert await b.route("agents.x", 1, token=token) == "ok"


async def test_revoked_token() -> None:
    async with BridgeManager(security_config()) as b:
        b.register_route("agents.*", lambda m: "ok")
        token = await b.authenticate({"api_key": API_KEY})
        assert await b.route("agents.x", token=token) == "ok"
        await b.revoke(token)
        with pytest.raises(db.AuthenticationError):
            await b.route("agents.x", token=token)
        fresh = await b.authenticate({"api_key": API_KEY})
        assert await b.route("agents.x", token=fresh) == "ok"


async def test_expired_token() -> None:
    async with BridgeManager(security_config(token_expiry=1)) as b:
        b.register_route("agents.*", lambda m: "ok")
        token = await b.authenticate({"api_key": API_KEY})
        assert await b.route("agents.x", token=token) == "ok"
        # The engine allows a few seconds of clock-skew leeway (5 s) past `exp`.
        await asyncio.sleep(max(0.0, token.expires_at + 7 - time.time()))
        with pytest.raises(db.AuthenticationError):
            await b.route("agents.x", token=token)


async def test_authorize_and_forbidden() -> None:
    async with BridgeManager(security_config()) as b:
        b.register_route("agents.>", lambda m: "ok")
        b.register_route("events.>", lambda m: None)
        token = await b.authenticate({"api_key": API_KEY})
        admin = await b.authenticate({"api_key": ADMIN_KEY})
        assert await b.authorize(token, "agents.summarize") is True
        assert await b.authorize(token, "agents.admin") is False  # deny wins
        assert await b.authorize(token, "services.secret") is False
        assert await b.authorize(token, "events.audit", "publish") is True
        assert await b.authorize(token, "events.audit", "route") is False
        assert await b.authorize(admin, "agents.admin") is True
        with pytest.raises(db.AuthenticationError):
            await b.authorize("garbage", "agents.x")
        with pytest.raises(db.InvalidMessageError):
            await b.authorize(token, "agents.x", "fly")
        with pytest.raises(db.AuthorizationError) as e:
            await b.route("agents.admin", token=token)
        assert e.value.code == "FORBIDDEN"
        with pytest.raises(db.AuthorizationError):
            await b.publish("agents.x", 1, token=token)
        assert isinstance(await b.publish("events.audit", {"a": 1}, token=token), str)
        assert await b.route(Message("agents.deep.x", 1), token=admin) == "ok"


async def test_principal_rate_limit() -> None:
    cfg = security_config(rate_limit="1/min", rate_limit_burst=1)
    cfg["bridge"] = {"rate_limit_mode": "reject"}
    async with BridgeManager(cfg) as b:
        b.register_route("agents.*", lambda m: "ok")
        token = await b.authenticate({"api_key": API_KEY})
        assert await b.route("agents.x", token=token) == "ok"
        with pytest.raises(db.RateLimitedError) as e:
            await b.route("agents.x", token=token)
        assert e.value.retry_after is not None and e.value.retry_after > 0
