#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs (the wasm target, Envoy in
# ./.venv), builds the filters for wasm32-wasip1, checks formatting and lints, validates envoy.yaml
# with real Envoy, then runs every test of the workspace (unit, integration, end to end).
set -euo pipefail
cd "$(dirname "$0")/.."

# Incremental caches only cost disk in a one-shot run (they were 1.3 GB of a CI build).
export CARGO_INCREMENTAL=0
df -h . | tail -n 1 | awk '{print "== disk: " $4 " free on " $6}'

echo "== installing the wasm target and Envoy"
rustup target add wasm32-wasip1
ENVOY_BIN="$(scripts/install-envoy.sh)"
export ENVOY_BIN
"$ENVOY_BIN" --version

# PostgreSQL (Debian's packages) for realm-service's PostgreSQL store: the tests start their own
# throwaway clusters with initdb/pg_ctl. Chromium and chromedriver for the console's browser tests.
missing=""
if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  missing="$missing postgresql"
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  missing="$missing chromium chromium-driver"
fi
if [ -n "$missing" ]; then
  echo "== installing$missing"
  apt-get update && apt-get install -y $missing
fi
chromium --version

echo "== building the wasm filters"
scripts/build-wasm.sh

echo "== building the native module (target/release/libkeyrealm_native.so)"
cargo build --release -p keyrealm-native

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The wasm adapter only compiles for wasm32: lint it there too (same deny list, from Cargo.toml).
cargo clippy --target wasm32-wasip1 -p keyrealm-filter -- -D warnings

if [ -f envoy.yaml ]; then
  echo "== envoy --mode validate -c envoy.yaml"
  # Validation loads the filter and runs its configuration check, which needs the token variable.
  KEYREALM_DP_TOKEN=validate-only "$ENVOY_BIN" --mode validate -c envoy.yaml --disable-hot-restart -l warning
fi
echo "== envoy --mode validate -c envoy-replicas.yaml"
KEYREALM_DP_TOKEN=validate-only "$ENVOY_BIN" --mode validate -c envoy-replicas.yaml --disable-hot-restart -l warning

if [ -f envoy-native.yaml ]; then
  echo "== envoy --mode validate -c envoy-native.yaml (the native module)"
  KEYREALM_DP_TOKEN=validate-only ENVOY_DYNAMIC_MODULES_SEARCH_PATH="${CARGO_TARGET_DIR:-target}/release" \
    "$ENVOY_BIN" --mode validate -c envoy-native.yaml --disable-hot-restart -l warning
fi

echo "== cargo test --workspace"
cargo test --workspace --no-fail-fast
