//! The key-auth engine: everything the filter does, written against the small [`Host`] trait so
//! that the proxy-wasm adapter (`adapter.rs`), a native Envoy module and the tests share all of
//! it but the ABI.
//!
//! # The pieces
//!
//! - [`SharedState`] (`shared.rs`, `lookups.rs`): realm answers, negative entries and look-ups in
//!   flight. **One per wasm VM** (shared by all its root contexts, so a configuration change,
//!   which makes Envoy create a new root context, keeps them) and **one per process** in the
//!   native module (shared by all worker threads). `Send + Sync`; sharded, with a lock per shard
//!   (a read lock for a cache hit), so threads do not queue behind one lock. Make it with
//!   `SharedState::new(1)` in a wasm VM and `SharedState::new(PROCESS_SHARDS)` in a process.
//! - [`Filter`] (`filter.rs`): one validated configuration (a root context / a filter config),
//!   made with [`Filter::new`]`(config, &shared)`; immutable, `Send + Sync`, held in an `Arc` by
//!   every request that uses it.
//! - [`Worker`] (`worker.rs`): the request state machine of **one thread** (one per wasm VM; one
//!   per Envoy worker thread in the native module, e.g. in a `thread_local!`). Not `Sync`; it is
//!   the only thing that calls the [`Host`].
//! - Pure parts: [`walk`] (`walk.rs`, the `identity_realms` walk returning [`walk::Walked`]),
//!   [`lookups::Lookups`] (join / start / take / expire, unit-tested without a host),
//!   [`answers`] (consumer headers, local replies, `anonymous`), [`hiding`]
//!   (`hide_credentials`), [`headers::Headers`] (the header map without a copy per header),
//!   [`counters::Counters`] (counted in the engine, flushed by the adapter).
//!
//! # What an adapter does
//!
//! Context ids are the adapter's own `u32`s, unique among the live requests of one worker.
//!
//! | proxy event | engine call |
//! |---|---|
//! | configuration (new root context / filter config) | [`Filter::new`]`(config, &shared)` |
//! | request headers | [`Worker::on_request_headers`]`(&filter, ctx, end_of_stream, host)` → [`Action`] |
//! | request body (`size` = bytes buffered so far) | [`Worker::on_request_body`]`(ctx, size, end_of_stream, host)` |
//! | request trailers | [`Worker::on_request_trailers`]`(ctx, host)` |
//! | stream ends | [`Worker::on_done`]`(ctx)` |
//! | answer to a call made by [`Host::dispatch_call`] | [`Worker::on_call_response`]`(current, token, response, host)` |
//! | a [`Waker`] fired (answer posted from another thread) | [`Worker::on_mail`]`(current, host)` |
//! | periodic tick (~200 ms) | [`Worker::on_tick`]`(root, host)`, then [`Worker::drain_counters`] |
//!
//! [`Action::Pause`] from a request callback means "keep it": headers stay paused (the engine
//! later calls [`Host::resume_request`] or [`Host::send_response`] on it), a body chunk stays
//! buffered. Request operations of [`Host`] act on the *effective* context, which the engine
//! switches with [`Host::set_effective_context`] when it continues requests other than the one
//! the host called in for.
//!
//! # Look-ups across threads
//!
//! A request that misses the cache joins the look-up under way for its (realm, token, region,
//! key), or starts one: its worker makes the call ([`Host::dispatch_call`], which returns the
//! token and the context the answer will be delivered to). When the answer comes, that worker
//! fills the cache and continues its own waiting requests; requests of other workers get the
//! answer in their worker's mailbox, and the [`Waker`] their host gave ([`Host::waker`], asked
//! when a request starts waiting) is called, from the answering thread. The native adapter's
//! waker schedules the waiting request's filter on its own thread (Envoy's scheduler), which
//! then calls [`Worker::on_mail`]. Without a waker (wasm: one thread), the next tick delivers
//! the mail. Any worker's tick gives up look-ups past their deadline (`timeout_ms` + 0.5 s),
//! wherever their requests wait.

pub mod answers;
pub mod counters;
pub mod filter;
pub mod headers;
pub mod hiding;
pub mod lookups;
pub mod shared;
pub mod walk;
pub mod worker;

use std::sync::Arc;

pub use answers::{error_body, CONSUMER_HEADERS};
pub use filter::Filter;
pub use headers::Headers;
pub use lookups::Waker;
pub use shared::{SharedState, PROCESS_SHARDS};
pub use worker::{Worker, BODY_WAIT_MS};

/// Log levels the filter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// What a request callback tells the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// An HTTP call to make (the realm service's authenticate call).
#[derive(Debug, Clone, Copy)]
pub struct CallRequest<'a> {
    pub cluster: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub timeout_ms: u64,
}

/// A call the host started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallHandle {
    /// Given back with the answer ([`Worker::on_call_response`]).
    pub token: u32,
    /// The context the answer will be delivered to: when it ends first ([`Worker::on_done`]),
    /// the answer is considered lost and the call is made again from the tick.
    pub receiver: u32,
}

/// What the engine needs from the proxy. Request operations act on the *effective* context:
/// the one the host is calling into, or the one last chosen with
/// [`Host::set_effective_context`].
pub trait Host {
    /// The effective request's headers.
    fn request_headers(&mut self) -> Headers;
    /// Sets (replaces) a request header.
    fn set_request_header(&mut self, name: &str, value: &str);
    /// Adds a request header (keeping any of the same name).
    fn add_request_header(&mut self, name: &str, value: &str);
    fn remove_request_header(&mut self, name: &str);
    /// The buffered request body (`size` bytes from the start).
    fn request_body(&mut self, size: usize) -> Option<Vec<u8>>;
    /// Replaces the first `size` bytes of the buffered body (all of it) with `body`.
    fn replace_request_body(&mut self, size: usize, body: &[u8]);
    /// Answers the request locally; it does not go upstream.
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
    /// Lets a paused request continue upstream (its headers and what its body has buffered).
    fn resume_request(&mut self);
    /// Starts an HTTP call; the answer comes later through [`Worker::on_call_response`].
    fn dispatch_call(&mut self, call: &CallRequest<'_>) -> Result<CallHandle, String>;
    /// Milliseconds since the Unix epoch.
    fn now_ms(&mut self) -> u64;
    fn log(&mut self, level: Level, message: &str);
    fn set_effective_context(&mut self, context_id: u32);
    /// How to wake the effective request from another thread (see the module documentation);
    /// `None` where everything runs on one thread.
    fn waker(&mut self) -> Option<Arc<dyn Waker>> {
        None
    }
}
