//! A bad filter configuration makes the gateway refuse to start, and its log has one line naming
//! the wrong field. Each case is one short-lived gateway.

use std::net::SocketAddr;

use keyrealm_tests::gateway::GatewayKind;
use keyrealm_tests::{gateway_test, Checks, GatewaySpec};
use serde_json::{json, Value};

const REALM_ID: &str = "6d1a3c1e-0000-4000-8000-000000000001";

fn realm_service() -> Value {
    json!({"clusters": {"us": "realm_us"}, "token": "t"})
}

/// (case, configuration, words of which the refusal's log line must hold at least one).
fn bad_configurations() -> Vec<(&'static str, Value, &'static [&'static str])> {
    vec![
        (
            "unknown field",
            json!({"key_nmes": ["apikey"]}),
            &["key_nmes"],
        ),
        (
            "wrong type",
            json!({"key_in_header": "yes"}),
            &["key_in_header"],
        ),
        (
            "key name with a forbidden character",
            json!({"key_names": ["api key"]}),
            &["key_names"],
        ),
        (
            "realm entry without an id",
            json!({"identity_realms": [{"scope": "realm", "id": null, "region": "us"}], "realm_service": realm_service()}),
            &["identity_realms"],
        ),
        (
            "realm entry whose region has no cluster",
            json!({"identity_realms": [{"scope": "realm", "id": REALM_ID, "region": "ap"}], "realm_service": realm_service()}),
            &["region", "clusters"],
        ),
        (
            "realm entry without realm_service",
            json!({"identity_realms": [{"scope": "realm", "id": REALM_ID, "region": "us"}]}),
            &["realm_service"],
        ),
        (
            "duplicate control-plane keys",
            json!({"consumers": [
                {"id": "d0000000-0000-4000-8000-000000000001", "username": "a",
                 "keyauth_credentials": [{"id": "d0000000-0000-4000-8000-0000000000c1", "key": "same"}]},
                {"id": "d0000000-0000-4000-8000-000000000002", "username": "b",
                 "keyauth_credentials": [{"id": "d0000000-0000-4000-8000-0000000000c2", "key": "same"}]},
            ]}),
            &["keyauth_credentials"],
        ),
    ]
}

async fn bad_configuration_is_refused(kind: GatewayKind) {
    let unused: SocketAddr = "127.0.0.1:9".parse().expect("address");
    let mut c = Checks::new();
    for (case, config, words) in bad_configurations() {
        let mut spec = GatewaySpec::new(unused);
        spec.cluster("realm_us", unused);
        spec.listener(config.clone());
        let refusal = match kind.start_expecting_refusal(&spec).await {
            Ok(refusal) => refusal,
            Err(err) => {
                c.check(case, false, || format!("{config}: {err:#}"));
                continue;
            }
        };
        // The field name, outside the plugin's own name (`wasm log keyrealm …`).
        let line = refusal.log.lines().find(|line| {
            let without_name = line.replace("keyrealm", "");
            line.contains("keyrealm") && words.iter().any(|w| without_name.contains(w))
        });
        if let Some(line) = line {
            eprintln!("{case}: {} — {line}", refusal.how);
        }
        c.check(
            &format!("{case}: a log line of the filter names the field"),
            line.is_some(),
            || {
                format!(
                    "no line with `keyrealm` and one of {words:?} for {config}; log:\n{}",
                    refusal.log
                )
            },
        );
    }
    c.finish();
}

gateway_test!(bad_configuration_is_refused);
