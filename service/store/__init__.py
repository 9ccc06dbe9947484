"""Persistence of responses, background jobs and stream events: SQLite on one machine, PostgreSQL for replicas."""

from __future__ import annotations

from switchboard.service.store.base import ItemPage, Job, Store, StoredResponse

__all__ = ["ItemPage", "Job", "Store", "StoredResponse", "open_store", "sqlite_path"]


def sqlite_path(url: str) -> str:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite:///:memory:`` -> the path for sqlite3."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"store: expected sqlite:///PATH, got {url!r}")
    path = url[len("sqlite:///") :]
    if not path:
        raise ValueError("store: the SQLite URL has no path")
    return path


def open_store(url: str, *, commit_window: float | None = None) -> Store:
    """The store for a URL: ``sqlite:///PATH`` or ``postgresql://...`` (``postgres://`` too). Call ``migrate()``
    before use; connections are opened lazily, so this does no I/O.

    With ``commit_window`` (seconds, 0 = as soon as the previous commit ends) finished foreground responses are
    group-committed off the request path (``store.batch``); None saves each one in its own transaction."""
    store = _open(url)
    if commit_window is None:
        return store
    from switchboard.service.store.batch import GroupCommitStore

    return GroupCommitStore(store, window=commit_window)


def _open(url: str) -> Store:
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from switchboard.service.store.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from switchboard.service.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"store: unsupported URL scheme {scheme!r} (sqlite:///PATH or postgresql://...)")
