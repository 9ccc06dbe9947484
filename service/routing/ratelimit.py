"""Rate limits per API key: requests per minute and tokens per minute.

Both limits are GCRA (the generic cell rate algorithm, a token bucket stored as one timestamp): a key may spend its
whole per-minute budget at once, and the budget refills continuously at limit/minute. One number per key and limit
keeps the Redis version a single atomic script with no per-request lists, and keys simply expire when full again.

Requests are counted when admitted. Tokens are known only after the call, so `check_request` admits a request while
its estimated tokens still fit the remaining budget, and `record_tokens` spends what the call actually used (which may
overdraw the budget; later requests then wait until it has refilled). A request estimated above the whole budget is
admitted only when the budget is full, so it is slow rather than impossible.

The configuration (`rate_limits`) is parsed by `switchboard.shared.config.limits`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from switchboard.shared.config.limits import Limits, RateLimitConfig
from switchboard.shared.errors import ApiError

log = logging.getLogger(__name__)

_EPS = 1e-9


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # The requests limit; None where no requests limit applies.
    limit: int | None = None
    remaining: int | None = None
    reset_seconds: float | None = None
    # Seconds until the request would be admitted; None when allowed.
    retry_after: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset_seconds: float | None = None
    # "requests" or "tokens": the limit that refused the request.
    exceeded: str | None = None


class RateLimiter(Protocol):
    async def check_request(self, key: str, estimated_tokens: int) -> Decision: ...

    async def record_tokens(self, key: str, tokens: int) -> None: ...

    async def aclose(self) -> None: ...


def _gcra(
    now: float, tat_r: float, tat_t: float, limits: Limits, estimated: int, period: float,
) -> tuple[Decision, float | None]:
    """The decision, and the new requests TAT to store when admitted. Mirrored by _CHECK_LUA."""
    rpm, tpm = limits
    allowed, retry, exceeded = True, 0.0, None
    base_r = max(tat_r, now)
    if rpm:
        new_r = base_r + period / rpm
        if new_r - now > period + _EPS:
            allowed, retry, exceeded = False, new_r - period - now, "requests"
    tokens_remaining = tokens_reset = None
    if tpm:
        ei = period / tpm
        base_t = max(tat_t, now)
        new_t = base_t + min(max(estimated, 0), tpm) * ei
        if new_t - now > period + _EPS:
            allowed, retry, exceeded = False, max(retry, new_t - period - now), exceeded or "tokens"
        tokens_remaining = max(0, math.floor((period - (base_t - now)) / ei + _EPS))
        tokens_reset = base_t - now
    remaining = reset = stored = None
    if rpm:
        tat = base_r + period / rpm if allowed else base_r
        stored = tat if allowed else None
        remaining = max(0, math.floor((period - (tat - now)) * rpm / period + _EPS))
        reset = tat - now
    decision = Decision(allowed, rpm, remaining, reset, None if allowed else retry, tpm, tokens_remaining,
                        tokens_reset, exceeded)
    return decision, stored


class MemoryRateLimiter:
    """Limits within one process (one replica)."""

    def __init__(self, config: RateLimitConfig, *, clock: Callable[[], float] = time.monotonic,
                 period: float = 60.0) -> None:
        self._config, self._clock, self._period = config, clock, period
        # key -> theoretical arrival time of the requests and tokens buckets; absent or past means full.
        self._requests: dict[str, float] = {}
        self._tokens: dict[str, float] = {}

    async def check_request(self, key: str, estimated_tokens: int) -> Decision:
        # No await between the read and the write: the event loop makes this atomic.
        now = self._clock()
        decision, stored = _gcra(now, self._requests.get(key, now), self._tokens.get(key, now),
                                 self._config.limits(key), estimated_tokens, self._period)
        if stored is not None:
            self._requests[key] = stored
        if len(self._requests) > 10_000:
            self._prune(now)
        return decision

    async def record_tokens(self, key: str, tokens: int) -> None:
        tpm = self._config.limits(key)[1]
        if tpm and tokens > 0:
            now = self._clock()
            self._tokens[key] = max(self._tokens.get(key, now), now) + tokens * self._period / tpm

    def _prune(self, now: float) -> None:
        for table in (self._requests, self._tokens):
            for key in [k for k, tat in table.items() if tat <= now]:
                del table[key]

    async def aclose(self) -> None:
        return None


# KEYS: requests TAT, tokens TAT. ARGV: rpm (0 = none), tpm (0 = none), estimated tokens, period in ms.
# Times are Redis's own clock (TIME) in ms, so replicas with skewed clocks still agree. Floats go back as strings
# because Redis truncates Lua numbers to integers.
_CHECK_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local rpm, tpm, est, period = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local allowed, retry, exceeded = 1, 0, ''
local v = redis.call('GET', KEYS[1])
local base_r = math.max(v and tonumber(v) or 0, now)
if rpm > 0 and base_r + period / rpm - now > period + 1e-6 then
  allowed, retry, exceeded = 0, base_r + period / rpm - period - now, 'requests'
end
local t_rem, t_reset = -1, 0
if tpm > 0 then
  local w = redis.call('GET', KEYS[2])
  local base_t = math.max(w and tonumber(w) or 0, now)
  local ei = period / tpm
  local new_t = base_t + math.min(math.max(est, 0), tpm) * ei
  if new_t - now > period + 1e-6 then
    allowed, retry = 0, math.max(retry, new_t - period - now)
    if exceeded == '' then exceeded = 'tokens' end
  end
  t_rem, t_reset = math.max(0, math.floor((period - (base_t - now)) / ei + 1e-9)), base_t - now
end
local r_rem, r_reset = -1, 0
if rpm > 0 then
  local tat = base_r
  if allowed == 1 then
    tat = base_r + period / rpm
    redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  end
  r_rem, r_reset = math.max(0, math.floor((period - (tat - now)) * rpm / period + 1e-9)), tat - now
end
return {allowed, exceeded, string.format('%.3f', retry), r_rem, string.format('%.3f', r_reset), t_rem,
        string.format('%.3f', t_reset)}
"""

