"""`switchboard doctor --config FILE [--json]`: checks a configuration against the machine it will run on.

The config parses; every `*_env` variable is set (shown as set/unset and a fingerprint, never the value); every
provider answers a cheap call; the store opens at the latest schema; Redis answers when rate limits use it; the
Envoy binary runs and the rendered config validates; the embedded model loads and generates a token. Prints a
table (or JSON) and one line per problem saying what to change; exits 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from switchboard.cli.doctor_checks import (
    Result,
    check_embedded_model,
    check_env,
    check_envoy,
    check_listeners,
    check_provider,
    check_redis,
    check_store,
)
from switchboard.shared.config.errors import ConfigError
from switchboard.shared.config.settings import Config, load

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def register(commands: Any) -> None:
    parser = commands.add_parser("doctor", help="check a configuration: keys, providers, store, Envoy, model")
    parser.add_argument("--config", required=True, type=Path, help="YAML configuration file")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--skip-model", action="store_true", help="do not load the embedded model")
    parser.set_defaults(run=run)


async def gather(config: Config, raw: dict[str, Any], env: dict[str, str], *, model: bool = True) -> list[Result]:
    from switchboard.service.api.models import Catalog

    results = [Result("config", "ok", f"{len(config.providers)} providers, {len(config.routing.models)} routed "
                                      f"models, auth {'on' if config.api_keys else 'OPEN (no API keys)'}")]
    results += check_listeners(config)
    results += check_env(raw, config, env)
    catalog = Catalog(config)
    probes = [check_provider(p, [m.split("/", 1)[1] for m in catalog.models if m.startswith(f"{p.name}/")])
              for p in config.providers]
    results += await asyncio.gather(*probes)
    results.append(await check_store(config))
    redis = await check_redis(config)
    if redis is not None:
        results.append(redis)
    results += await asyncio.to_thread(check_envoy, config)
    for provider in config.providers:
        if provider.kind == "llama-cpp":
            if model:
                results += await asyncio.to_thread(check_embedded_model, provider)
            else:
                results.append(Result(f"model {provider.name}", "warn", "not checked (--skip-model)"))
    return results


def render(results: list[Result], console: Console) -> None:
    table = Table(title="switchboard doctor", show_lines=False)
    for column in ("check", "status", "detail", "latency"):
        table.add_column(column, overflow="fold")
    for result in results:
        latency = "" if result.latency_ms is None else f"{result.latency_ms:.0f} ms"
        table.add_row(result.check, f"[{_STYLE[result.status]}]{result.status}[/]", result.detail, latency)
    console.print(table)


def run(args: argparse.Namespace) -> int:
    import os

    console = Console(highlight=False, soft_wrap=False)
    env = dict(os.environ)
    try:
        raw = yaml.safe_load(Path(args.config).read_text()) or {}
        config = load(args.config, env)
    except (OSError, yaml.YAMLError, ConfigError) as exc:
        failure = Result("config", "fail", str(exc), f"fix {args.config}: {exc}")
        return _report([failure], args.json, console)
    results = asyncio.run(gather(config, raw, env, model=not args.skip_model))
    return _report(results, args.json, console)


def _report(results: list[Result], as_json: bool, console: Console) -> int:
    failed = [r for r in results if r.status == "fail"]
    if as_json:
        print(json.dumps({"ok": not failed, "checks": [r.to_json() for r in results]}, indent=2))
    else:
        render(results, console)
        console.file.flush()
        # Plain lines, never wrapped: one per problem, easy to grep.
        for result in failed:
            print(f"problem: {result.check}: {result.fix or result.detail}")
        print("all checks passed" if not failed else f"{len(failed)} problem(s) found")
    sys.stdout.flush()
    return 1 if failed else 0
