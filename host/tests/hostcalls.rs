//! The host calls a cached-key request makes, counted: keyrealm-host counts every crossing
//! between the host and a filter (`keyrealm_host_wasm_callbacks_total`,
//! `keyrealm_host_wasm_hostcalls_total` on the admin address, see `docs/host.md`), so a change
//! that adds a crossing to the hot path fails here.
//!
//! The filter is the stripped module (`scripts/build-wasm.sh`, run by `common::wasm_module`):
//! the callbacks it does not implement (`proxy_on_log`, the response hooks) are not exported,
//! so the host never calls them.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::FilterSpec;

/// (callback, function) -> count; function "" holds the callback's own count.
type Counts = BTreeMap<(String, String), u64>;

/// The crossing counters of plugin `keyrealm`, from the admin address.
async fn counts(admin: SocketAddr) -> Counts {
    let text = common::get(admin, "/stats/prometheus").await.body;
    let mut out = Counts::new();
    for line in text.lines() {
        let (series, value) = match line.rsplit_once(' ') {
            Some(split) => split,
            None => continue,
        };
        let labels = |prefix: &str| -> Option<Vec<String>> {
            let inner = series
                .strip_prefix(prefix)?
                .strip_prefix('{')?
                .strip_suffix('}')?;
            inner
                .split(',')
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(_, v)| v.trim_matches('"').to_string())
                })
                .collect::<Option<Vec<_>>>()
        };
        let n: u64 = match value.parse() {
            Ok(n) => n,
            Err(_) => continue,
        };
        if let Some(l) = labels("keyrealm_host_wasm_callbacks_total") {
            if l[0] == "keyrealm" {
                out.insert((l[1].clone(), String::new()), n);
            }
        } else if let Some(l) = labels("keyrealm_host_wasm_hostcalls_total") {
            if l[0] == "keyrealm" {
                out.insert((l[1].clone(), l[2].clone()), n);
            }
        }
    }
    out
}

fn callback(c: &Counts, name: &str) -> u64 {
    c.get(&(name.to_string(), String::new()))
        .copied()
        .unwrap_or(0)
}

/// Polls the counters until `proxy_on_delete` (the last callback of a request) reached `deletes`:
/// then every crossing of those requests is counted. Bounded (10 s).
async fn counts_after(admin: SocketAddr, deletes: u64) -> Counts {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = counts(admin).await;
        if callback(&c, "proxy_on_delete") >= deletes {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "the host did not finish {deletes} requests: {c:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per-request crossings between `before` and `after` (`requests` requests), without the root
/// context's own callbacks (the tick runs on a timer; realm answers arrive on the root).
fn per_request(before: &Counts, after: &Counts, requests: u64) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (key, n) in after {
        let (cb, function) = key;
        if matches!(cb.as_str(), "proxy_on_tick" | "proxy_on_http_call_response") {
            continue;
        }
        let delta = n - before.get(key).copied().unwrap_or(0);
        if delta == 0 {
            continue;
        }
        assert_eq!(
            delta % requests,
            0,
            "{cb} {function}: {delta} is not the same for each of {requests} requests: {:#?}",
            after
                .iter()
                .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0)))
                .filter(|(_, d)| *d > 0)
                .collect::<Vec<_>>()
        );
        let name = if function.is_empty() {
            cb.clone()
        } else {
            format!("{cb} > {function}")
        };
        out.insert(name, delta / requests);
    }
    out
}

