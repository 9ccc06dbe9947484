"""The SQLite store: the standard ``sqlite3`` module on one dedicated thread, so the event loop never blocks.

Several processes may share one database file (WAL mode, ``busy_timeout``); every write runs in a
``BEGIN IMMEDIATE`` transaction, which takes the write lock up front, so a claim is atomic across processes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from switchboard.responses.v1 import response_pb2
from switchboard.service.store import migrations
from switchboard.service.store.base import (
    CreateResponseRequest,
    Item,
    ItemPage,
    Job,
    Order,
    Response,
    Save,
    StoredResponse,
    StreamEvent,
    decode_stored,
    failed_event,
    failed_snapshot,
    make_page,
    page_query,
)

T = TypeVar("T")
FAILED = response_pb2.RESPONSE_STATUS_FAILED
_CHILD_TABLES = ("input_items", "stream_events")


class SQLiteStore:
    def __init__(self, path: str, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="switchboard-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    # Plumbing: every database call runs on the store's own thread.

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            try:
                if self.path != ":memory:":
                    self._enable_wal(conn)
                    conn.execute("PRAGMA synchronous = NORMAL")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return fn(self._conn)

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL needs an exclusive lock and may fail with "locked" at once, without the busy handler,
        # while another process opens the same new file: retry until the busy timeout.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as err:
                if ("locked" not in str(err) and "busy" not in str(err)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @staticmethod
    @contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    @contextmanager
    def _read(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    async def close(self) -> None:
        if self._closed:
            return

        def close(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is not None:
            await self._run(close)
        self._closed = True
        self._conn = None
        self._executor.shutdown(wait=False)

    async def migrate(self) -> None:
        def migrate(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations"
                    " (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
                )
                applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
                for version, statements in migrations.pending(migrations.SQLITE, applied):
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))

        await self._run(migrate)

    # Responses.

    async def save_response(
        self,
        owner: str,
        response: Response,
        request: CreateResponseRequest,
        input_items: list[Item],
        *,
        expires_at: float | None,
        job_request: bytes | None = None,
    ) -> None:
        save = Save.of(owner, response, request, input_items, expires_at)

        def write(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                self._save(conn, save)
                if job_request is not None:
                    self._enqueue(conn, owner, response.id, job_request)

        await self._run(write)

    async def save_responses(self, saves: list[Save]) -> list[str]:
        def write(conn: sqlite3.Connection) -> list[str]:
            skipped = []
            with self._write(conn):
                for save in saves:
                    try:
                        self._save(conn, save)
                    except ValueError:
                        skipped.append(save.stored.response.id)
            return skipped

        return await self._run(write)

    @staticmethod
    def _save(conn: sqlite3.Connection, save: Save) -> None:
        rid = save.row[0]
        found = conn.execute("SELECT owner FROM responses WHERE id = ?", (rid,)).fetchone()
        if found is not None and found[0] != save.owner:
            raise ValueError(f"response {rid!r} belongs to another owner")
        conn.execute(
            "INSERT INTO responses (id, owner, status, created_at, previous_response_id, expires_at, response,"
            " request) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
            " created_at = excluded.created_at, previous_response_id = excluded.previous_response_id,"
            " expires_at = excluded.expires_at, response = excluded.response, request = excluded.request",
            save.row,
        )
        conn.execute("DELETE FROM input_items WHERE response_id = ?", (rid,))
        conn.executemany("INSERT INTO input_items VALUES (?, ?, ?, ?)", save.items)

    @staticmethod
    def _load(conn: sqlite3.Connection, owner: str, id: str) -> StoredResponse | None:
        row = conn.execute("SELECT response, request FROM responses WHERE id = ? AND owner = ?", (id, owner)).fetchone()
        if row is None:
            return None
        items = conn.execute("SELECT item FROM input_items WHERE response_id = ? ORDER BY position", (id,))
        return decode_stored(row[0], row[1], [r[0] for r in items])

    async def get_response(self, owner: str, id: str) -> StoredResponse | None:
        def get(conn: sqlite3.Connection) -> StoredResponse | None:
            with self._read(conn):
                return self._load(conn, owner, id)

        return await self._run(get)

    @staticmethod
    def _delete_children(conn: sqlite3.Connection, ids: list[str]) -> None:
        for table in _CHILD_TABLES:
            conn.executemany(f"DELETE FROM {table} WHERE response_id = ?", [(i,) for i in ids])
        conn.executemany("DELETE FROM jobs WHERE response_id = ?", [(i,) for i in ids])

    async def delete_response(self, owner: str, id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            with self._write(conn):
                if conn.execute("DELETE FROM responses WHERE id = ? AND owner = ?", (id, owner)).rowcount == 0:
                    return False
                self._delete_children(conn, [id])
                return True

        return await self._run(delete)

    async def update_status(self, owner: str, id: str, response: Response) -> bool:
        args = (int(response.status), response.SerializeToString(), id, owner)

        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("UPDATE responses SET status = ?, response = ? WHERE id = ? AND owner = ?", args)
            return cursor.rowcount > 0

        return await self._run(update)

    async def list_input_items(
        self, owner: str, id: str, *, after: str | None, before: str | None, limit: int, order: Order
    ) -> ItemPage | None:
        def position(conn: sqlite3.Connection, name: str, item: str | None) -> int | None:
            if item is None:
                return None
            sql = "SELECT MIN(position) FROM input_items WHERE response_id = ? AND item_id = ?"
            found = conn.execute(sql, (id, item)).fetchone()[0]
            if found is None:
                raise ValueError(f"{name}: the response has no input item {item!r}")
            return int(found)

        def page(conn: sqlite3.Connection) -> ItemPage | None:
            with self._read(conn):
                if conn.execute("SELECT 1 FROM responses WHERE id = ? AND owner = ?", (id, owner)).fetchone() is None:
                    return None
                query = page_query(position(conn, "after", after), position(conn, "before", before), limit, order)
                rows = conn.execute(
                    "SELECT item FROM input_items WHERE response_id = ? AND position > ? AND position < ?"
                    f" ORDER BY position {'ASC' if query.scan_asc else 'DESC'} LIMIT ?",
                    (id, query.lo, query.hi, query.fetch),
                )
                return make_page([Item.FromString(r[0]) for r in rows], query)

        return await self._run(page)

    async def chain(self, owner: str, id: str, max_depth: int = 1000) -> list[StoredResponse]:
        def chain(conn: sqlite3.Connection) -> list[StoredResponse]:
            with self._read(conn):
                found: list[StoredResponse] = []
                current: str | None = id
                while current is not None and len(found) < max_depth:
                    stored = self._load(conn, owner, current)
                    if stored is None:
                        break
                    found.append(stored)
                    resp = stored.response
                    current = resp.previous_response_id if resp.HasField("previous_response_id") else None
                found.reverse()
                return found

        return await self._run(chain)

    # Background jobs.

    @staticmethod
    def _enqueue(conn: sqlite3.Connection, owner: str, response_id: str, request: bytes) -> None:
        conn.execute(
            "INSERT INTO jobs (id, owner, response_id, request, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO NOTHING",
            (response_id, owner, response_id, request, time.time()),
        )

    async def enqueue(self, owner: str, response_id: str, request: bytes) -> None:
        def enqueue(conn: sqlite3.Connection) -> None:
            self._enqueue(conn, owner, response_id, request)

        await self._run(enqueue)

    async def claim(self, worker_id: str, lease_seconds: float, *, max_attempts: int | None = None) -> Job | None:
        def claim(conn: sqlite3.Connection) -> Job | None:
            now = time.time()
            with self._write(conn):
                row = conn.execute(
                    "UPDATE jobs SET state = 'running', worker_id = ?, lease_expires_at = ?, attempts = attempts + 1"
                    " WHERE id = (SELECT id FROM jobs WHERE state = 'queued' OR (state = 'running'"
                    " AND lease_expires_at < ? AND attempts < ?) ORDER BY created_at, id LIMIT 1)"
                    " RETURNING id, owner, response_id, request, worker_id, attempts, lease_expires_at",
                    (worker_id, now + lease_seconds, now, max_attempts if max_attempts is not None else 1 << 62),
                ).fetchone()
            return None if row is None else Job(*row)

        return await self._run(claim)

    async def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        def heartbeat(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND worker_id = ? AND state = 'running'",
                (time.time() + lease_seconds, job_id, worker_id),
            )
            return cursor.rowcount > 0

        return await self._run(heartbeat)

    async def finish_job(self, job_id: str, worker_id: str) -> None:
        def finish(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM jobs WHERE id = ? AND worker_id = ?", (job_id, worker_id))

        await self._run(finish)

    async def fail_stale_jobs(self, max_attempts: int) -> list[str]:
        def fail(conn: sqlite3.Connection) -> list[str]:
            with self._write(conn):
                stale = conn.execute(
                    "DELETE FROM jobs WHERE state = 'running' AND lease_expires_at < ? AND attempts >= ?"
                    " RETURNING response_id",
                    (time.time(), max_attempts),
                ).fetchall()
                ids = sorted(row[0] for row in stale)
                for rid in ids:
                    row = conn.execute("SELECT response FROM responses WHERE id = ?", (rid,)).fetchone()
                    snapshot = failed_snapshot(row[0]) if row is not None else None
                    if snapshot is None:
                        continue
                    conn.execute("UPDATE responses SET status = ?, response = ? WHERE id = ?", (FAILED, snapshot, rid))
                    last = conn.execute("SELECT MAX(sequence_number) FROM stream_events WHERE response_id = ?",
                                        (rid,)).fetchone()[0]
                    if last is not None:
                        conn.execute("INSERT INTO stream_events VALUES (?, ?, ?)",
                                     (rid, last + 1, failed_event(snapshot, last + 1)))
                return ids

        return await self._run(fail)

    async def request_cancel(self, owner: str, id: str) -> bool:
        def cancel(conn: sqlite3.Connection) -> bool:
            sql = "UPDATE responses SET cancel_requested = 1 WHERE id = ? AND owner = ?"
            return conn.execute(sql, (id, owner)).rowcount > 0

        return await self._run(cancel)

    async def cancel_requested(self, id: str) -> bool:
        def requested(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT cancel_requested FROM responses WHERE id = ?", (id,)).fetchone()
            return row is not None and bool(row[0])

        return await self._run(requested)

    async def cancel_queued(self, owner: str, id: str, response: Response, events: list[StreamEvent]) -> bool:
        rows = [(id, event.sequence_number, event.SerializeToString()) for event in events]

        def cancel(conn: sqlite3.Connection) -> bool:
            with self._write(conn):
                sql = "DELETE FROM jobs WHERE id = ? AND owner = ? AND state = 'queued'"
                if conn.execute(sql, (id, owner)).rowcount == 0:
                    return False
                conn.execute("UPDATE responses SET status = ?, response = ?, cancel_requested = 1 WHERE id = ?",
                             (int(response.status), response.SerializeToString(), id))
                conn.executemany("INSERT INTO stream_events VALUES (?, ?, ?) ON CONFLICT DO NOTHING", rows)
                return True

        return await self._run(cancel)

    # Persisted stream events.

    async def append_events(self, response_id: str, events: list[StreamEvent]) -> None:
        rows = [(response_id, event.sequence_number, event.SerializeToString()) for event in events]

        def append(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                conn.executemany("INSERT INTO stream_events VALUES (?, ?, ?) ON CONFLICT DO NOTHING", rows)

        await self._run(append)

    async def events_after(self, response_id: str, after_sequence: int) -> list[StreamEvent]:
        def events(conn: sqlite3.Connection) -> list[StreamEvent]:
            rows = conn.execute(
                "SELECT event FROM stream_events WHERE response_id = ? AND sequence_number > ?"
                " ORDER BY sequence_number",
                (response_id, after_sequence),
            )
            return [StreamEvent.FromString(row[0]) for row in rows]

        return await self._run(events)

    # Retention.

    async def delete_expired(self, now: float, *, created_before: float | None = None) -> int:
        sql, args = "DELETE FROM responses WHERE expires_at <= ?", [now]
        if created_before is not None:
            sql, args = sql + " OR created_at < ?", [now, created_before]

        def delete(conn: sqlite3.Connection) -> int:
            with self._write(conn):
                rows = conn.execute(sql + " RETURNING id", args).fetchall()
                self._delete_children(conn, [row[0] for row in rows])
                return len(rows)

        return await self._run(delete)
