#!/usr/bin/env bash
# The end-to-end demo on the embedded local store: installs what is missing, then runs
# `blast-log-shipper demo` (real blastn under logwrap -> shipper -> aggregator -> finalize).
# It installs only what the demo runs: Debian's ncbi-blast+ (makeblastdb, blastn) and the project
# with its `tools` extra (the demo runs the aggregator on the local store: no Azure SDK, no dev
# extras); no Azurite, busybox or docker-compose.
set -euo pipefail
BLAST_LOGS_DEBS="ncbi-blast+" BLAST_LOGS_EXTRAS="tools" BLAST_LOGS_NO_AZURITE=1 source "$(dirname "$0")/bootstrap.sh"
exec blast-log-shipper demo "$@"