# KEYS: tokens TAT. ARGV: tpm, tokens, period in ms.
_RECORD_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local v = redis.call('GET', KEYS[1])
local tat = math.max(v and tonumber(v) or 0, now) + tonumber(ARGV[2]) * tonumber(ARGV[3]) / tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
return 1
"""


class RedisRateLimiter:
    """Limits shared by every replica that uses the same Redis. Each check is one atomic Lua script.

    When Redis cannot be reached the limiter lets requests through (and logs): a rate limiter must not take the
    service down with it. Pass fail_open=False to refuse them instead.
    """

    def __init__(self, config: RateLimitConfig, url: str | None = None, *, period: float = 60.0,
                 prefix: str = "switchboard:ratelimit:", fail_open: bool = True) -> None:
        target = url or config.redis_url
        if not target:
            raise ValueError("RedisRateLimiter needs a Redis URL")
        self._config, self._period_ms, self._prefix, self._fail_open = config, period * 1000, prefix, fail_open
        self._redis = aioredis.Redis.from_url(target, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._check = self._redis.register_script(_CHECK_LUA)
        self._record = self._redis.register_script(_RECORD_LUA)

    def keys(self, key: str) -> tuple[str, str]:
        # A digest, so Redis never holds API keys; the {hash tag} keeps both keys in one Redis Cluster slot.
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return f"{self._prefix}{{{digest}}}:requests", f"{self._prefix}{{{digest}}}:tokens"

    async def check_request(self, key: str, estimated_tokens: int) -> Decision:
        rpm, tpm = self._config.limits(key)
        if not rpm and not tpm:
            return Decision(True)
        try:
            raw = await self._check(keys=list(self.keys(key)),
                                    args=[rpm or 0, tpm or 0, max(estimated_tokens, 0), self._period_ms])
        except RedisError:
            log.warning("rate limiter: Redis unavailable, %s the request", "admitting" if self._fail_open else
                        "refusing", exc_info=True)
            return Decision(True) if self._fail_open else Decision(False, retry_after=1.0, exceeded="requests")
        allowed, exceeded, retry, r_rem, r_reset, t_rem, t_reset = raw
        ok = int(allowed) == 1
        return Decision(
            allowed=ok,
            limit=rpm,
            remaining=int(r_rem) if rpm else None,
            reset_seconds=float(r_reset) / 1000 if rpm else None,
            retry_after=None if ok else float(retry) / 1000,
            tokens_limit=tpm,
            tokens_remaining=int(t_rem) if tpm else None,
            tokens_reset_seconds=float(t_reset) / 1000 if tpm else None,
            exceeded=(exceeded.decode() if isinstance(exceeded, bytes) else str(exceeded)) or None,
        )

    async def record_tokens(self, key: str, tokens: int) -> None:
        tpm = self._config.limits(key)[1]
        if not tpm or tokens <= 0:
            return
        try:
            await self._record(keys=[self.keys(key)[1]], args=[tpm, tokens, self._period_ms])
        except RedisError:
            log.warning("rate limiter: Redis unavailable, %d tokens not counted", tokens, exc_info=True)

    async def aclose(self) -> None:
        await self._redis.aclose()


def create_rate_limiter(config: RateLimitConfig) -> RateLimiter | None:
    """None when no limit is configured; Redis when the config names one, else in memory."""
    if not config.enabled:
        return None
    return RedisRateLimiter(config) if config.redis_url else MemoryRateLimiter(config)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: '20ms', '1.5s', '6m0s'."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{secs}" if minutes else secs


def _retry_after(decision: Decision) -> int:
    # Whole seconds, rounded up (HTTP's Retry-After is an integer), and at least 1 so clients do not spin.
    return max(1, math.ceil((decision.retry_after or 0.0) - 1e-6))


def headers(decision: Decision) -> dict[str, str]:
    out: dict[str, str] = {}
    for kind, limit, remaining, reset in (
        ("requests", decision.limit, decision.remaining, decision.reset_seconds),
        ("tokens", decision.tokens_limit, decision.tokens_remaining, decision.tokens_reset_seconds),
    ):
        if limit is not None:
            out[f"x-ratelimit-limit-{kind}"] = str(limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(remaining if remaining is not None else 0)
            out[f"x-ratelimit-reset-{kind}"] = _duration(reset or 0.0)
    if not decision.allowed:
        out["retry-after"] = str(_retry_after(decision))
    return out


def rejected(decision: Decision) -> ApiError:
    wait = _retry_after(decision)
    if decision.exceeded == "tokens":
        what = f"tokens per minute (limit: {decision.tokens_limit})"
    else:
        what = f"requests per minute (limit: {decision.limit})"
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit_exceeded",
                    f"Rate limit reached for {what}. Please try again in {wait}s.", retry_after=float(wait),
                    http_status=429)
