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

from switchboard.shared.config.schema import RateLimitsFile, validate_section
from switchboard.shared.crypto import key_id

Limits = tuple[int | None, int | None]


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


def parse_rate_limits(raw: Any) -> RateLimitConfig:
    """The `rate_limits` section (None or missing: no limits)."""
    if raw is None:
        return RateLimitConfig()
    section = validate_section(RateLimitsFile, raw, "rate_limits")
    rpm, tpm = section.requests_per_minute, section.tokens_per_minute
    per_key: dict[str, Limits] = {}
    for key, value in (section.per_key or {}).items():
        given = value.model_fields_set  # an omitted limit inherits the default, null lifts it
        per_key[key] = (value.requests_per_minute if "requests_per_minute" in given else rpm,
                        value.tokens_per_minute if "tokens_per_minute" in given else tpm)
    return RateLimitConfig(requests_per_minute=rpm, tokens_per_minute=tpm, redis_url=section.redis_url,
                           per_key=per_key)
