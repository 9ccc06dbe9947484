"""The PostgreSQL store, for several replicas: psycopg 3 (async) with a psycopg_pool connection pool.

Jobs are claimed with ``FOR UPDATE SKIP LOCKED``; leases use the database clock, so replicas with skewed clocks
agree. Migrations run under a transaction-level advisory lock, so replicas starting together apply them once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

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

Conn = AsyncConnection[TupleRow]
NOW = "extract(epoch from clock_timestamp())::float8"
FAILED = response_pb2.RESPONSE_STATUS_FAILED
_NO_LIMIT = 2**31 - 1


class PostgresStore:
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 30.0) -> None:
        self.url = url
        self._pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=False,
            kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection,
            name="switchboard-store",
        )
        self._timeout = timeout
        self._opened = False
        self._lock = asyncio.Lock()

    async def _open(self) -> AsyncConnectionPool[Conn]:
        if not self._opened:
            async with self._lock:
                if not self._opened:
                    await self._pool.open(wait=True, timeout=self._timeout)
                    self._opened = True
        return self._pool

    async def _fetchone(self, sql: str, args: Any) -> TupleRow | None:
        async with (await self._open()).connection() as conn:
            return await (await conn.execute(sql, args)).fetchone()

    async def _rowcount(self, sql: str, args: Any) -> int:
        async with (await self._open()).connection() as conn:
            return (await conn.execute(sql, args)).rowcount

    async def close(self) -> None:
        await self._pool.close()

    async def migrate(self) -> None:
        async with (await self._open()).connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (migrations.PG_MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            applied = {row[0] for row in await (await conn.execute("SELECT version FROM schema_migrations")).fetchall()}
            for version, statements in migrations.pending(migrations.POSTGRES, applied):
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, time.time()))

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
        async with (await self._open()).connection() as conn, conn.transaction():
            await self._save(conn, save)
            if job_request is not None:
                await self._enqueue(conn, owner, response.id, job_request)

    async def save_responses(self, saves: list[Save]) -> list[str]:
        skipped = []
        async with (await self._open()).connection() as conn, conn.transaction():
            for save in saves:
                try:
                    await self._save(conn, save)
                except ValueError:
                    skipped.append(save.stored.response.id)
        return skipped

    @staticmethod
    async def _save(conn: Conn, save: Save) -> None:
        rid = save.row[0]
        cursor = await conn.execute(
            "INSERT INTO responses (id, owner, status, created_at, previous_response_id, expires_at, response,"
            " request) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET"
            " status = excluded.status, created_at = excluded.created_at,"
            " previous_response_id = excluded.previous_response_id, expires_at = excluded.expires_at,"
            " response = excluded.response, request = excluded.request WHERE responses.owner = excluded.owner",
            save.row,
        )
        if cursor.rowcount == 0:
            raise ValueError(f"response {rid!r} belongs to another owner")
        await conn.execute("DELETE FROM input_items WHERE response_id = %s", (rid,))
        async with conn.cursor() as cur:
            await cur.executemany("INSERT INTO input_items VALUES (%s, %s, %s, %s)", save.items)

    async def get_response(self, owner: str, id: str) -> StoredResponse | None:
        async with (await self._open()).connection() as conn, conn.transaction():
            row = await (
                await conn.execute("SELECT response, request FROM responses WHERE id = %s AND owner = %s", (id, owner))
            ).fetchone()
            if row is None:
                return None
            items = await (
                await conn.execute("SELECT item FROM input_items WHERE response_id = %s ORDER BY position", (id,))
            ).fetchall()
            return decode_stored(row[0], row[1], [r[0] for r in items])

    async def delete_response(self, owner: str, id: str) -> bool:
        async with (await self._open()).connection() as conn, conn.transaction():
            cursor = await conn.execute("DELETE FROM responses WHERE id = %s AND owner = %s", (id, owner))
            if cursor.rowcount == 0:
                return False
            for table in ("input_items", "stream_events", "jobs"):
                await conn.execute(f"DELETE FROM {table} WHERE response_id = %s", (id,))
            return True

    async def update_status(self, owner: str, id: str, response: Response) -> bool:
        sql = "UPDATE responses SET status = %s, response = %s WHERE id = %s AND owner = %s"
        return await self._rowcount(sql, (int(response.status), response.SerializeToString(), id, owner)) > 0

    async def list_input_items(
        self, owner: str, id: str, *, after: str | None, before: str | None, limit: int, order: Order
    ) -> ItemPage | None:
        async with (await self._open()).connection() as conn, conn.transaction():

            async def position(name: str, item: str | None) -> int | None:
                if item is None:
                    return None
                sql = "SELECT MIN(position) FROM input_items WHERE response_id = %s AND item_id = %s"
                found = await (await conn.execute(sql, (id, item))).fetchone()
                if found is None or found[0] is None:
                    raise ValueError(f"{name}: the response has no input item {item!r}")
                return int(found[0])

            sql = "SELECT 1 FROM responses WHERE id = %s AND owner = %s"
            if await (await conn.execute(sql, (id, owner))).fetchone() is None:
                return None
            query = page_query(await position("after", after), await position("before", before), limit, order)
            rows = await (
                await conn.execute(
                    "SELECT item FROM input_items WHERE response_id = %s AND position > %s AND position < %s"
                    f" ORDER BY position {'ASC' if query.scan_asc else 'DESC'} LIMIT %s",
                    (id, query.lo, query.hi, query.fetch),
                )
            ).fetchall()
            return make_page([Item.FromString(r[0]) for r in rows], query)

    async def chain(self, owner: str, id: str, max_depth: int = 1000) -> list[StoredResponse]:
        async with (await self._open()).connection() as conn, conn.transaction():
            rows = await (
                await conn.execute(
                    "WITH RECURSIVE c (id, prev, depth) AS ("
                    " SELECT id, previous_response_id, 1 FROM responses WHERE id = %s AND owner = %s"
                    " UNION ALL SELECT r.id, r.previous_response_id, c.depth + 1 FROM responses r"
                    " JOIN c ON r.id = c.prev WHERE r.owner = %s AND c.depth < %s)"
                    " SELECT r.id, r.response, r.request FROM c JOIN responses r ON r.id = c.id ORDER BY c.depth DESC",
                    (id, owner, owner, max_depth),
                )
            ).fetchall()
            ids = [row[0] for row in rows]
            items: dict[str, list[bytes]] = {rid: [] for rid in ids}
            sql = "SELECT response_id, item FROM input_items WHERE response_id = ANY(%s) ORDER BY response_id, position"
            for rid, blob in await (await conn.execute(sql, (ids,))).fetchall():
                items[rid].append(blob)
            return [decode_stored(row[1], row[2], items[row[0]]) for row in rows]

    # Background jobs.

    @staticmethod
    async def _enqueue(conn: Conn, owner: str, response_id: str, request: bytes) -> None:
        await conn.execute(
            f"INSERT INTO jobs (id, owner, response_id, request, created_at) VALUES (%s, %s, %s, %s, {NOW})"
            " ON CONFLICT (id) DO NOTHING",
            (response_id, owner, response_id, request),
        )

    async def enqueue(self, owner: str, response_id: str, request: bytes) -> None:
        async with (await self._open()).connection() as conn:
            await self._enqueue(conn, owner, response_id, request)

    async def claim(self, worker_id: str, lease_seconds: float, *, max_attempts: int | None = None) -> Job | None:
        row = await self._fetchone(
            f"UPDATE jobs SET state = 'running', worker_id = %s, lease_expires_at = {NOW} + %s,"
            " attempts = attempts + 1 WHERE id = (SELECT id FROM jobs WHERE state = 'queued' OR (state = 'running'"
            f" AND lease_expires_at < {NOW} AND attempts < %s) ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " RETURNING id, owner, response_id, request, worker_id, attempts, lease_expires_at",
            (worker_id, float(lease_seconds), max_attempts if max_attempts is not None else _NO_LIMIT),
        )
        return None if row is None else Job(*row)

    async def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        sql = f"UPDATE jobs SET lease_expires_at = {NOW} + %s WHERE id = %s AND worker_id = %s AND state = 'running'"
        return await self._rowcount(sql, (float(lease_seconds), job_id, worker_id)) > 0

    async def finish_job(self, job_id: str, worker_id: str) -> None:
        await self._rowcount("DELETE FROM jobs WHERE id = %s AND worker_id = %s", (job_id, worker_id))

    async def fail_stale_jobs(self, max_attempts: int) -> list[str]:
        async with (await self._open()).connection() as conn, conn.transaction():
            stale = await (
                await conn.execute(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state = 'running'"
                    f" AND lease_expires_at < {NOW} AND attempts >= %s FOR UPDATE SKIP LOCKED) RETURNING response_id",
                    (max_attempts,),
                )
            ).fetchall()
            ids = sorted(row[0] for row in stale)
            for rid in ids:
                sql = "SELECT response FROM responses WHERE id = %s FOR UPDATE"
                row = await (await conn.execute(sql, (rid,))).fetchone()
                snapshot = failed_snapshot(row[0]) if row is not None else None
                if snapshot is None:
                    continue
                sql = "UPDATE responses SET status = %s, response = %s WHERE id = %s"
                await conn.execute(sql, (FAILED, snapshot, rid))
                sql = "SELECT MAX(sequence_number) FROM stream_events WHERE response_id = %s"
                last = await (await conn.execute(sql, (rid,))).fetchone()
                if last is not None and last[0] is not None:
                    sql = "INSERT INTO stream_events VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
                    await conn.execute(sql, (rid, last[0] + 1, failed_event(snapshot, last[0] + 1)))
            return ids

    async def request_cancel(self, owner: str, id: str) -> bool:
        sql = "UPDATE responses SET cancel_requested = TRUE WHERE id = %s AND owner = %s"
        return await self._rowcount(sql, (id, owner)) > 0

    async def cancel_queued(self, owner: str, id: str, response: Response, events: list[StreamEvent]) -> bool:
        async with (await self._open()).connection() as conn, conn.transaction():
            deleted = await conn.execute("DELETE FROM jobs WHERE id = %s AND owner = %s AND state = 'queued'",
                                         (id, owner))
            if deleted.rowcount == 0:
                return False
            await conn.execute("UPDATE responses SET status = %s, response = %s, cancel_requested = TRUE"
                               " WHERE id = %s", (int(response.status), response.SerializeToString(), id))
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO stream_events VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    [(id, e.sequence_number, e.SerializeToString()) for e in events])
            return True

    async def cancel_requested(self, id: str) -> bool:
        row = await self._fetchone("SELECT cancel_requested FROM responses WHERE id = %s", (id,))
        return row is not None and bool(row[0])

    # Persisted stream events.

    async def append_events(self, response_id: str, events: list[StreamEvent]) -> None:
        rows = [(response_id, event.sequence_number, event.SerializeToString()) for event in events]
        async with (await self._open()).connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany("INSERT INTO stream_events VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", rows)

    async def events_after(self, response_id: str, after_sequence: int) -> list[StreamEvent]:
        async with (await self._open()).connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT event FROM stream_events WHERE response_id = %s AND sequence_number > %s"
                    " ORDER BY sequence_number",
                    (response_id, after_sequence),
                )
            ).fetchall()
        return [StreamEvent.FromString(row[0]) for row in rows]

    # Retention.

    async def delete_expired(self, now: float, *, created_before: float | None = None) -> int:
        where, args = "expires_at <= %s", [now]
        if created_before is not None:
            where, args = where + " OR created_at < %s", [now, created_before]
        row = await self._fetchone(
            f"WITH gone AS (DELETE FROM responses WHERE {where} RETURNING id),"
            " a AS (DELETE FROM input_items WHERE response_id IN (SELECT id FROM gone)),"
            " b AS (DELETE FROM stream_events WHERE response_id IN (SELECT id FROM gone)),"
            " c AS (DELETE FROM jobs WHERE response_id IN (SELECT id FROM gone))"
            " SELECT count(*) FROM gone",
            args,
        )
        return int(row[0]) if row is not None else 0
