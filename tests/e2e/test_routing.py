"""Provider routing end to end: one `switchboard serve` (service + edge) over three fake upstream processes.

Providers `a`, `b` and `c` are each their own `tests.fakes.openai_chat` process; the upstream model id of an endpoint
picks the fake's behaviour (`echo`, `fail-500`, `fail-429`, `slow-N`). Extra provider names pointing at the same
processes give endpoints their own provider/model slug, so that the cooldown and latency stats one test builds up do
not leak into another. Which endpoint served a request is read back from the fakes' `/_requests`, by a marker that is
unique per test.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.stack import API_KEY, Process, Stack, start_stack, start_upstream

UPSTREAMS = ("a", "b", "c")
COOLDOWN = 1.0


def _price(value: float) -> dict[str, float]:
    return {"prompt": value, "completion": value}


ROUTING: dict[str, Any] = {
    "cooldown_seconds": COOLDOWN,
    "max_retries": 0,
    "retry_backoff": 0.05,
    "models": [
        # Prices per million tokens (prompt + completion): a 2, b 0.2, c 10.
        {"name": "llama", "endpoints": [
            {"provider": "a", "model": "echo", "price": _price(1), "context_length": 8192, "tier": "default"},
            {"provider": "b", "model": "echo", "price": _price(0.1), "context_length": 8192, "tier": "flex"},
            {"provider": "c", "model": "echo", "price": _price(5), "quantization": "fp8", "data_collection": "deny",
             "zdr": True, "tier": "priority"},
        ]},
        # Same price everywhere, so the sticky hash spreads sessions evenly.
        {"name": "even", "endpoints": [
            {"provider": p, "model": "echo", "price": _price(1)} for p in UPSTREAMS
        ]},
        # The cheap endpoint is slow (~250 ms to the first byte), the dearer one fast.
        {"name": "lat", "endpoints": [
            {"provider": "lat_a", "model": "slow-250", "price": _price(0.1)},
            {"provider": "lat_b", "model": "echo", "price": _price(1)},
        ]},
        # The cheap endpoint always fails with a 500.
        {"name": "flaky", "endpoints": [
            {"provider": "flake_a", "model": "fail-500", "price": _price(0.1)},
            {"provider": "flake_b", "model": "echo", "price": _price(1)},
        ]},
        {"name": "cool", "endpoints": [
            {"provider": "cool_a", "model": "fail-500", "price": _price(0.1)},
            {"provider": "cool_b", "model": "echo", "price": _price(1)},
        ]},
        # Model fallbacks: two broken models on upstream c (so their order is visible there), then one on b. Their
        # routed names may or may not contain a slash.
        {"name": "fb/broken", "endpoints": [{"provider": "fb_c", "model": "fail-500"}]},
        {"name": "fb/broken2", "endpoints": [{"provider": "fb_c", "model": "fail-429"}]},
        {"name": "fb/solo", "endpoints": [{"provider": "fb_b", "model": "echo", "tier": "scale"}]},
    ],
}
# Provider name -> the upstream process it points at.
ALIASES = {"a": "a", "b": "b", "c": "c", "lat_a": "a", "lat_b": "b", "flake_a": "a", "flake_b": "b",
           "cool_a": "a", "cool_b": "b", "fb_b": "b", "fb_c": "c"}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, str]]:
    processes: list[Process] = []
    urls: dict[str, str] = {}
    try:
        for name in UPSTREAMS:
            process, url = start_upstream()
            processes.append(process)
            urls[name] = url
        yield urls
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, str]) -> Iterator[Stack]:
    providers = [{"name": alias, "kind": "openai-chat", "base_url": f"{upstreams[target]}/v1"}
                 for alias, target in ALIASES.items()]
    extra = {"providers": providers, "default_model": "a/echo", "pricing": {}, "routing": ROUTING}
    stack = start_stack(Path(tmp_path_factory.mktemp("routing")), upstreams["a"], envoy=False, local_model=False,
                        extra=extra)
    yield stack
    stack.stop()


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.http, headers={"authorization": f"Bearer {API_KEY}"}, timeout=30) as client:
        yield client


@pytest.fixture
def marker() -> str:
    return "m" + secrets.token_hex(6)


def _messages_text(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return " ".join(parts)


def hits(upstreams: dict[str, str], marker: str) -> dict[str, list[str]]:
    """Upstream process -> the upstream model ids of the requests it received that carry `marker`, in order."""
    found: dict[str, list[str]] = {}
    for name, url in upstreams.items():
        requests = httpx.get(f"{url}/_requests", timeout=10).json()
        found[name] = [str(r["body"].get("model")) for r in requests if marker in _messages_text(r["body"])]
    return found


def served_by(upstreams: dict[str, str], marker: str) -> str:
    """The one upstream that received a request with `marker`."""
    found = {name: models for name, models in hits(upstreams, marker).items() if models}
    assert len(found) == 1 and len(next(iter(found.values()))) == 1, found
    return next(iter(found))


def create(http: httpx.Client, model: str, text: str, **fields: Any) -> dict[str, Any]:
    reply = http.post("/v1/responses", json={"model": model, "input": text, **fields})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def create_streamed(http: httpx.Client, model: str, text: str, **fields: Any) -> dict[str, Any]:
    """The final response of a streamed request."""
    with http.stream("POST", "/v1/responses", json={"model": model, "input": text, "stream": True, **fields}) as reply:
        assert reply.status_code == 200, reply.read()
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    assert events[-1]["type"] == "response.completed", events[-1]
    final: dict[str, Any] = events[-1]["response"]
    return final


# ---------------------------------------------------------------- sort, filters, tiers


def test_sort_by_price_takes_the_cheapest(http: httpx.Client, upstreams: dict[str, str], marker: str) -> None:
    body = create(http, "llama", f"{marker} price", provider={"sort": "price"})
    assert served_by(upstreams, marker) == "b"
    assert body["model"] == "llama"
    assert body["service_tier"] == "flex"
    assert body["output_text"] == f"echo: {marker} price"


def test_sort_object_and_streaming(http: httpx.Client, upstreams: dict[str, str], marker: str) -> None:
    final = create_streamed(http, "llama", f"{marker} stream", provider={"sort": {"by": "price"}, "ignore": ["b"]})
    assert final["model"] == "llama"
    assert final["service_tier"] == "default"
    assert served_by(upstreams, marker) == "a"


@pytest.mark.parametrize(("provider", "expected", "tier"), [
    ({"sort": "price", "only": ["c"]}, "c", "priority"),
    ({"sort": "price", "only": ["a/echo", "c"]}, "a", "default"),
    ({"sort": "price", "ignore": ["b"]}, "a", "default"),
    ({"sort": "price", "ignore": ["b/echo", "a"]}, "c", "priority"),
    ({"data_collection": "deny"}, "c", "priority"),
    ({"zdr": True}, "c", "priority"),
    ({"quantizations": ["fp8"]}, "c", "priority"),
    ({"order": ["c", "a"]}, "c", "priority"),
    ({"order": ["a"], "allow_fallbacks": False}, "a", "default"),
    ({"sort": "price", "max_price": {"prompt": 2, "completion": 2}, "ignore": ["b"]}, "a", "default"),
    ({"max_price": {"prompt": 0.5}}, "b", "flex"),
])
def test_provider_preferences(http: httpx.Client, upstreams: dict[str, str], marker: str,
                              provider: dict[str, Any], expected: str, tier: str) -> None:
    body = create(http, "llama", f"{marker} prefs", provider=provider)
    assert served_by(upstreams, marker) == expected
    assert body["service_tier"] == tier
    assert body["model"] == "llama"


@pytest.mark.parametrize(("provider", "why"), [
    ({"max_price": {"prompt": 0.05}}, "max_price.prompt"),
    ({"max_price": {"completion": 0.01}}, "max_price.completion"),
    ({"only": ["nobody"]}, "provider.only"),
    ({"data_collection": "deny", "max_price": {"prompt": 1}}, "max_price"),
    ({"quantizations": ["int4"]}, "provider.quantizations"),
    ({"order": ["nobody"], "allow_fallbacks": False}, "allow_fallbacks"),
])
def test_no_endpoint_left_is_a_permanent_404(http: httpx.Client, upstreams: dict[str, str], marker: str,
                                             provider: dict[str, Any], why: str) -> None:
    reply = http.post("/v1/responses", json={"model": "llama", "input": f"{marker} none", "provider": provider})
    assert reply.status_code == 404, reply.text
    error = reply.json()["error"]
    assert error["code"] == "no_endpoints_found" and error["type"] == "not_found_error"
    assert why in error["message"] and error["param"].startswith("provider.")
    assert set(error) == {"message", "type", "param", "code"}
    assert hits(upstreams, marker) == {name: [] for name in UPSTREAMS}


# ---------------------------------------------------------------- latency


def test_sort_by_latency_and_throughput_prefer_the_fast_endpoint(http: httpx.Client, upstreams: dict[str, str],
                                                                 marker: str) -> None:
    # Streamed, so that the upstream streams too and the service measures a real generation time (a non-streamed
    # upstream call has none: see the report on turns.py).
    def lat(text: str, provider: dict[str, Any]) -> None:
        create_streamed(http, "lat", text, provider=provider)

    # By price the slow endpoint wins.
    lat(f"{marker} price", {"sort": "price"})
    assert hits(upstreams, marker) == {"a": ["slow-250"], "b": [], "c": []}
    # Warm the stats of both endpoints.
    for _ in range(2):
        lat(f"{marker} warm", {"only": ["lat_a"]})
        lat(f"{marker} warm", {"only": ["lat_b"]})
    fast = f"{marker}x"
    for index in range(3):
        lat(f"{fast} latency {index}", {"sort": "latency"})
    assert hits(upstreams, fast) == {"a": [], "b": ["echo"] * 3, "c": []}
    # A latency ceiling the slow endpoint cannot meet moves it behind the fast one even when sorting by price.
    slow_ceiling = f"{marker}y"
    lat(f"{slow_ceiling} ceiling", {"sort": "price", "preferred_max_latency": 0.15})
    assert hits(upstreams, slow_ceiling) == {"a": [], "b": ["echo"], "c": []}
    # The fake slow endpoint also streams slowly (a gap between chunks): sorting by throughput avoids it too.
    throughput = f"{marker}z"
    lat(f"{throughput} throughput", {"sort": "throughput"})
    assert hits(upstreams, throughput) == {"a": [], "b": ["echo"], "c": []}


def test_sort_across_models_with_partition_none(http: httpx.Client, upstreams: dict[str, str], marker: str) -> None:
    """partition none: one sort over every model's endpoints, so the cheaper fallback model answers first."""
    body = create(http, "llama", f"{marker} partition", models=["fb/solo"],
                  provider={"sort": {"by": "price", "partition": "none"}})
    assert body["model"] == "fb/solo"
    assert hits(upstreams, marker) == {"a": [], "b": ["echo"], "c": []}
    # By model (the default), `model`'s cheapest endpoint comes first.
    by_model = f"{marker}m"
    body = create(http, "llama", f"{by_model} partition", models=["fb/solo"], provider={"sort": "price"})
    assert body["model"] == "llama"


