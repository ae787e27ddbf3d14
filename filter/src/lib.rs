//! keyrealm-filter: Kong-style `key-auth` with `identity_realms`, as a proxy-wasm (ABI 0.2.1)
//! HTTP filter for Envoy (and keyrealm-host).
//!
//! The key is looked for in the request's headers, query string and body as Kong's key-auth does;
//! it is authenticated against the control-plane consumers of the configuration and against
//! realms of the realm service (one cached `dispatch_http_call` per key), in the order
//! `identity_realms` gives. The behaviour is specified in `shared/spec/key-auth.md`; the
//! configuration is documented in `docs/configuration.md`.
//!
//! Layout: the logic is plain Rust ([`config`], [`extract`], [`cache`], [`realm`], [`engine`])
//! written against the small [`engine::Host`] trait and tested natively; the proxy-wasm adapter
//! (`adapter`, compiled for `wasm32` only) maps the SDK's callbacks onto the engine's
//! [`engine::Filter`] (one per root context) and [`engine::Worker`] with its
//! [`engine::SharedState`] (one per VM, kept across configuration changes). The native adapter
//! (`filter-native/`, an Envoy dynamic module) drives the same engine with one `SharedState` per
//! process; the [`engine`] module documents that seam and how the engine is split (walk,
//! look-ups, answers, hiding, headers, counters).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod cache;
pub mod config;
pub mod engine;
pub mod exports;
pub mod extract;
pub mod identity;
pub mod metrics;
pub mod realm;
pub mod sha256;

#[cfg(target_arch = "wasm32")]
mod adapter;
