from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from switchboard.service.store.base import Store
from switchboard.service.store.postgres import PostgresStore
from switchboard.service.store.sqlite import SQLiteStore
from tests import pg

StoreFactory = Callable[[], Awaitable[Store]]
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_admin() -> str:
    try:
        return pg.server_dsn()
    except pg.PostgresUnavailable as err:
        pytest.fail(f"PostgreSQL is needed for the store tests: {err}", pytrace=False)


@pytest.fixture(scope="session")
def pg_database(pg_admin: str) -> Iterator[str]:
    """A fresh database for the session, migrated once, dropped at the end."""
    dsn = pg.create_database(pg_admin)
    yield dsn
    pg.drop_database(pg_admin, dsn)


class Databases:
    """Creates fresh, unmigrated databases of one backend; drops them at teardown."""

    def __init__(self, backend: str, tmp_path: Path, pg_admin: str | None) -> None:
        self.backend, self.tmp_path, self.pg_admin = backend, tmp_path, pg_admin
        self.created: list[str] = []

    def new(self) -> str:
        if self.backend == "sqlite":
            target = str(self.tmp_path / f"fresh{len(self.created)}.db")
        else:
            assert self.pg_admin is not None
            target = pg.create_database(self.pg_admin, "switchboard_test_fresh")
        self.created.append(target)
        return target

    def drop(self) -> None:
        if self.backend == "postgresql":
            assert self.pg_admin is not None
            for dsn in self.created:
                pg.drop_database(self.pg_admin, dsn)


def open_backend(backend: str, target: str) -> Store:
    if backend == "sqlite":
        return SQLiteStore(target)
    return PostgresStore(target, min_size=1, max_size=4)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return str(tmp_path / "store.db")
    dsn = str(request.getfixturevalue("pg_database"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('jobs') IS NOT NULL").fetchone()
        if exists is not None and exists[0]:
            conn.execute("TRUNCATE responses, input_items, stream_events, jobs")
    return dsn


@pytest.fixture
async def stores(backend: str, database: str) -> AsyncIterator[StoreFactory]:
    """Opens (and migrates) more stores on the test's database, as other replicas would."""
    opened: list[Store] = []

    async def factory() -> Store:
        store = open_backend(backend, database)
        opened.append(store)
        await store.migrate()
        return store

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
async def store(stores: StoreFactory) -> Store:
    return await stores()


@pytest.fixture
def databases(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    admin = str(request.getfixturevalue("pg_admin")) if backend == "postgresql" else None
    dbs = Databases(backend, tmp_path, admin)
    yield dbs
    dbs.drop()
