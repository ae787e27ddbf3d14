//! The module every gateway test, `envoy.yaml`, the demo and the benchmarks load
//! (`target/wasm32-wasip1/release/keyrealm_filter.wasm`, built by `scripts/build-wasm.sh`) is the
//! stripped one: no hook the filter does not implement, every export Envoy and keyrealm-host
//! call.

use keyrealm_tests::gateway::{check_wasm_exports, wasm_exports, wasm_path};

#[test]
fn the_built_filter_exports_what_the_hosts_call_and_nothing_else() {
    let path = wasm_path().expect("the stripped filter (scripts/build-wasm.sh)");
    check_wasm_exports(&path).expect("exports");
    let exports = wasm_exports(&path).expect("read the module");
    // Spelled out here as well, independent of the lists in keyrealm_filter::exports: the hooks
    // whose crossing per request the strip saves are gone ...
    for gone in [
        "proxy_on_log",
        "proxy_on_response_headers",
        "proxy_on_response_body",
        "proxy_on_response_trailers",
    ] {
        assert!(
            !exports.iter().any(|e| e == gone),
            "{gone} is still exported: {exports:?}"
        );
    }
    // ... and what a host calls for a request is there.
    for kept in [
        "memory",
        "_initialize",
        "proxy_abi_version_0_2_1",
        "proxy_on_memory_allocate",
        "proxy_on_context_create",
        "proxy_on_configure",
        "proxy_on_tick",
        "proxy_on_http_call_response",
        "proxy_on_request_headers",
        "proxy_on_request_body",
        "proxy_on_request_trailers",
        "proxy_on_done",
        "proxy_on_delete",
    ] {
        assert!(
            exports.iter().any(|e| e == kept),
            "{kept} is missing: {exports:?}"
        );
    }
}

#[test]
fn an_unstripped_module_is_refused() {
    // The module as cargo builds it (before scripts/build-wasm.sh strips it).
    let stripped = wasm_path().expect("the stripped filter (scripts/build-wasm.sh)");
    let unstripped = stripped
        .parent()
        .expect("release dir")
        .join("deps/keyrealm_filter.wasm");
    let err = check_wasm_exports(&unstripped).expect_err("an unstripped module is refused");
    assert!(
        err.to_string().contains("scripts/build-wasm.sh")
            && err.to_string().contains("proxy_on_log"),
        "{err}"
    );
}
