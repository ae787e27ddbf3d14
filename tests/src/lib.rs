//! keyrealm-tests: the end-to-end suite of keyrealm and the tools it runs on.
//!
//! The suite (under `tests/`) starts the real realm service in-process, an echo upstream
//! in-process, and a gateway running the filter (`keyrealm_filter.wasm` built by
//! `scripts/build-wasm.sh`, or the native module `libkeyrealm_native.so`) from a generated
//! configuration, then plays the seed's story and Kong's key-auth cases through it and asserts
//! what the client and the upstream saw. Every scenario runs three times, once per gateway
//! (`<scenario>::envoy`: real Envoy as a child process with the wasm filter;
//! `<scenario>::envoy_native`: the same Envoy with the native module; `<scenario>::host`:
//! keyrealm-host in-process), and must pass on each.
//!
//! - [`echo`]: the echo upstream (also the `echo-upstream` binary used by `scripts/demo.sh`);
//! - [`gateway`]: the gateway under test behind [`gateway::GatewayKind`], and the config renderer;
//! - [`realm`]: the in-process realm service and its admin API client;
//! - [`fixtures`]: shared set-ups (a control plane, its data-plane token and a realm; Kong's
//!   key-auth consumers);
//! - [`browser`]: headless Chromium driven through chromedriver (WebDriver), for the console;
//! - [`console`]: the console's steps (sign in, fill and submit a form, read its errors) in it;
//! - [`client`], [`checks`], [`hang`]: request helpers, an expectation collector, broken realm services.
//!
//! Needs `ENVOY_BIN` (see `scripts/install-envoy.sh`) and the built filter; either missing is a
//! test failure with a message saying what to run.

pub mod browser;
pub mod checks;
pub mod client;
pub mod console;
pub mod echo;
pub mod fixtures;
pub mod gateway;
pub mod hang;
pub mod realm;

pub use checks::Checks;
pub use client::{http_client, multipart, post_in_chunks, Reply, Upstream};
pub use echo::EchoUpstream;
pub use gateway::{Gateway, GatewayKind, GatewaySpec, TOKEN_ENV};
pub use hang::{FailingServer, HangingServer, SlowProxy};
pub use realm::{RealmConsumer, RealmService};
