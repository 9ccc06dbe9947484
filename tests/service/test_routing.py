"""Provider routing and model fallbacks: plan filters and order, live stats, cooldown, sticky sessions, retries."""

from __future__ import annotations

import collections
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from switchboard.responses.v1 import responses_service_pb2 as pb
from switchboard.service.routing.router import (
    Attempt,
    Endpoint,
    Router,
    RoutingConfig,
    parse_routing,
    prime,
    should_fall_back,
    with_retries,
)
from switchboard.shared.config.errors import ConfigError
from switchboard.shared.errors import ApiError, UpstreamError

PROVIDERS = {"a", "b", "c", "d"}
RAW: dict[str, Any] = {
    "cooldown_seconds": 30,
    "models": [
        {"name": "llama", "endpoints": [
            {"provider": "a", "model": "meta-llama", "price": {"prompt": 0.1, "completion": 0.2},
             "context_length": 8192, "quantization": "FP8", "supported_parameters": ["temperature", "tools"]},
            {"provider": "b", "model": "llama", "price": {"prompt": 0.2, "completion": 0.4, "request": 0.01},
             "context_length": 32768, "quantization": "bf16", "data_collection": "deny", "zdr": True,
             "tier": "priority"},
            {"provider": "c", "model": "llama-q", "price": {"prompt": 0.05, "completion": 0.05},
             "context_length": 4096, "quantization": "int4", "supported_parameters": ["temperature"]},
        ]},
        # Same price everywhere: load balancing spreads evenly.
        {"name": "org/even", "endpoints": [
            {"provider": p, "model": "even", "price": {"prompt": 1, "completion": 1}} for p in ("a", "b", "c", "d")
        ]},
        {"name": "qwen", "endpoints": [
            {"provider": "d", "model": "qwen", "price": {"prompt": 0.15, "completion": 0.1}},
        ]},
    ],
}
A, B, C = "a/meta-llama", "b/llama", "c/llama-q"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def router(clock: Clock) -> Router:
    return Router(parse_routing(RAW, PROVIDERS), PROVIDERS, clock=clock, rng=random.Random(7))


def prefs(**kwargs: Any) -> pb.ProviderPreferences:
    return pb.ProviderPreferences(**kwargs)


PRICE = pb.ProviderSort(by=pb.PROVIDER_SORT_BY_PRICE)
PCT = pb.Percentiles
LATENCY = pb.ProviderSort(by=pb.PROVIDER_SORT_BY_LATENCY)
THROUGHPUT = pb.ProviderSort(by=pb.PROVIDER_SORT_BY_THROUGHPUT)


def plan(router: Router, p: pb.ProviderPreferences | None = None, *, models: tuple[str, ...] = ("llama",),
         key: str | None = None, needed: set[str] | None = None, tokens: int = 0) -> list[str]:
    attempts = router.plan(list(models), p, session_key=key, needed_parameters=needed or set(),
                           estimated_input_tokens=tokens)
    return [a.endpoint.slug for a in attempts]


def endpoint(router: Router, slug: str, model: str = "llama") -> Endpoint:
    return next(e for e in router.endpoints(model) if e.slug == slug)


# ---------------------------------------------------------------- config


def test_parse_routing_builds_endpoints() -> None:
    config = parse_routing(RAW, PROVIDERS)
    llama = config.model("llama")
    assert llama is not None and config.cooldown_seconds == 30 and config.max_retries == 2
    a, b, _ = llama.endpoints
    assert a == Endpoint("a", "meta-llama", 0.1, 0.2, 0.0, 8192, "fp8", "allow", False, "default",
                         frozenset({"temperature", "tools"}))
    assert (b.data_collection, b.zdr, b.tier, b.price_request, b.supported_parameters) == (
        "deny", True, "priority", 0.01, None)
    assert parse_routing(None, PROVIDERS) == RoutingConfig()