fn expect(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// A stand-in realm service: `realm-key` is bob (ttl 300 s), any other key is unknown (404,
/// negative ttl 300 s); counts its calls.
async fn spawn_realm(calls: std::sync::Arc<std::sync::atomic::AtomicU64>) -> SocketAddr {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind realm");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async move {
                            use http_body_util::BodyExt;
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let known = String::from_utf8_lossy(&body).contains("\"realm-key\"");
                            let (status, json) = if known {
                                (
                                    hyper::StatusCode::CREATED,
                                    serde_json::json!({
                                        "id": "realm-consumer-1", "username": "bob", "custom_id": null, "type": 0, "tags": [],
                                        "consumer_group_names": ["gold"], "ttl": 300, "negative_ttl": 300,
                                        "credential": {"id": "realm-cred-1", "created_at": "2026-01-01T00:00:00Z", "tags": [], "expires_at": null}
                                    }),
                                )
                            } else {
                                (
                                    hyper::StatusCode::NOT_FOUND,
                                    serde_json::json!({"status": 404, "title": "Not Found", "negative_ttl": 300}),
                                )
                            };
                            let mut resp = hyper::Response::new(Full::new(bytes::Bytes::from(
                                json.to_string(),
                            )));
                            *resp.status_mut() = status;
                            resp.headers_mut().insert(
                                "content-type",
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The crossings of a request with a cached realm key, and of one with a control-plane key, are
/// exactly these. Checked to fail: with one extra
/// `hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-mutation")` at the top of the
/// adapter's `on_http_request_headers`, the test failed on the cached realm key
/// (`proxy_on_request_headers > proxy_get_header_map_value: 1` appeared); reverted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_key_request_makes_these_host_calls() {
    let upstream = common::spawn_echo().await;
    let realm_calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let realm = spawn_realm(realm_calls.clone()).await;
    let config = serde_json::json!({
        "key_names": ["apikey"],
        "identity_realms": [{"scope": "cp", "id": null}, {"scope": "realm", "id": "realm-1", "region": "us"}],
        "consumers": [{"id": "c1", "username": "alice", "custom_id": "A1", "tags": [],
                       "keyauth_credentials": [{"id": "cred1", "key": "alice-key"}]}],
        "realm_service": {"clusters": {"us": "realm_us"}, "token": "dp-token", "timeout_ms": 2000},
    })
    .to_string();
    let wasm = common::keyrealm_filter_wasm();
    let yaml = common::envoy_yaml(
        upstream,
        &[FilterSpec {
            name: "keyrealm",
            root_id: "keyrealm",
            wasm: &wasm,
            configuration: &config,
            fail_open: false,
            env: &[],
            allow_stop_iteration: false,
        }],
        &[("realm_us", realm)],
    );
    let (host, _dir) = common::start_host(
        &yaml,
        keyrealm_host::HostOptions {
            workers: Some(1),
            ..Default::default()
        },
    )
    .await;
    let addr = host.listener_addrs()[0];
    let admin = host.admin_addr().expect("admin address");

    // Warm the realm key: the first request asks the realm service.
    let warm = common::http(addr, "GET", "/", &[("apikey", "realm-key")], "").await;
    assert_eq!(warm.status, 200, "{}", warm.body);
    assert_eq!(realm_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let before = counts_after(admin, 1).await;

    const N: u64 = 5;
    for _ in 0..N {
        let reply = common::http(addr, "GET", "/", &[("apikey", "realm-key")], "").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let echo = reply.echoed().expect("the request reached the upstream");
        assert_eq!(
            common::echoed_header(&echo, "x-consumer-username").as_deref(),
            Some("bob")
        );
    }
    // Served from the cache: no further realm call.
    assert_eq!(realm_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let after = counts_after(admin, 1 + N).await;
    let realm_key = per_request(&before, &after, N);
    eprintln!("cached realm key, per request: {realm_key:#?}");

    for _ in 0..N {
        let reply = common::http(addr, "GET", "/", &[("apikey", "alice-key")], "").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let cp = counts_after(admin, 1 + 2 * N).await;
    // The control-plane key matched first: no realm call.
    assert_eq!(realm_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let cp_key = per_request(&after, &cp, N);
    eprintln!("control-plane key, per request: {cp_key:#?}");

    // Both kinds of request: one HTTP context (create, request headers, done, delete; the
    // stripped module has no proxy_on_log and no response hooks, so the host makes no crossing
    // for them). In proxy_on_request_headers: the header map read once, whole
    // (get_header_map_pairs, which the host hands over through one guest allocation), never
    // header by header; the key header removed (hide_credentials, on by default); the consumer
    // headers the spec sets added one call each (bob: x-consumer-id, x-consumer-username,
    // x-credential-identifier, x-consumer-groups; alice: x-consumer-id, x-consumer-custom-id,
    // x-consumer-username, x-credential-identifier). The cached realm answer is checked against
    // the clock once; the control-plane key needs no clock. No log line, no metric call (the
    // filter counts in the guest and flushes on the tick), no property read.
    assert_eq!(
        realm_key,
        expect(&[
            ("proxy_on_context_create", 1),
            ("proxy_on_request_headers", 1),
            ("proxy_on_request_headers > proxy_get_header_map_pairs", 1),
            ("proxy_on_request_headers > proxy_on_memory_allocate", 1),
            (
                "proxy_on_request_headers > proxy_remove_header_map_value",
                1
            ),
            ("proxy_on_request_headers > proxy_add_header_map_value", 4),
            (
                "proxy_on_request_headers > proxy_get_current_time_nanoseconds",
                1
            ),
            ("proxy_on_done", 1),
            ("proxy_on_delete", 1),
        ]),
        "cached realm key"
    );
    assert_eq!(
        cp_key,
        expect(&[
            ("proxy_on_context_create", 1),
            ("proxy_on_request_headers", 1),
            ("proxy_on_request_headers > proxy_get_header_map_pairs", 1),
            ("proxy_on_request_headers > proxy_on_memory_allocate", 1),
            (
                "proxy_on_request_headers > proxy_remove_header_map_value",
                1
            ),
            ("proxy_on_request_headers > proxy_add_header_map_value", 4),
            ("proxy_on_done", 1),
            ("proxy_on_delete", 1),
        ]),
        "control-plane key"
    );
    host.shutdown().await;
}
