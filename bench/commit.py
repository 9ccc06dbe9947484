"""The store's own cost per saved response: one transaction each vs group commit, in this process.

    python -m bench.commit [--saves 3000] [--backends sqlite,postgresql]

Saves the same small response (one input item) ``--saves`` times from 1 and from 16 concurrent tasks, straight
into the store (``store_commit_window: null``) and through the group-commit writer (window 0 and 2 ms), and prints
the CPU of this process (all threads: the event loop, SQLite's thread, psycopg) and the wall time per save. A
save through the writer returns before its commit; the figures include the final flush. Bounded by ``--saves``;
PostgreSQL is the one at 127.0.0.1:5432 (or a throwaway cluster, see tests/pg.py), in a fresh database.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import tempfile
import time
from pathlib import Path

import psycopg
import uvloop

from switchboard.responses.v1 import content_pb2, items_pb2, response_pb2
from switchboard.service.store import open_store
from switchboard.service.store.base import CreateResponseRequest, Item, Response, Store
from switchboard.service.store.batch import GroupCommitStore


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _response(n: int) -> tuple[Response, list[Item]]:
    response = Response(id=f"resp_{n}", object="response", created_at=1_700_000_000, model="fake/echo",
                        status=response_pb2.RESPONSE_STATUS_COMPLETED)
    text = content_pb2.ContentPart(output_text=content_pb2.OutputTextContent(text="echo: hello"))
    response.output.add().message.CopyFrom(items_pb2.Message(
        id=f"msg_{n}", role=items_pb2.MESSAGE_ROLE_ASSISTANT,
        content=content_pb2.Content(parts=content_pb2.ContentList(parts=[text]))))
    item = Item(message=items_pb2.Message(id=f"in_{n}", role=items_pb2.MESSAGE_ROLE_USER,
                                          content=content_pb2.Content(text="hello")))
    return response, [item]


async def _measure(store: Store, saves: int, concurrency: int, ids: itertools.count[int]) -> tuple[float, float]:
    request = CreateResponseRequest(model="fake/echo")

    async def worker(count: int) -> None:
        for _ in range(count):
            response, items = _response(next(ids))
            await store.save_response("owner", response, request, items, expires_at=None)
            await asyncio.sleep(0)  # other work of the request path runs between saves

    await asyncio.gather(*(worker(20) for _ in range(concurrency)))
    cpu, wall = _cpu(), time.perf_counter()
    await asyncio.gather(*(worker(saves // concurrency) for _ in range(concurrency)))
    if isinstance(store, GroupCommitStore):
        await store.flush()
    done = (saves // concurrency) * concurrency
    return 1000 * (_cpu() - cpu) / done, 1000 * (time.perf_counter() - wall) / done


def _pg_url(dsn: str) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"postgresql://{parts.get('user', 'postgres')}@{parts.get('host', '127.0.0.1')}:{parts.get('port', 5432)}" \
           f"/{parts['dbname']}"


async def run(args: argparse.Namespace) -> None:
    from tests import pg

    ids = itertools.count()
    print(f"{'backend':<11} {'writer':<16} {'tasks':>5} {'CPU ms/save':>12} {'wall ms/save':>13}")
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            admin = pg.server_dsn() if backend == "postgresql" else None
            dsn = pg.create_database(admin, "switchboard_commit") if admin else None
            url = _pg_url(dsn) if dsn else f"sqlite:///{Path(tmp) / 'commit.db'}"
            try:
                for concurrency in (1, 16):
                    for name, window in (("one per save", None), ("group, 0 ms", 0.0), ("group, 2 ms", 0.002)):
                        store = open_store(url, commit_window=window)
                        await store.migrate()
                        try:
                            cpu, wall = await _measure(store, args.saves, concurrency, ids)
                        finally:
                            await store.close()
                        print(f"{backend:<11} {name:<16} {concurrency:>5} {cpu:12.3f} {wall:13.3f}", flush=True)
            finally:
                if admin and dsn:
                    pg.drop_database(admin, dsn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.commit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--saves", type=int, default=3000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