@pytest.mark.parametrize(("raw", "message"), [
    ({"model": []}, "routing: unknown keys ['model']"),
    ({"models": [{"name": "x", "endpoints": []}]}, "routing.models[0].endpoints: list should have at least 1 item"),
    ({"models": [{"name": "x", "endpoints": [{"provider": "zz", "model": "m"}]}]},
     "routing.models[0].endpoints[0].provider: no provider named 'zz'"),
    ({"models": [{"name": "x", "endpoints": [{"provider": "a"}]}]},
     "routing.models[0].endpoints[0].model: field required"),
    ({"models": [{"name": "x", "endpoints": [{"provider": "a", "model": "m", "price": {"prompt": -1}}]}]},
     "endpoints[0].price.prompt: input should be greater than or equal to 0, got -1"),
    ({"models": [{"name": "x", "endpoints": [{"provider": "a", "model": "m", "price": {"input": 1}}]}]},
     "price: unknown keys ['input']"),
    ({"models": [{"name": "x", "endpoints": [{"provider": "a", "model": "m", "data_collection": "no"}]}]},
     "data_collection: input should be 'allow' or 'deny', got 'no'"),
    ({"models": [{"name": "x", "endpoints": [{"provider": "a", "model": "m", "tier": "gold"}]}]},
     "tier: input should be 'default', 'flex', 'priority' or 'scale', got 'gold'"),
    ({"models": [{"name": "x", "endpoints": [{"provider": "a", "model": "m", "context_length": 0}]}]},
     "context_length: input should be greater than or equal to 1, got 0"),
    ({"models": [{"name": "x", "endpoints": [{"provider": "a", "model": "m"}, {"provider": "a", "model": "m"}]}]},
     "each provider/model pair may appear once"),
    ({"models": [{"name": "x", "endpoints": [{"provider": "a", "model": "m"}]},
                 {"name": "x", "endpoints": [{"provider": "b", "model": "m"}]}]}, "names must be unique"),
    ({"max_retries": -1}, "routing.max_retries: input should be greater than or equal to 0, got -1"),
    ([], "routing: expected a mapping"),
])
def test_parse_routing_errors(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_routing(raw, PROVIDERS)


# ---------------------------------------------------------------- filters


@pytest.mark.parametrize(("p", "needed", "tokens", "expected"), [
    (prefs(), None, 0, {A, B, C}),
    (prefs(only=["a"]), None, 0, {A}),
    (prefs(only=["B/llama", "c"]), None, 0, {B, C}),
    (prefs(ignore=["a"]), None, 0, {B, C}),
    (prefs(ignore=["a", "c/llama-q"]), None, 0, {B}),
    (prefs(data_collection=pb.DATA_COLLECTION_DENY), None, 0, {B}),
    (prefs(data_collection=pb.DATA_COLLECTION_ALLOW), None, 0, {A, B, C}),
    (prefs(zdr=True), None, 0, {B}),
    (prefs(quantizations=["fp8", "INT4"]), None, 0, {A, C}),
    (prefs(max_price=pb.MaxPrice(prompt=0.1)), None, 0, {A, C}),
    (prefs(max_price=pb.MaxPrice(completion=0.1)), None, 0, {C}),
    (prefs(max_price=pb.MaxPrice(request=0.0)), None, 0, {A, C}),
    (prefs(max_price=pb.MaxPrice(image=0.0)), None, 0, {A, B, C}),
    (prefs(require_parameters=True), {"tools"}, 0, {A, B}),
    (prefs(require_parameters=True), {"temperature"}, 0, {A, B, C}),
    (prefs(require_parameters=False), {"tools", "top_k"}, 0, {A, B, C}),
    (prefs(), None, 5000, {A, B}),
    (prefs(), None, 20000, {B}),
    (prefs(only=["a", "c"], max_price=pb.MaxPrice(prompt=0.07)), None, 0, {C}),
])
def test_filters(router: Router, p: pb.ProviderPreferences, needed: set[str] | None, tokens: int,
                 expected: set[str]) -> None:
    assert set(plan(router, p, needed=needed, tokens=tokens)) == expected


@pytest.mark.parametrize(("p", "tokens", "reasons", "param"), [
    (prefs(max_price=pb.MaxPrice(prompt=0.01)), 0, ["provider.max_price.prompt 0.01 excluded a/meta-llama, b/llama"],
     "provider.max_price.prompt"),
    (prefs(only=["a"], zdr=True), 0, ["provider.only ['a'] excluded b/llama, c/llama-q", "provider.zdr excluded a/"],
     "provider.zdr"),
    (prefs(ignore=["a", "b", "c"]), 0, ["provider.ignore ['a', 'b', 'c'] excluded"], "provider.ignore"),
    (prefs(quantizations=["int3"]), 0, ["provider.quantizations ['int3'] excluded"], "provider.quantizations"),
    (prefs(), 100_000, ["context length below the ~100000 input tokens"], "input"),
    (prefs(order=["zz"], allow_fallbacks=False), 0, ["provider.order ['zz'] with allow_fallbacks false"],
     "provider.order"),
])
def test_nothing_left_is_a_permanent_404_naming_the_filter(router: Router, p: pb.ProviderPreferences, tokens: int,
                                                           reasons: list[str], param: str) -> None:
    with pytest.raises(ApiError) as info:
        plan(router, p, tokens=tokens)
    err = info.value
    assert (err.status, err.code, err.http_status) == (grpc.StatusCode.NOT_FOUND, "no_endpoints_found", None)
    assert err.param == param
    assert err.message.startswith("No endpoints found that satisfy the routing requirements: model 'llama': ")
    for reason in reasons:
        assert reason in err.message


# ---------------------------------------------------------------- order and sort


@pytest.mark.parametrize(("p", "expected"), [
    (prefs(order=["b", "a"]), [B, A, C]),
    (prefs(order=["b", "a"], allow_fallbacks=True), [B, A, C]),
    (prefs(order=["b", "a"], allow_fallbacks=False), [B, A]),
    (prefs(order=["c/llama-q"], allow_fallbacks=False), [C]),
    (prefs(order=["b"], sort=PRICE), [B, C, A]),  # fallbacks after the order follow the sort
    (prefs(sort=PRICE), [C, A, B]),
    (prefs(sort=pb.ProviderSort(options=pb.ProviderSortOptions(by=pb.PROVIDER_SORT_BY_PRICE))), [C, A, B]),
    (prefs(sort=PRICE, allow_fallbacks=False), [C]),
    (prefs(sort=PRICE, ignore=["c"]), [A, B]),
])
def test_order_and_price_sort(router: Router, p: pb.ProviderPreferences, expected: list[str]) -> None:
    assert plan(router, p) == expected


def test_sort_by_latency_and_throughput(router: Router) -> None:
    a, b = endpoint(router, A), endpoint(router, B)
    # a: slow first byte, fast generation; b: the opposite; c: never measured, so last either way.
    for _ in range(5):
        router.record_success(a, ttfb=0.8, tokens=200, duration=1.8)  # 200 tok/s
        router.record_success(b, ttfb=0.1, tokens=50, duration=1.1)  # 50 tok/s
    assert router.latency(a) == pytest.approx(0.8) and router.throughput(b) == pytest.approx(50)
    assert plan(router, prefs(sort=LATENCY)) == [B, A, C]
    assert plan(router, prefs(sort=THROUGHPUT)) == [A, B, C]
    # Recent calls count: b slows down past a.
    for _ in range(50):
        router.record_success(b, ttfb=2.0, tokens=10, duration=3.0)
    assert plan(router, prefs(sort=LATENCY)) == [A, B, C]


def test_sort_partition_none_mixes_models(router: Router) -> None:
    by_model = prefs(sort=PRICE)
    merged = prefs(sort=pb.ProviderSort(options=pb.ProviderSortOptions(by=pb.PROVIDER_SORT_BY_PRICE,
                                                                       partition="none")))
    assert plan(router, by_model, models=("llama", "qwen")) == [C, A, B, "d/qwen"]
    assert plan(router, merged, models=("llama", "qwen")) == [C, "d/qwen", A, B]


@pytest.mark.parametrize(("p", "expected_first"), [
    (prefs(sort=PRICE, preferred_max_latency=pb.PercentileValue(number=0.5)), [A, C, B]),
    (prefs(sort=PRICE, preferred_max_latency=pb.PercentileValue(percentiles=PCT(p90=1.5))), [A, C, B]),
    (prefs(sort=PRICE, preferred_max_latency=pb.PercentileValue(percentiles=PCT(p50=3, p99=0.9))), [C, A, B]),
    (prefs(sort=PRICE, preferred_min_throughput=pb.PercentileValue(number=100)), [B, C, A]),
    (prefs(preferred_max_latency=pb.PercentileValue(number=0.5)), [A]),  # default balancing: preferred drawn first
])
def test_preferences_move_endpoints_first(router: Router, p: pb.ProviderPreferences,
                                          expected_first: list[str]) -> None:
    a, b = endpoint(router, A), endpoint(router, B)
    for ttfb in (0.2, 0.3, 0.4, 1.0):  # a: p50 0.35, p90 ~0.82, p99 ~0.98
        router.record_success(a, ttfb=ttfb, tokens=10, duration=ttfb + 1)  # 10 tok/s
    router.record_success(b, ttfb=2.0, tokens=300, duration=3.0)  # 300 tok/s
    got = plan(router, p)
    assert got[:len(expected_first)] == expected_first and set(got) == {A, B, C}


# ---------------------------------------------------------------- cooldown, balancing, stickiness


def test_cooldown_after_failure_and_recovery(router: Router, clock: Clock) -> None:
    c = endpoint(router, C)
    router.record_failure(c)
    assert router.in_cooldown(c)
    assert plan(router, prefs(sort=PRICE)) == [A, B, C]  # still usable, but last
    assert all(plan(router, key=f"s{i}")[-1] == C for i in range(30))
    clock.now += 29
    assert plan(router, prefs(sort=PRICE)) == [A, B, C]
    clock.now += 1.5
    assert not router.in_cooldown(c)
    assert plan(router, prefs(sort=PRICE)) == [C, A, B]
    # A longer Retry-After from the upstream extends the cooldown; a success ends it.
    router.record_failure(c, retry_after=120)
    clock.now += 60
    assert router.in_cooldown(c)
    router.record_success(c, ttfb=0.1, tokens=1, duration=0.2)
    assert not router.in_cooldown(c)


def test_default_balancing_weights_by_inverse_price_squared(router: Router) -> None:
    firsts = collections.Counter(plan(router)[0] for _ in range(600))
    # Weights 1/0.1^2 : 1/0.3^2 : 1/0.6^2 = 100 : 11.1 : 2.8 -> c ~88 %, a ~10 %, b ~2 %.
    assert firsts[C] > 450 and firsts[A] > 20 and firsts[C] > firsts[A] > firsts[B]
    # Fallbacks after the drawn endpoint are cheapest first.
    assert all(p[1:] == sorted(p[1:], key=[C, A, B].index) for p in (plan(router) for _ in range(50)))


def test_sticky_sessions(router: Router, clock: Clock) -> None:
    even = ("org/even",)
    first = plan(router, models=even, key="session-1")[0]
    assert all(plan(router, models=even, key="session-1")[0] == first for _ in range(100))
    spread = collections.Counter(plan(router, models=even, key=f"user-{i}")[0] for i in range(400))
    assert len(spread) == 4 and min(spread.values()) > 60  # ~100 each
    # The session moves while its endpoint cools, only that session moves, and it comes back afterwards.
    others = {k: plan(router, models=even, key=k)[0] for k in (f"user-{i}" for i in range(40))}
    router.record_failure(endpoint(router, first, "org/even"))
    moved = plan(router, models=even, key="session-1")
    assert moved[0] != first and moved[-1] == first
    assert all(plan(router, models=even, key=k)[0] == v for k, v in others.items() if v != first)
    clock.now += 31
    assert plan(router, models=even, key="session-1")[0] == first
    # `order` wins over stickiness.
    assert all(plan(router, prefs(order=["d"]), models=even, key=f"user-{i}")[0] == "d/even" for i in range(20))


# ---------------------------------------------------------------- models fallbacks


def test_fallback_order_across_models(router: Router) -> None:
    assert plan(router, prefs(sort=PRICE), models=("qwen", "llama", "a/plain")) == ["d/qwen", C, A, B, "a/plain"]
    # A model whose endpoints are all filtered out is skipped; the others still serve.
    assert plan(router, prefs(only=["d", "a"], sort=PRICE), models=("llama", "qwen")) == [A, "d/qwen"]
    assert plan(router, prefs(ignore=["d"]), models=("qwen", "b/x")) == ["b/x"]
    # Duplicates are planned once.
    assert plan(router, prefs(sort=PRICE), models=("qwen", "qwen")) == ["d/qwen"]
    attempts = router.plan(["qwen", "llama"], None, session_key=None, needed_parameters=set(),
                           estimated_input_tokens=0)
    assert [a.model_name for a in attempts] == ["qwen", "llama", "llama", "llama"]


@pytest.mark.parametrize(("models", "param"), [(("nope",), "model"), (("llama", "zz/m"), "models[0]"),
                                               (("llama", "qwen", "noslash"), "models[1]")])
def test_unknown_model_is_404(router: Router, models: tuple[str, ...], param: str) -> None:
    with pytest.raises(ApiError) as info:
        plan(router, models=models)
    assert (info.value.code, info.value.param, info.value.status) == ("model_not_found", param,
                                                                      grpc.StatusCode.NOT_FOUND)


# ---------------------------------------------------------------- errors, retries, run


@pytest.mark.parametrize(("error", "expected"), [
    (UpstreamError("502", upstream_status=502), True),
    (UpstreamError("429", upstream_status=429, status=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=3), True),
    (UpstreamError("timeout", code="upstream_timeout", status=grpc.StatusCode.DEADLINE_EXCEEDED), True),
    (UpstreamError("ctx", code="context_length_exceeded", status=grpc.StatusCode.INVALID_ARGUMENT), True),
    (ApiError(grpc.StatusCode.INVALID_ARGUMENT, "context_length_exceeded", "too long"), True),
    (UpstreamError("400", upstream_status=400, retryable=False, status=grpc.StatusCode.INVALID_ARGUMENT), False),
    (UpstreamError("cut", code="upstream_stream_interrupted", retryable=False), False),
    (ApiError(grpc.StatusCode.INVALID_ARGUMENT, "invalid_request", "bad"), False),
])
def test_should_fall_back(error: ApiError, expected: bool) -> None:
    assert should_fall_back(error) is expected


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


async def test_with_retries_backs_off_then_succeeds() -> None:
    sleeps, calls = Sleeps(), []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise UpstreamError("503", upstream_status=503)
        return "ok"

    assert await with_retries(flaky, max_retries=2, backoff=0.2, sleep=sleeps) == "ok"
    assert len(sleeps) == 2 and 0.2 <= sleeps[0] <= 0.4 and 0.4 <= sleeps[1] <= 0.6


@pytest.mark.parametrize(("error", "calls"), [
    (UpstreamError("503", upstream_status=503), 3),  # retried, then the last error
    (UpstreamError("400", retryable=False), 1),  # not retryable
    (UpstreamError("ctx", code="context_length_exceeded"), 1),  # the same endpoint will not take it either
    (UpstreamError("429", status=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=30), 1),  # too long to wait
])
async def test_with_retries_gives_up(error: ApiError, calls: int) -> None:
    sleeps, seen = Sleeps(), []

    async def failing() -> None:
        seen.append(1)
        raise error

    with pytest.raises(ApiError) as info:
        await with_retries(failing, max_retries=2, backoff=0.01, sleep=sleeps)
    assert info.value is error and len(seen) == calls


async def test_with_retries_waits_for_short_retry_after() -> None:
    sleeps, seen = Sleeps(), []

    async def limited() -> int:
        seen.append(1)
        if len(seen) == 1:
            raise UpstreamError("429", status=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=1.5)
        return 1

    assert await with_retries(limited, max_retries=2, backoff=0.01, sleep=sleeps) == 1
    assert sleeps == [1.5]


async def test_run_falls_back_and_cools(router: Router) -> None:
    attempts = router.plan(["llama", "qwen"], prefs(sort=PRICE), session_key=None, needed_parameters=set(),
                           estimated_input_tokens=0)
    errors: dict[str, ApiError] = {
        C: UpstreamError("ctx", code="context_length_exceeded", status=grpc.StatusCode.INVALID_ARGUMENT),
        A: UpstreamError("502", upstream_status=502),
        B: UpstreamError("down", code="upstream_unavailable"),
    }
    tried: list[str] = []

    async def call(attempt: Attempt) -> str:
        tried.append(attempt.endpoint.slug)
        if attempt.endpoint.slug in errors:
            raise errors[attempt.endpoint.slug]
        return attempt.model_name

    won, result = await router.run(attempts, call, sleep=Sleeps())
    assert (won.endpoint.slug, result, tried) == ("d/qwen", "qwen", [C, A, B, "d/qwen"])
    # Upstream failures cool their endpoint; a context too long is the request's fault, not the endpoint's.
    assert [router.in_cooldown(endpoint(router, s)) for s in (A, B, C)] == [True, True, False]


async def test_run_retries_rounds_then_raises_last(router: Router) -> None:
    attempts = [Attempt("llama", endpoint(router, s)) for s in (A, B)]
    tried: list[str] = []
    sleeps = Sleeps()

    async def call(attempt: Attempt) -> None:
        tried.append(attempt.endpoint.slug)
        raise UpstreamError(f"{attempt.endpoint.slug} down", upstream_status=503)

    with pytest.raises(UpstreamError, match="b/llama down"):
        await router.run(attempts, call, sleep=sleeps)
    assert tried == [A, B] * 3 and len(sleeps) == 2  # max_retries = 2 extra rounds, with backoff between


async def test_run_raises_non_fallback_errors_at_once(router: Router) -> None:
    attempts = [Attempt("llama", endpoint(router, s)) for s in (A, B)]
    tried: list[str] = []

    async def call(attempt: Attempt) -> None:
        tried.append(attempt.endpoint.slug)
        raise UpstreamError("bad request", retryable=False, status=grpc.StatusCode.INVALID_ARGUMENT)

    with pytest.raises(UpstreamError, match="bad request"):
        await router.run(attempts, call, sleep=Sleeps())
    assert tried == [A] and not router.in_cooldown(endpoint(router, A))


async def test_prime_surfaces_errors_before_the_first_byte() -> None:
    async def fails_first() -> AsyncIterator[int]:
        raise UpstreamError("503", upstream_status=503)
        yield 0  # pragma: no cover

    async def counts() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    async def empty() -> AsyncIterator[int]:
        return
        yield 0  # pragma: no cover

    with pytest.raises(UpstreamError):
        await prime(fails_first())
    assert [i async for i in await prime(counts())] == [0, 1, 2]
    assert [i async for i in await prime(empty())] == []
