"""Versioned schema migrations, one list of SQL statements per version and dialect.

Append new versions; never edit an applied one. A migration must keep the previous release working (add columns
and tables, don't drop or rename them in the same release), because replicas upgrade one at a time.
Each backend applies the pending versions in one transaction and records them in ``schema_migrations``.
"""

from __future__ import annotations

Migrations = list[tuple[int, list[str]]]

SQLITE: Migrations = [
    (
        1,
        [
            """CREATE TABLE responses (
                id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                status INTEGER NOT NULL,
                created_at INTEGER NOT NULL,
                previous_response_id TEXT,
                expires_at REAL,
                cancel_requested INTEGER NOT NULL DEFAULT 0,
                response BLOB NOT NULL,
                request BLOB NOT NULL
            )""",
            "CREATE INDEX responses_owner_created ON responses (owner, created_at)",
            "CREATE INDEX responses_created ON responses (created_at)",
            "CREATE INDEX responses_expires ON responses (expires_at) WHERE expires_at IS NOT NULL",
            """CREATE TABLE input_items (
                response_id TEXT NOT NULL,
                position INTEGER NOT NULL,
                item_id TEXT NOT NULL,
                item BLOB NOT NULL,
                PRIMARY KEY (response_id, position)
            )""",
            "CREATE INDEX input_items_item ON input_items (response_id, item_id)",
            """CREATE TABLE stream_events (
                response_id TEXT NOT NULL,
                sequence_number INTEGER NOT NULL,
                event BLOB NOT NULL,
                PRIMARY KEY (response_id, sequence_number)
            )""",
            """CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                response_id TEXT NOT NULL,
                request BLOB NOT NULL,
                state TEXT NOT NULL DEFAULT 'queued',
                worker_id TEXT,
                lease_expires_at REAL,
                attempts INTEGER NOT NULL DEFAULT 0,
                created_at REAL NOT NULL
            )""",
            "CREATE INDEX jobs_pick ON jobs (state, created_at)",
        ],
    ),
]

POSTGRES: Migrations = [
    (
        1,
        [
            """CREATE TABLE responses (
                id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                status INTEGER NOT NULL,
                created_at BIGINT NOT NULL,
                previous_response_id TEXT,
                expires_at DOUBLE PRECISION,
                cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
                response BYTEA NOT NULL,
                request BYTEA NOT NULL
            )""",
            "CREATE INDEX responses_owner_created ON responses (owner, created_at)",
            "CREATE INDEX responses_created ON responses (created_at)",
            "CREATE INDEX responses_expires ON responses (expires_at) WHERE expires_at IS NOT NULL",
            """CREATE TABLE input_items (
                response_id TEXT NOT NULL,
                position INTEGER NOT NULL,
                item_id TEXT NOT NULL,
                item BYTEA NOT NULL,
                PRIMARY KEY (response_id, position)
            )""",
            "CREATE INDEX input_items_item ON input_items (response_id, item_id)",
            """CREATE TABLE stream_events (
                response_id TEXT NOT NULL,
                sequence_number BIGINT NOT NULL,
                event BYTEA NOT NULL,
                PRIMARY KEY (response_id, sequence_number)
            )""",
            """CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                response_id TEXT NOT NULL,
                request BYTEA NOT NULL,
                state TEXT NOT NULL DEFAULT 'queued',
                worker_id TEXT,
                lease_expires_at DOUBLE PRECISION,
                attempts INTEGER NOT NULL DEFAULT 0,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX jobs_pick ON jobs (state, created_at)",
        ],
    ),
]

# The key of the transaction-level advisory lock that serialises migrations on PostgreSQL ("SWBSCHEM").
PG_MIGRATION_LOCK = 0x535742534348454D


def latest(migrations: Migrations) -> int:
    return max(version for version, _ in migrations)


def pending(migrations: Migrations, applied: set[int]) -> Migrations:
    versions = [version for version, _ in migrations]
    if versions != sorted(set(versions)):
        raise RuntimeError("migration versions must be unique and ascending")
    return [(version, statements) for version, statements in migrations if version not in applied]
