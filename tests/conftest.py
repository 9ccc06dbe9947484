"""Suite-wide hooks: nothing the tests started survives the session, however it ends."""

from __future__ import annotations

import pytest

from tests.processes import kill_all


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    kill_all()
