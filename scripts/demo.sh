#!/usr/bin/env bash
# The end-to-end demo on the embedded local store: installs what is missing, then runs
# `blast-log-shipper demo` (real blastn under logwrap -> shipper -> aggregator -> finalize).
set -euo pipefail
BLAST_LOGS_NO_AZURITE=1 source "$(dirname "$0")/bootstrap.sh"
exec blast-log-shipper demo "$@"
