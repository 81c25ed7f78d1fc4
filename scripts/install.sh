#!/usr/bin/env bash
# Install the project into the current Python (3.10+): torch first, then everything that depends on it.
# Idempotent: a second run only checks. GPU extras: pip install -r requirements-gpu.txt (not run here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install -q --disable-pip-version-check -r requirements.txt
# VirtualHome: only the evolving_graph simulator is used; the package's pinned dependencies (Unity
# client, old numpy/opencv) do not install on current Python, so it goes in without them.
"$PY" -m pip install -q --disable-pip-version-check --no-deps "virtualhome==2.3.0"
"$PY" -m pip install -q --disable-pip-version-check --no-deps -e .
