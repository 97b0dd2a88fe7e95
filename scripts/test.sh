#!/usr/bin/env bash
# Every check: installs what is missing, then ruff, mypy (strict) and the whole pytest suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k ingest
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
echo "== ruff"; ruff check .
echo "== mypy"; mypy
echo "== pytest"; exec pytest -q -p no:cacheprovider "$@"
