#!/usr/bin/env bash
# Builds the proxy-wasm modules (release, wasm32-wasip1):
#   target/wasm32-wasip1/release/keyrealm_filter.wasm   the key-auth filter, its unused exports
#                                                       stripped (filter/examples/strip_exports.rs)
#   target/wasm32-wasip1/release/abi_test_filter.wasm   the host's ABI test filter
# Honours CARGO_TARGET_DIR. The strip step runs every time (it is a no-op on a stripped module),
# so the module this leaves is always stripped, even when cargo rebuilt or re-copied it.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --target wasm32-wasip1 -p keyrealm-filter -p abi-test-filter
cargo run --quiet --release -p keyrealm-filter --example strip_exports -- \
  "$TARGET/wasm32-wasip1/release/keyrealm_filter.wasm"
