#!/usr/bin/env bash
# The test suite: install, then pytest. Fails when pytest fails or collects no test (exit code 5).
# Tests run in PYTEST_WORKERS processes (pytest-xdist; default: one per CPU core), a test module per worker
# at a time, so that module-scoped fixtures are built once. PYTEST_WORKERS=0 runs them in this process.
# --no-loadscope-reorder keeps tests/conftest.py's order (the longest modules first); without it xdist sorts the
# modules by their number of tests, and a long module with few tests started last (653 s against 560 s here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
# One thread per process unless set: the workers already fill the cores, and more threads than cores only spin
# (the tiny test models run fastest single-threaded). Tests that vary the thread count set it themselves.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
set +e
"$PY" -m pytest -q -n "${PYTEST_WORKERS:-auto}" --dist loadfile --no-loadscope-reorder tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
fi
exit "$rc"