# ---------------------------------------------------------------- failures


def test_fallback_to_the_next_endpoint(http: httpx.Client, upstreams: dict[str, str], marker: str) -> None:
    body = create(http, "flaky", f"{marker} fallback", provider={"order": ["flake_a", "flake_b"]})
    assert hits(upstreams, marker) == {"a": ["fail-500"], "b": ["echo"], "c": []}
    assert body["model"] == "flaky"


def test_no_fallbacks_when_disallowed(http: httpx.Client, upstreams: dict[str, str], marker: str) -> None:
    reply = http.post("/v1/responses", json={"model": "flaky", "input": f"{marker} strict",
                                             "provider": {"order": ["flake_a"], "allow_fallbacks": False}})
    assert reply.status_code == 502, reply.text
    assert reply.json()["error"]["code"] == "upstream_error"
    assert hits(upstreams, marker) == {"a": ["fail-500"], "b": [], "c": []}


@pytest.mark.parametrize(("first", "then"), [("fb/broken", "fb/broken2"), ("fb/broken2", "fb/broken")])
def test_model_fallback_order(http: httpx.Client, upstreams: dict[str, str], marker: str, first: str,
                              then: str) -> None:
    body = create(http, first, f"{marker} models", models=[then, "fb/solo"])
    upstream_model = {"fb/broken": "fail-500", "fb/broken2": "fail-429"}
    assert hits(upstreams, marker) == {"a": [], "b": ["echo"], "c": [upstream_model[first], upstream_model[then]]}
    assert body["model"] == "fb/solo"
    assert body["service_tier"] == "scale"
    assert body["output_text"] == f"echo: {marker} models"


