//! The strip list (`keyrealm_filter::exports`) against what the filter implements and what the
//! build leaves: a hook may be stripped only while the adapter does not implement the SDK method
//! that needs it, and the built module (`scripts/build-wasm.sh`) exports exactly what it should.

use keyrealm_filter::exports::{is_stripped, REQUIRED, STRIPPED};

/// The adapter's source (the only file that implements the SDK's traits).
const ADAPTER: &str = include_str!("../src/adapter.rs");

#[test]
fn stripped_hooks_are_not_implemented_by_the_adapter() {
    assert!(
        ADAPTER.contains("impl HttpContext for") && ADAPTER.contains("fn on_http_request_headers"),
        "the adapter moved: point this test at the file that implements the SDK traits"
    );
    for (export, methods) in STRIPPED {
        for method in *methods {
            assert!(
                !ADAPTER.contains(&format!("fn {method}(")),
                "the adapter implements {method}, so {export} must not be stripped: remove it \
                 from keyrealm_filter::exports::STRIPPED"
            );
        }
    }
}

#[test]
fn required_and_stripped_are_disjoint() {
    for name in REQUIRED {
        assert!(!is_stripped(name), "{name} is both required and stripped");
    }
    // The hooks the adapter does implement are required (so never stripped).
    for (method, export) in [
        ("on_http_request_headers", "proxy_on_request_headers"),
        ("on_http_request_body", "proxy_on_request_body"),
        ("on_http_request_trailers", "proxy_on_request_trailers"),
        ("on_http_call_response", "proxy_on_http_call_response"),
        ("on_configure", "proxy_on_configure"),
        ("on_tick", "proxy_on_tick"),
        ("on_done", "proxy_on_done"),
    ] {
        assert!(ADAPTER.contains(&format!("fn {method}(")), "{method}");
        assert!(REQUIRED.contains(&export), "{export} must be required");
    }
}
