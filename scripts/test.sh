#!/usr/bin/env bash
# The test suite: install, then pytest. Fails when pytest fails or collects no test (exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
set +e
"$PY" -m pytest -q tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
fi
exit "$rc"
