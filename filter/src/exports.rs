//! The module's export section, as `scripts/build-wasm.sh` leaves it: which of the proxy-wasm
//! SDK's exports are removed from the built module, and which must stay.
//!
//! The SDK exports every proxy-wasm hook; a host (Envoy, keyrealm-host) calls each hook the
//! module exports, and skips one it does not export. A hook the filter does not implement still
//! costs a crossing into the VM on every request (`proxy_on_log`, the response hooks), so
//! `examples/strip_exports.rs` removes them.
//!
//! The list is a *remove* list, not a keep list: an export this list does not name is kept. A
//! future SDK that adds or renames an export the host needs (an allocator, an ABI version
//! marker, a new lifecycle hook) then keeps working at worst a little slower, where a keep list
//! would silently drop it. Each removed hook is paired with the SDK trait method that would
//! make it needed; `tests/exports.rs` fails when the adapter implements one of them, so the
//! list cannot go stale in the other direction either. [`REQUIRED`] is what Envoy and
//! keyrealm-host call for this filter: the strip tool refuses a module that lacks one, and the
//! end-to-end tests refuse to load such a module.

/// Exports removed from the built module, each with the SDK trait method(s) whose
/// implementation would make the hook needed (none of them is implemented by the adapter).
pub const STRIPPED: &[(&str, &[&str])] = &[
    // Called by Envoy after every HTTP stream (and by keyrealm-host): the filter logs nothing
    // there (its log lines are written where the decision is made).
    ("proxy_on_log", &["on_log"]),
    // The filter acts on requests only: responses pass through untouched.
    ("proxy_on_response_headers", &["on_http_response_headers"]),
    ("proxy_on_response_body", &["on_http_response_body"]),
    ("proxy_on_response_trailers", &["on_http_response_trailers"]),
    // No shared queues.
    ("proxy_on_queue_ready", &["on_queue_ready"]),
    // It is an HTTP filter, never a network (TCP) filter.
    ("proxy_on_new_connection", &["on_new_connection"]),
    ("proxy_on_downstream_data", &["on_downstream_data"]),
    (
        "proxy_on_downstream_connection_close",
        &["on_downstream_close"],
    ),
    ("proxy_on_upstream_data", &["on_upstream_data"]),
    ("proxy_on_upstream_connection_close", &["on_upstream_close"]),
    // No gRPC calls (realm calls are plain HTTP calls).
    (
        "proxy_on_grpc_receive_initial_metadata",
        &["on_grpc_stream_initial_metadata"],
    ),
    (
        "proxy_on_grpc_receive",
        &["on_grpc_call_response", "on_grpc_stream_message"],
    ),
    (
        "proxy_on_grpc_receive_trailing_metadata",
        &["on_grpc_stream_trailing_metadata"],
    ),
    (
        "proxy_on_grpc_close",
        &["on_grpc_call_response", "on_grpc_stream_close"],
    ),
    // No foreign functions.
    ("proxy_on_foreign_function", &["on_foreign_function"]),
];

/// Exports Envoy or keyrealm-host call for this filter; a module without one of them is broken.
pub const REQUIRED: &[&str] = &[
    // Guest memory and the allocator the host hands data through.
    "memory",
    "proxy_on_memory_allocate",
    // WASI reactor start-up (runs the SDK's `main!`: the root context factory, the panic hook).
    "_initialize",
    // The ABI version marker both hosts check at load.
    "proxy_abi_version_0_2_1",
    // Root context: creation, start, configuration, the tick (counters, look-up expiry), realm
    // answers.
    "proxy_on_context_create",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_tick",
    "proxy_on_http_call_response",
    // HTTP contexts: the request hooks the filter implements, and the end of a context
    // (`proxy_on_done` forgets the request's look-ups; `proxy_on_delete` frees the context).
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_done",
    "proxy_on_delete",
];

/// Whether `name` is an export the build removes.
pub fn is_stripped(name: &str) -> bool {
    STRIPPED.iter().any(|(export, _)| *export == name)
}
