//! Review fix 1 in real Envoy: a configuration change (Envoy takes new listeners and creates a
//! new filter configuration: a new root context in the same VM for the wasm form, a new filter
//! config in the same process for the native form) keeps the realm answers cached for the same
//! realms. With the realm service down after the change and the cached answer past its ttl,
//! stale-if-error still carries the key; before the fix, the new configuration started with an
//! empty cache and the key got 503.
//!
//! keyrealm-host takes its listeners from its configuration file only, so this runs on the two
//! Envoy forms.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use keyrealm_tests::fixtures::realm_entry;
use keyrealm_tests::{http_client, Checks, EchoUpstream, GatewayKind, GatewaySpec, Reply};
use serde_json::{json, Value};

const REALM_ID: &str = "5ea1c0de-0000-4000-8000-000000000001";
const KEY: &str = "the-cached-key";
/// The ttl the stub realm gives its answers, in minutes (the realm API's unit): 1.2 s.
const TTL_MINUTES: f64 = 0.02;

/// A realm service stand-in whose answers expire quickly (the real one's ttl is 5 minutes at
/// least) and which can be taken down (every call then answers 503).
struct StubRealm {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl StubRealm {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stub realm");
        let addr = listener.local_addr().expect("stub realm address");
        let up = Arc::new(AtomicBool::new(true));
        let calls = Arc::new(AtomicU64::new(0));
        let (up2, calls2) = (up.clone(), calls.clone());
        let app = axum::Router::new().fallback(move |body: String| {
            let (up, calls) = (up2.clone(), calls2.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if !up.load(Ordering::SeqCst) {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "down on purpose".to_string(),
                    );
                }
                let secret = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["secret"].as_str().map(str::to_string));
                if secret.as_deref() == Some(KEY) {
                    let found = json!({
                        "id": "5ea1c0de-0000-4000-8000-0000000000c1", "username": "ariel",
                        "custom_id": null, "consumer_group_names": [], "ttl": TTL_MINUTES,
                        "negative_ttl": TTL_MINUTES,
                        "credential": {"id": "5ea1c0de-0000-4000-8000-0000000000k1"},
                    });
                    (StatusCode::CREATED, found.to_string())
                } else {
                    let missing = json!({"status": 404, "negative_ttl": TTL_MINUTES});
                    (StatusCode::NOT_FOUND, missing.to_string())
                }
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            up,
            calls,
            task,
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for StubRealm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn filter_config(key_names: &[&str]) -> Value {
    json!({
        "key_names": key_names,
        "identity_realms": [realm_entry(REALM_ID, Some("us"))],
        "realm_service": {"clusters": {"us": "realm_us"}, "token": "stub-token", "timeout_ms": 1000},
    })
}

async fn get(gateway: &keyrealm_tests::Gateway, header: &str, key: &str) -> Reply {
    // A new client (a new connection) each time: after a listener update, connections opened
    // before it still run the old configuration until they drain.
    Reply::send(
        "config change",
        http_client()
            .get(gateway.url(0, "/request"))
            .header(header, key),
    )
    .await
}

async fn a_configuration_change_keeps_the_cache(kind: GatewayKind) {
    let realm = StubRealm::start().await;
    let echo = EchoUpstream::start().await.expect("echo upstream");
    let mut spec = GatewaySpec::new(echo.addr());
    spec.cluster("realm_us", realm.addr);
    spec.listeners_from_file = true;
    spec.listener(filter_config(&["apikey"]));
    let mut gateway = kind.start(&spec).await.expect("gateway");
    let mut c = Checks::new();

    let r = get(&gateway, "apikey", KEY).await;
    c.status("the key, realm up → 200", &r, 200);
    c.eq(
        "the key, realm up: consumer",
        r.upstream().header("x-consumer-username"),
        Some("ariel".to_string()),
    );
    c.eq("the key, realm up: one realm call", realm.calls(), 1);

    // The configuration changes: another key name, the same realm.
    gateway
        .reconfigure(0, filter_config(&["x-key"]))
        .await
        .expect("Envoy takes the new configuration");
    // The realm goes down and the cached answer's ttl passes.
    realm.up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(TTL_MINUTES * 60.0 + 0.5)).await;

    let before = realm.calls();
    let r = get(&gateway, "x-key", KEY).await;
    c.status(
        "after the change, realm down, past the ttl: the key (in the new key name) → 200 (stale-if-error)",
        &r,
        200,
    );
    c.eq(
        "after the change: consumer from the cache of the old configuration",
        r.upstream().header("x-consumer-username"),
        Some("ariel".to_string()),
    );
    c.check(
        "after the change: the expired answer was asked again (and the realm failed)",
        realm.calls() > before,
        || format!("realm calls {} → {}", before, realm.calls()),
    );
    let r = get(&gateway, "apikey", KEY).await;
    c.status(
        "after the change: the old key name is no longer read → 401",
        &r,
        401,
    );
    let r = get(&gateway, "x-key", "never-seen-key").await;
    c.status(
        "after the change, realm down: an unknown key → 503",
        &r,
        503,
    );
    c.finish();
}

mod a_configuration_change_keeps_the_cache {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn envoy() {
        super::a_configuration_change_keeps_the_cache(super::GatewayKind::Envoy).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn envoy_native() {
        super::a_configuration_change_keeps_the_cache(super::GatewayKind::EnvoyNative).await
    }
}
