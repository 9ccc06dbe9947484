"""Provider routing (OpenRouter's `provider` object) and model fallbacks (`model`, then `models`).

`Router.plan` turns a request into an ordered list of attempts: for each model in turn, the endpoints that pass the
request's filters, in the order its preferences ask for. `Router.run` walks that list, falling back on failures that
another endpoint or model may not have, and retries the whole walk with backoff; it only ever covers the part of a
call before the first byte, because after that the client has seen output and a retry would duplicate it.

Default balancing follows OpenRouter: endpoints that failed recently (in cooldown) go last; among the rest, the first
attempt is drawn at random weighted by the inverse square of the price, and the remaining endpoints follow as
fallbacks, cheapest first. With a session key (`session_id` or `prompt_cache_key`) the draw is a weighted rendezvous
hash of the key instead of a random number, so a session keeps its endpoint (and the upstream's prompt cache) while
that endpoint stays healthy, and every replica picks the same one.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from switchboard.responses.v1 import responses_service_pb2 as pb
from switchboard.shared.config.routing import Endpoint, RoutedModel, RoutingConfig, parse_routing
from switchboard.shared.errors import ApiError, UpstreamError

__all__ = [
    "Attempt", "Endpoint", "RoutedModel", "Router", "RoutingConfig", "is_transient", "parse_routing", "prime",
    "should_fall_back", "with_retries",
]

T = TypeVar("T")
D = TypeVar("D")
Preferences = pb.ProviderPreferences

# Prices below this (USD per million tokens) weigh the same, so free endpoints do not get an infinite weight.
_PRICE_FLOOR = 0.01
_SORTS = {
    pb.PROVIDER_SORT_BY_PRICE: "price",
    pb.PROVIDER_SORT_BY_LATENCY: "latency",
    pb.PROVIDER_SORT_BY_THROUGHPUT: "throughput",
}


@dataclass(frozen=True)
class Attempt:
    model_name: str
    endpoint: Endpoint


def _percentile(samples: Iterable[float], pct: float) -> float | None:
    ordered = sorted(samples)
    if not ordered:
        return None
    pos = (len(ordered) - 1) * pct / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class _Stats:
    ttfb: deque[float]
    throughput: deque[float]
    cooldown_until: float = field(default=-math.inf)


def _matches(endpoint: Endpoint, names: Iterable[str]) -> bool:
    """`only`, `ignore` and `order` entries name a provider, or one endpoint as provider/model."""
    wanted = {n.lower() for n in names}
    return endpoint.provider.lower() in wanted or endpoint.slug.lower() in wanted


def _rank(endpoint: Endpoint, order: Sequence[str]) -> int | None:
    for index, name in enumerate(order):
        if _matches(endpoint, (name,)):
            return index
    return None


def _thresholds(value: pb.PercentileValue) -> list[tuple[float, float]]:
    if value.WhichOneof("value") == "number":
        return [(50.0, value.number)]
    p = value.percentiles
    pairs = [(50.0, "p50"), (75.0, "p75"), (90.0, "p90"), (99.0, "p99")]
    return [(pct, getattr(p, name)) for pct, name in pairs if p.HasField(name)]  # type: ignore[arg-type]


def _hash_unit(key: str, endpoint: Endpoint) -> float:
    # A stable hash (not Python's salted hash()) so that every replica and restart agrees.
    digest = hashlib.blake2b(f"{key}\0{endpoint.slug}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / (2**64 + 2)  # strictly inside (0, 1)


def _weight(endpoint: Endpoint) -> float:
    return 1.0 / max(endpoint.price, _PRICE_FLOOR) ** 2


class Router:
    """Routing config plus live per-endpoint stats (latency, throughput, cooldown), shared by all requests."""

    def __init__(
        self,
        config: RoutingConfig,
        provider_names: Iterable[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        window: int = 50,
    ) -> None:
        self.config = config
        self._providers = set(provider_names)
        self._clock = clock
        self._rng = rng or random.Random()
        self._window = window
        # Keyed by provider/model: the same upstream is equally healthy whichever routed model reached it.
        self._stats: dict[str, _Stats] = {}

    # ------------------------------------------------------------ stats

    def _get(self, endpoint: Endpoint) -> _Stats:
        stats = self._stats.get(endpoint.slug)
        if stats is None:
            stats = self._stats[endpoint.slug] = _Stats(deque(maxlen=self._window), deque(maxlen=self._window))
        return stats

    def record_success(self, endpoint: Endpoint, *, ttfb: float, tokens: int, duration: float) -> None:
        """A finished call: `ttfb` seconds to the first byte, `tokens` output tokens, `duration` seconds in all
        (request sent to last byte). Throughput is tokens over the generation time, duration - ttfb."""
        stats = self._get(endpoint)
        stats.ttfb.append(max(ttfb, 0.0))
        generating = duration - ttfb
        if tokens > 0 and generating > 0:
            stats.throughput.append(tokens / generating)
        stats.cooldown_until = -math.inf  # it answered: healthy again, whatever the cooldown said

    def record_failure(self, endpoint: Endpoint, *, retry_after: float | None = None) -> None:
        """Starts the cooldown: the endpoint goes last in plans for `cooldown_seconds` (or the upstream's
        Retry-After, when longer)."""
        period = max(self.config.cooldown_seconds, retry_after or 0.0)
        self._get(endpoint).cooldown_until = self._clock() + period

    def in_cooldown(self, endpoint: Endpoint) -> bool:
        stats = self._stats.get(endpoint.slug)
        return stats is not None and self._clock() < stats.cooldown_until

    def latency(self, endpoint: Endpoint, percentile: float = 50) -> float | None:
        """Time to first byte at that percentile of recent calls; None when unmeasured."""
        stats = self._stats.get(endpoint.slug)
        return _percentile(stats.ttfb, percentile) if stats else None

    def throughput(self, endpoint: Endpoint, percentile: float = 50) -> float | None:
        """Tokens per second that `percentile` % of recent calls reached or beat (so p90 is a low value, as a p90
        latency is a high one); None when unmeasured."""
        stats = self._stats.get(endpoint.slug)
        return _percentile(stats.throughput, 100 - percentile) if stats else None

    # ------------------------------------------------------------ planning

    def endpoints(self, name: str, param: str = "model") -> tuple[Endpoint, ...]:
        """A routed model's endpoints, or the one implicit endpoint of a plain `<provider>/<model>` name."""
        routed = self.config.model(name)
        if routed is not None:
            return routed.endpoints
        provider, sep, model = name.partition("/")
        if sep and provider and model and provider in self._providers:
            return (Endpoint(provider=provider, model=model),)
        raise ApiError(
            grpc.StatusCode.NOT_FOUND, "model_not_found",
            f"The model {name!r} does not exist: it is not a routed model, nor '<provider>/<model>' with a "
            "configured provider.", param=param,
        )

    def plan(
        self,
        model_names: list[str],
        prefs: Preferences | None,
        *,
        session_key: str | None,
        needed_parameters: set[str],
        estimated_input_tokens: int,
    ) -> list[Attempt]:
        """Ordered attempts over `model` then the `models` fallbacks (model_names[0] is `model`)."""
        p = prefs if prefs is not None else Preferences()
        sort_by, partition = self._sort(p)
        attempts: list[Attempt] = []
        reasons: list[str] = []
        params: list[str] = []
        for index, name in enumerate(dict.fromkeys(model_names)):
            endpoints = self.endpoints(name, "model" if index == 0 else f"models[{index - 1}]")
            kept, why, param = self._filter(endpoints, p, needed_parameters, estimated_input_tokens)
            ordered = self._order(kept, p, sort_by, session_key) if kept else []
            if kept and not ordered:
                why = f"provider.order {list(p.order)} with allow_fallbacks false matched none of " + ", ".join(
                    e.slug for e in kept)
                param = "provider.order"
            if not ordered:
                reasons.append(f"model {name!r}: {why}")
                params.append(param)
            attempts.extend(Attempt(name, e) for e in ordered)
        if not attempts:
            # The filters read only the configuration, so no retry can ever satisfy them: a permanent 404 (as
            # OpenRouter answers), never the 503 that endpoints failing or cooling down get.
            raise ApiError(
                grpc.StatusCode.NOT_FOUND, "no_endpoints_found",
                "No endpoints found that satisfy the routing requirements: " + "; ".join(reasons),
                param=params[0] if params else "provider",
            )
        if sort_by and partition == "none" and not p.order:
            # partition none: one sort across all models' endpoints instead of model by model.
            key = self._sort_key(sort_by)
            attempts.sort(key=lambda a: key(a.endpoint))
            attempts.sort(key=lambda a: not self._meets(a.endpoint, p))
            attempts.sort(key=lambda a: self.in_cooldown(a.endpoint))
        return attempts

    @staticmethod
    def _sort(p: Preferences) -> tuple[str | None, str]:
        if not p.HasField("sort"):
            return None, "model"
        if p.sort.WhichOneof("value") == "options":
            opts = p.sort.options
            return _SORTS.get(opts.by), opts.partition if opts.HasField("partition") else "model"
        return _SORTS.get(p.sort.by), "model"

    @staticmethod
    def _filter(
        endpoints: Sequence[Endpoint], p: Preferences, needed: set[str], estimated_tokens: int,
    ) -> tuple[list[Endpoint], str, str]:
        """The endpoints every filter keeps, which filter dropped which endpoint (for the error message), and the
        parameter of the filter that dropped the last one."""
        checks: list[tuple[str, Callable[[Endpoint], bool]]] = []
        if p.only:
            checks.append((f"provider.only {list(p.only)}", lambda e: _matches(e, p.only)))
        if p.ignore:
            checks.append((f"provider.ignore {list(p.ignore)}", lambda e: not _matches(e, p.ignore)))
        if p.data_collection == pb.DATA_COLLECTION_DENY:
            checks.append(("provider.data_collection 'deny'", lambda e: e.data_collection == "deny"))
        if p.HasField("zdr") and p.zdr:
            checks.append(("provider.zdr", lambda e: e.zdr))
        if p.quantizations:
            wanted = {q.lower() for q in p.quantizations}
            # An endpoint that does not declare its quantization is OpenRouter's 'unknown'.
            checks.append((f"provider.quantizations {sorted(wanted)}",
                           lambda e: (e.quantization or "unknown") in wanted))
        if p.HasField("max_price"):
            # No endpoint has an image price, so max_price.image cannot exclude anything.
            mp = p.max_price
            if mp.HasField("prompt"):
                checks.append((f"provider.max_price.prompt {mp.prompt:g}", lambda e: e.price_prompt <= mp.prompt))
            if mp.HasField("completion"):
                checks.append((f"provider.max_price.completion {mp.completion:g}",
                               lambda e: e.price_completion <= mp.completion))
            if mp.HasField("request"):
                checks.append((f"provider.max_price.request {mp.request:g}", lambda e: e.price_request <= mp.request))
        if p.HasField("require_parameters") and p.require_parameters and needed:
            checks.append((f"provider.require_parameters {sorted(needed)}",
                           lambda e: e.supported_parameters is None or needed <= e.supported_parameters))
        if estimated_tokens > 0:
            checks.append((f"context length below the ~{estimated_tokens} input tokens",
                           lambda e: e.context_length is None or e.context_length >= estimated_tokens))
        kept = list(endpoints)
        dropped: list[str] = []
        param = "provider"
        for why, ok in checks:
            out = [e for e in kept if not ok(e)]
            if out:
                dropped.append(f"{why} excluded {', '.join(e.slug for e in out)}")
                kept = [e for e in kept if ok(e)]
                if not kept:
                    param = why.split(" ", 1)[0] if why.startswith("provider.") else "input"
        return kept, "; ".join(dropped), param

    def _sort_key(self, sort_by: str) -> Callable[[Endpoint], tuple[bool, float, float]]:
        # Unmeasured endpoints sort last for latency and throughput; Python's stable sort keeps config order on ties.
        if sort_by == "latency":
            return lambda e: (self.latency(e) is None, self.latency(e) or 0.0, e.price)
        if sort_by == "throughput":
            return lambda e: (self.throughput(e) is None, -(self.throughput(e) or 0.0), e.price)
        return lambda e: (False, e.price, e.price_request)

    def _meets(self, e: Endpoint, p: Preferences) -> bool:
        """Whether an endpoint meets preferred_max_latency and preferred_min_throughput (unmeasured: it does not)."""
        if p.HasField("preferred_max_latency"):
            for pct, limit in _thresholds(p.preferred_max_latency):
                value = self.latency(e, pct)
                if value is None or value > limit:
                    return False
        if p.HasField("preferred_min_throughput"):
            for pct, limit in _thresholds(p.preferred_min_throughput):
                value = self.throughput(e, pct)
                if value is None or value < limit:
                    return False
        return True

    def _rearrange(self, endpoints: list[Endpoint], p: Preferences) -> list[Endpoint]:
        """Preferred endpoints first, then endpoints in cooldown last; both stable."""
        endpoints = sorted(endpoints, key=lambda e: not self._meets(e, p))
        return sorted(endpoints, key=self.in_cooldown)

    def _order(
        self, endpoints: list[Endpoint], p: Preferences, sort_by: str | None, session_key: str | None,
    ) -> list[Endpoint]:
        allow_fallbacks = p.allow_fallbacks if p.HasField("allow_fallbacks") else True
        by_price = self._sort_key(sort_by or "price")
        if p.order:
            head = sorted((e for e in endpoints if _rank(e, p.order) is not None),
                          key=lambda e: _rank(e, p.order) or 0)
            if not allow_fallbacks:
                return sorted(head, key=self.in_cooldown)
            tail = self._rearrange(sorted((e for e in endpoints if e not in head), key=by_price), p)
            return sorted(head, key=self.in_cooldown) + tail
        if sort_by:
            ordered = self._rearrange(sorted(endpoints, key=by_price), p)
        else:
            ordered = self._balanced(endpoints, p, session_key)
        return ordered if allow_fallbacks else ordered[:1]

    def _balanced(self, endpoints: list[Endpoint], p: Preferences, session_key: str | None) -> list[Endpoint]:
        ordered = self._rearrange(sorted(endpoints, key=lambda e: e.price), p)
        # The draw is among the best class only: healthy before cooling, preferred before not.
        klass = (self.in_cooldown(ordered[0]), self._meets(ordered[0], p))
        pool = [e for e in ordered if (self.in_cooldown(e), self._meets(e, p)) == klass]
        if session_key:
            # Weighted rendezvous hashing: P(pick e) is proportional to its weight, and an endpoint leaving the pool
            # moves only the sessions that were on it.
            first = max(pool, key=lambda e: -_weight(e) / math.log(_hash_unit(session_key, e)))
        else:
            first = self._rng.choices(pool, weights=[_weight(e) for e in pool])[0]
        return [first] + [e for e in ordered if e != first]

    # ------------------------------------------------------------ running

    async def run(
        self,
        attempts: Sequence[Attempt],
        call: Callable[[Attempt], Awaitable[T]],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> tuple[Attempt, T]:
        """Tries the attempts in order until one succeeds, then returns it with its result.

        `call` must cover only the part before the first byte (see `prime`): what it returns is final. A failure that
        `should_fall_back` moves on to the next attempt at once; a retryable upstream failure also puts its endpoint
        in cooldown. When every attempt failed that way, the whole list is tried again after a backoff, up to
        `max_retries` more times. Any other error is raised as it is.
        """
        if not attempts:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "no_provider_available",
                           "No provider meets the routing requirements: nothing to try", http_status=503)

        async def one_round() -> tuple[Attempt, T]:
            last: ApiError | None = None
            for attempt in attempts:
                try:
                    return attempt, await call(attempt)
                except ApiError as err:
                    if not should_fall_back(err):
                        raise
                    if is_transient(err):
                        self.record_failure(attempt.endpoint, retry_after=err.retry_after)
                    last = err
            assert last is not None
            raise last

        return await with_retries(one_round, max_retries=self.config.max_retries, backoff=self.config.retry_backoff,
                                  sleep=sleep)


