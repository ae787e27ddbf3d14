#!/usr/bin/env bash
# Installs wrk (the benchmarks' load generator, from Debian) when it is missing, and prints its path.
# Idempotent: a second run only prints the path.
set -euo pipefail
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "wrk is missing: apt-get install wrk (as root)" >&2
    exit 1
  fi
  { apt-get update && apt-get install -y wrk; } >&2
fi
command -v wrk
