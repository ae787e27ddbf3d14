#!/usr/bin/env bash
# Builds the proxy-wasm modules (release, wasm32-wasip1):
#   target/wasm32-wasip1/release/keyrealm_filter.wasm   the key-auth filter
#   target/wasm32-wasip1/release/abi_test_filter.wasm   the host's ABI test filter
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --target wasm32-wasip1 -p keyrealm-filter -p abi-test-filter
