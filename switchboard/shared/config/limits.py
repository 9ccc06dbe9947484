"""The `rate_limits` section of the config: requests and tokens per minute, per API key.

Shape (YAML)::

    rate_limits:
      requests_per_minute: 60           # omitted or null: no limit
      tokens_per_minute: 200000
      redis_url: redis://127.0.0.1:6379/0   # omitted: in memory, per replica
      per_key:                          # overrides by API key; an omitted limit inherits the default, null lifts it
        sk-team-a: {requests_per_minute: 600}
        sk-batch: {requests_per_minute: null, tokens_per_minute: 1000000}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from switchboard.shared.config.errors import ConfigError
from switchboard.shared.crypto import key_id

Limits = tuple[int | None, int | None]
_KEYS = {"requests_per_minute", "tokens_per_minute", "redis_url", "per_key"}
_LIMIT_KEYS = {"requests_per_minute", "tokens_per_minute"}


@dataclass(frozen=True)
class RateLimitConfig:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    redis_url: str | None = None
    # key -> (requests per minute, tokens per minute), already merged with the defaults; None is no limit.
    per_key: dict[str, Limits] = field(default_factory=dict)
    # The same overrides by owner id (key_id of the API key), which is what the servicer limits by.
    _by_owner: dict[str, Limits] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_owner", {key_id(key): limits for key, limits in self.per_key.items()})

    def limits(self, key: str) -> Limits:
        """The limits of an API key, or of the owner id the servicer derives from it."""
        found = self.per_key.get(key)
        if found is None:
            found = self._by_owner.get(key)
        return found if found is not None else (self.requests_per_minute, self.tokens_per_minute)

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.requests_per_minute, self.tokens_per_minute)) or any(
            any(v is not None for v in pair) for pair in self.per_key.values())


def _limit(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ConfigError(f"{where}: expected a positive integer or null, got {raw!r}")
    return raw


def parse_rate_limits(raw: Any) -> RateLimitConfig:
    """The `rate_limits` section (None or missing: no limits)."""
    if raw is None:
        return RateLimitConfig()
    if not isinstance(raw, dict):
        raise ConfigError("rate_limits: expected a mapping")
    if unknown := set(raw) - _KEYS:
        raise ConfigError(f"rate_limits: unknown keys {sorted(map(str, unknown))}; allowed: {sorted(_KEYS)}")
    rpm = _limit(raw.get("requests_per_minute"), "rate_limits.requests_per_minute")
    tpm = _limit(raw.get("tokens_per_minute"), "rate_limits.tokens_per_minute")
    url = raw.get("redis_url")
    if url is not None and (not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://"))):
        raise ConfigError("rate_limits.redis_url: expected a redis://, rediss:// or unix:// URL")
    per_key_raw = raw.get("per_key") or {}
    if not isinstance(per_key_raw, dict):
        raise ConfigError("rate_limits.per_key: expected a mapping of API key to limits")
    per_key: dict[str, Limits] = {}
    for key, value in per_key_raw.items():
        where = f"rate_limits.per_key[{str(key)[:6]}...]"  # never print a whole API key
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping with requests_per_minute and/or tokens_per_minute")
        if unknown := set(value) - _LIMIT_KEYS:
            raise ConfigError(f"{where}: unknown keys {sorted(map(str, unknown))}; allowed: {sorted(_LIMIT_KEYS)}")
        per_key[str(key)] = (
            _limit(value["requests_per_minute"], f"{where}.requests_per_minute") if "requests_per_minute" in value
            else rpm,
            _limit(value["tokens_per_minute"], f"{where}.tokens_per_minute") if "tokens_per_minute" in value
            else tpm,
        )
    return RateLimitConfig(requests_per_minute=rpm, tokens_per_minute=tpm, redis_url=url, per_key=per_key)