def should_fall_back(error: ApiError) -> bool:
    """Whether another endpoint or model may succeed where this one failed: a retryable upstream failure (5xx, 429,
    timeout, connection failure) or a context too long for this model."""
    return (isinstance(error, UpstreamError) and error.retryable) or error.code == "context_length_exceeded"


def is_transient(error: BaseException) -> bool:
    """Whether the same endpoint may succeed later: retryable upstream failures, except a context that is too long."""
    return isinstance(error, UpstreamError) and error.retryable and error.code != "context_length_exceeded"


async def with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    backoff: float,
    max_backoff: float = 2.0,
    retry_if: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """`fn()` with up to `max_retries` retries on errors `retry_if` accepts, sleeping backoff * 2**n plus up to
    `backoff` of jitter (capped at max_backoff), or the error's retry_after when longer. An error whose retry_after
    exceeds max_backoff is raised at once: a client is better served by the 429 than by a long silent wait."""
    jittered = wait_exponential_jitter(multiplier=backoff, max=max_backoff, jitter=backoff)

    def hint(state: RetryCallState) -> float | None:
        err = state.outcome.exception() if state.outcome is not None else None
        value = getattr(err, "retry_after", None)
        return float(value) if isinstance(value, int | float) else None

    def wait(state: RetryCallState) -> float:
        return max(jittered(state), hint(state) or 0.0)

    def stop(state: RetryCallState) -> bool:
        after = hint(state)
        return state.attempt_number > max_retries or (after is not None and after > max_backoff)

    retrying = AsyncRetrying(stop=stop, wait=wait, retry=retry_if_exception(retry_if), reraise=True, sleep=sleep)
    async for attempt in retrying:
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity re-raises the last error")


async def prime(stream: AsyncIterator[D]) -> AsyncIterator[D]:
    """Waits for the stream's first item, so that failures before the first byte happen here (inside `Router.run`)
    and not later; returns an iterator over the whole stream, first item included."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first_items: list[D] = []
    else:
        first_items = [first]

    async def rest() -> AsyncIterator[D]:
        try:
            for item in first_items:
                yield item
            async for item in stream:
                yield item
        finally:
            # Closing the wrapper (a client that went away) must close the upstream call too.
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    return rest()
