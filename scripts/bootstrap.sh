#!/usr/bin/env bash
# Installs what blast-logs needs on a fresh machine, idempotently:
#   Debian packages (BLAST_LOGS_DEBS; default: what the tests need), a virtualenv in .venv with the
#   project and its extras (BLAST_LOGS_EXTRAS; default: dev), and Azurite (npm azurite@3.35) in
#   .tools/ unless BLAST_LOGS_NO_AZURITE is set. Sourced by scripts/test.sh and scripts/demo.sh,
#   which say what each needs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

want_debs="${BLAST_LOGS_DEBS:-busybox ncbi-blast+ docker-compose chromium chromium-driver}"
missing=()
for pkg in $want_debs; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; then
    echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: cannot install ${missing[*]} (not root, no sudo); tests that need them skip" >&2
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PY" -m venv .venv
fi
extras="${BLAST_LOGS_EXTRAS-dev}"
# One stamp per pyproject.toml, setup.py and the compiled hot path's source, and per extras: the
# demo's smaller install does not stand in for the tests'. The editable install builds
# shipper/_hotpath.c in place.
stamp=.venv/.installed-$(cat pyproject.toml setup.py shipper/_hotpath.c aggregator/_chunks.c | sha256sum | cut -c1-16)-${extras:-none}
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing the project${extras:+ with extras [$extras]} into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
  touch "$stamp"
fi

if [ "${BLAST_LOGS_NO_AZURITE:-}" = "" ] && [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "bootstrap: installing azurite@3.35 into .tools" >&2
    mkdir -p .tools
    npm install --silent --no-audit --no-fund --prefix .tools azurite@3.35 >/dev/null
  else
    echo "bootstrap: npm not found; Azure tests will skip" >&2
  fi
fi
export PATH="$ROOT/.venv/bin:$ROOT/.tools/node_modules/.bin:$PATH"