def test_routed_model_without_slash_as_fallback(http: httpx.Client, upstreams: dict[str, str], marker: str) -> None:
    body = create(http, "fb/broken", f"{marker} slashless", models=["llama"])
    assert body["model"] == "llama"


def test_cooldown_after_a_failure(http: httpx.Client, upstreams: dict[str, str], marker: str) -> None:
    # Sorted by price, the cheap failing endpoint goes first; it fails and the request falls back.
    create(http, "cool", f"{marker} first", provider={"sort": "price"})
    failed_at = time.monotonic()
    assert hits(upstreams, marker) == {"a": ["fail-500"], "b": ["echo"], "c": []}
    # While it cools down it goes last, whatever the sort or balancing: the healthy one answers at once.
    cooling = f"{marker}c"
    create(http, "cool", f"{cooling} sorted", provider={"sort": "price"})
    create(http, "cool", f"{cooling} balanced")
    create(http, "cool", f"{cooling} sticky", session_id="sess-cool")
    assert time.monotonic() - failed_at < COOLDOWN, "too slow to observe the cooldown"
    assert hits(upstreams, cooling) == {"a": [], "b": ["echo"] * 3, "c": []}
    # After the cooling period it is tried first again.
    time.sleep(max(0.0, failed_at + COOLDOWN + 0.2 - time.monotonic()))
    after = f"{marker}r"
    create(http, "cool", f"{after} again", provider={"sort": "price"})
    assert hits(upstreams, after) == {"a": ["fail-500"], "b": ["echo"], "c": []}


