#!/usr/bin/env bash
# Installs everything the tests need into .venv, then runs every check: generated code, buf lint, ruff, mypy, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev,local]'
export PATH="$PWD/.venv/bin:$PATH"

echo "== generated code is up to date"; python scripts/genproto.py --check
echo "== buf lint"; (cd proto && buf lint)
echo "== ruff"; ruff check .
echo "== mypy (strict on service/ and edge/)"; mypy
echo "== pytest"; python -m pytest -q -p no:cacheprovider "$@"
