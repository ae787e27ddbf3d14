//! keyrealm-native: the keyrealm key-auth engine (`keyrealm-filter`) as an Envoy dynamic module,
//! loaded by `envoy.filters.http.dynamic_modules` (Envoy 1.40, ABI `v0.2.0`).
//!
//! Envoy loads `libkeyrealm_native.so` with `dynamic_module_config: {name: keyrealm_native}`
//! (found through `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`), `filter_name: keyrealm`, and
//! `filter_config`: the same JSON as the wasm filter's configuration, as a
//! `google.protobuf.StringValue` (docs/envoy.md, "The native form").
//!
//! Layout: [`abi`] is our own minimal binding of the ABI (the only `unsafe` code: C types, the
//! callbacks Envoy exports, the hooks it calls, each behind a panic barrier); `hooks` drives the
//! engine with a [`keyrealm_filter::engine::Host`] over those callbacks: one engine `Filter` per
//! configuration (shared by the workers), one engine `Worker` per Envoy worker thread, and one
//! `SharedState` per process (realm answers, negative entries, look-ups in flight), so a key
//! costs one realm call per ttl per process. Requests of one worker waiting for a look-up made on
//! another are resumed on their own thread through Envoy's scheduler.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod abi;
mod hooks;