# ---------------------------------------------------------------- sticky sessions


SESSIONS = [f"session-{index}" for index in range(12)]


@pytest.mark.parametrize("how", ["session_id", "x-session-id", "prompt_cache_key"])
def test_sticky_sessions(http: httpx.Client, upstreams: dict[str, str], marker: str, how: str) -> None:
    for round_ in range(3):
        for key in SESSIONS:
            fields: dict[str, Any] = {"model": "even", "input": f"{marker} {key} {round_}"}
            headers = {}
            if how == "x-session-id":
                headers["x-session-id"] = key
            else:
                fields[how] = key
            reply = http.post("/v1/responses", json=fields, headers=headers)
            assert reply.status_code == 200, reply.text
    where: dict[str, set[str]] = {key: set() for key in SESSIONS}
    for name, url in upstreams.items():
        for request in httpx.get(f"{url}/_requests", timeout=10).json():
            words = _messages_text(request["body"]).split()
            if len(words) >= 2 and words[0] == marker:
                where[words[1]].add(name)
    # Every session stays on one endpoint over its three requests ...
    assert all(len(names) == 1 for names in where.values()), where
    # ... and the sessions spread over the endpoints (the hash is deterministic: this always holds for these keys).
    spread = Counter(next(iter(names)) for names in where.values())
    assert len(spread) >= 2, spread
    assert max(spread.values()) <= 8, spread


def test_order_overrides_sticky_sessions(http: httpx.Client, upstreams: dict[str, str], marker: str) -> None:
    for key in SESSIONS:
        create(http, "even", f"{marker} {key}", session_id=key, provider={"order": ["c"]})
    assert hits(upstreams, marker) == {"a": [], "b": [], "c": ["echo"] * len(SESSIONS)}


def test_sticky_sessions_agree_across_ways_of_naming_them(http: httpx.Client, upstreams: dict[str, str]) -> None:
    """The same key picks the same endpoint whether it comes as session_id, the header or prompt_cache_key."""
    chosen = []
    for how in ("session_id", "x-session-id", "prompt_cache_key"):
        marker = "m" + secrets.token_hex(6)
        fields: dict[str, Any] = {"model": "even", "input": f"{marker} agree"}
        headers = {"x-session-id": "session-3"} if how == "x-session-id" else {}
        if how != "x-session-id":
            fields[how] = "session-3"
        assert http.post("/v1/responses", json=fields, headers=headers).status_code == 200
        chosen.append(served_by(upstreams, marker))
    assert len(set(chosen)) == 1, chosen
