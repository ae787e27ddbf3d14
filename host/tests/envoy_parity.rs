//! The abi-test-filter scenarios, run in real Envoy (the reference, `ENVOY_BIN`) and in
//! keyrealm-host with the same envoy.yaml: each request must observe the same results — status,
//! the headers and body the client gets, and the method, path, headers and body that reach the
//! upstream. Each scenario also asserts what it expects, so that agreeing on a wrong answer
//! fails too.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{FilterSpec, Reply};
use serde_json::Value;

/// Headers that differ run to run, or by design between two proxies, and carry no ABI meaning.
const CLIENT_IGNORED: &[&str] = &[
    "date",
    "server",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-envoy-upstream-service-time",
];
const UPSTREAM_IGNORED: &[&str] = &[
    "x-request-id",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// What one request observed, normalised for comparison.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    status: u16,
    client_headers: BTreeMap<String, Vec<String>>,
    client_body: String,
    upstream: Option<Upstream>,
}

#[derive(Debug, PartialEq, Eq)]
struct Upstream {
    method: String,
    path: String,
    headers: BTreeMap<String, Vec<String>>,
    body: String,
}

fn observe(r: &Reply) -> Observed {
    let mut client_headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &r.headers {
        let k = k.to_ascii_lowercase();
        if !CLIENT_IGNORED.contains(&k.as_str()) {
            client_headers.entry(k).or_default().push(v.clone());
        }
    }
    let (client_body, upstream) = match r.echoed() {
        Some(echo) => {
            let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for pair in echo["headers"].as_array().cloned().unwrap_or_default() {
                let k = pair[0].as_str().unwrap_or_default().to_ascii_lowercase();
                if !UPSTREAM_IGNORED.contains(&k.as_str()) {
                    headers
                        .entry(k)
                        .or_default()
                        .push(pair[1].as_str().unwrap_or_default().to_string());
                }
            }
            let up = Upstream {
                method: echo["method"].as_str().unwrap_or_default().into(),
                path: echo["path"].as_str().unwrap_or_default().into(),
                headers,
                body: echo["body"].as_str().unwrap_or_default().into(),
            };
            ("<echo>".to_string(), Some(up))
        }
        None => (r.body.clone(), None),
    };
    Observed {
        status: r.status,
        client_headers,
        client_body,
        upstream,
    }
}

/// One request of a scenario.
struct Req {
    /// Sent as HTTP/2 (cleartext, prior knowledge) instead of HTTP/1.1.
    h2: bool,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
}

/// An HTTP/1.1 request.
fn request(
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
) -> Req {
    Req {
        h2: false,
        method,
        path,
        headers,
        body,
    }
}

fn get(path: &'static str) -> Req {
    request("GET", path, vec![], "")
}

/// How a scenario's gateways are set up, beyond the filter and its configuration.
#[derive(Default)]
struct Setup<'a> {
    /// `allow_on_headers_stop_iteration`
    allow_stop_iteration: bool,
    /// Clusters besides `upstream` (the echo).
    extra_clusters: &'a [(&'a str, SocketAddr)],
    /// A pause between start-up and the first request.
    settle: Duration,
}

/// Runs `requests` against Envoy and keyrealm-host, both loaded with the abi-test-filter and
/// `config`; asserts they observed the same, and returns the observations (host's).
async fn parity(vm_id: &str, config: Value, requests: &[Req]) -> Vec<(Reply, Observed)> {
    parity_with(vm_id, config, Setup::default(), requests).await
}

/// [`parity`] set up as `setup` says.
async fn parity_with(
    vm_id: &str,
    config: Value,
    setup: Setup<'_>,
    requests: &[Req],
) -> Vec<(Reply, Observed)> {
    let wasm = common::abi_test_filter_wasm();
    parity_module(&wasm, "abi_test", vm_id, config, setup, requests).await
}

/// Runs `requests` against Envoy and keyrealm-host loaded with `wasm` (root id `root_id`).
async fn parity_module(
    wasm: &std::path::Path,
    root_id: &str,
    vm_id: &str,
    config: Value,
    setup: Setup<'_>,
    requests: &[Req],
) -> Vec<(Reply, Observed)> {
    let upstream = common::spawn_echo().await;
    let configuration = config.to_string();
    let spec = FilterSpec {
        allow_stop_iteration: setup.allow_stop_iteration,
        ..FilterSpec::new(vm_id, root_id, wasm, &configuration)
    };
    let yaml = common::envoy_yaml(upstream, &[spec], setup.extra_clusters);
    let (envoy, host, _dir) = common::start_both(&yaml).await;
    let host_addr = host.listener_addrs()[0];
    tokio::time::sleep(setup.settle).await;
    let mut out = Vec::new();
    for r in requests {
        let send = |addr| {
            common::send(
                addr,
                common::version(r.h2),
                r.method,
                r.path,
                &r.headers,
                r.body,
            )
        };
        let from_envoy = send(envoy.listener).await;
        let from_host = send(host_addr).await;
        let (e, h) = (observe(&from_envoy), observe(&from_host));
        assert_eq!(
            h, e,
            "{} {}: keyrealm-host (left) differs from Envoy (right)",
            r.method, r.path
        );
        out.push((from_host, h));
    }
    let envoy_stats = common::get(envoy.admin, "/stats/prometheus").await.body;
    let host_stats = common::get(host.admin_addr().expect("admin"), "/stats/prometheus")
        .await
        .body;
    STATS.with(|s| *s.borrow_mut() = (envoy_stats, host_stats));
    host.shutdown().await;
    drop(envoy);
    out
}

thread_local! {
    /// The Prometheus text of Envoy and of keyrealm-host at the end of the last scenario run on
    /// this thread.
    static STATS: std::cell::RefCell<(String, String)> = const { std::cell::RefCell::new((String::new(), String::new())) };
}

/// Sample lines (no comments) that mention `needle`, sorted.
fn samples(text: &str, needle: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(needle))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn up_header(o: &Observed, name: &str) -> Option<String> {
    o.upstream.as_ref()?.headers.get(name).map(|v| v.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_add_replace_remove_on_request_and_response() {
    let config = serde_json::json!({
        "request_headers": {"add": [["x-added", "a1"], ["x-multi", "two"]], "replace": [["x-replaced", "new"]], "remove": ["x-remove-me"]},
        "response_headers": {"add": [["x-resp-added", "r1"]], "replace": [["content-type", "text/replaced"]], "remove": ["x-echo-upstream-gone"]},
    });
    let req = request(
        "GET",
        "/headers?q=1",
        vec![
            ("x-replaced", "old"),
            ("x-remove-me", "1"),
            ("x-multi", "one"),
        ],
        "",
    );
    let obs = parity("headers", config, &[req]).await;
    let o = &obs[0].1;
    assert_eq!(o.status, 200);
    assert_eq!(up_header(o, "x-added").as_deref(), Some("a1"));
    assert_eq!(up_header(o, "x-replaced").as_deref(), Some("new"));
    assert_eq!(up_header(o, "x-remove-me"), None);
    assert_eq!(up_header(o, "x-multi").as_deref(), Some("one,two"));
    assert_eq!(
        o.client_headers.get("x-resp-added"),
        Some(&vec!["r1".to_string()])
    );
    assert_eq!(
        o.client_headers.get("content-type"),
        Some(&vec!["text/replaced".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_body_read_and_rewrite() {
    let config = serde_json::json!({
        "request_body": {"prefix": "<", "suffix": ">"},
        "response_body": {"replace": "rewritten by the filter"},
    });
    let req = request(
        "POST",
        "/body",
        vec![("content-type", "text/plain")],
        "hello",
    );
    let obs = parity("body", config, &[req]).await;
    let (reply, o) = &obs[0];
    assert_eq!(o.status, 200);
    assert_eq!(reply.body, "rewritten by the filter");
    // The rewritten response is not the echo, so the upstream's view is not visible here;
    // the request body rewrite is checked by the next request kind below.
    assert!(o.upstream.is_none());
    let config = serde_json::json!({"request_body": {"prefix": "<", "suffix": ">"}});
    let req = request(
        "POST",
        "/body",
        vec![("content-type", "text/plain")],
        "hello",
    );
    let obs = parity("body2", config, &[req]).await;
    let up = obs[0].1.upstream.as_ref().expect("reached upstream");
    assert_eq!(up.body, "<hello>");
    assert_eq!(up.method, "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_responses() {
    let config = serde_json::json!({
        "local_reply": {"status": 403, "body": "denied", "headers": [["x-local", "1"], ["content-type", "application/problem+json"]], "when_header": "x-deny"},
        "response_headers": {"add": [["x-resp-added", "r1"]]},
    });
    let deny = request("GET", "/private", vec![("x-deny", "1")], "");
    let empty = serde_json::json!({"local_reply": {"status": 401}});
    let obs = parity("local", config, &[deny, get("/public")]).await;
    assert_eq!(obs[0].1.status, 403);
    assert_eq!(obs[0].0.body, "denied");
    assert_eq!(obs[0].0.header("x-local"), Some("1"));
    assert!(obs[0].1.upstream.is_none());
    assert_eq!(obs[1].1.status, 200);
    let obs = parity("local-empty", empty, &[get("/x")]).await;
    assert_eq!(obs[0].1.status, 401);
    assert_eq!(obs[0].0.body, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_call_and_its_answer() {
    let config = serde_json::json!({"http_call": {"cluster": "upstream", "path": "/fixed", "timeout_ms": 2000}});
    let obs = parity("call", config, &[get("/with-call")]).await;
    let o = &obs[0].1;
    assert_eq!(o.status, 200);
    assert_eq!(up_header(o, "x-call-status").as_deref(), Some("200"));
    assert_eq!(up_header(o, "x-call-body-bytes").as_deref(), Some("9"));

    let config = serde_json::json!({"http_call": {"cluster": "upstream", "path": "/fixed-status/403", "deny_on_status": 403}});
    let obs = parity("call-deny", config, &[get("/denied")]).await;
    assert_eq!(obs[0].1.status, 403);
    assert_eq!(obs[0].0.body, "fixed-403");
    assert_eq!(obs[0].0.header("x-denied-by-callout"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Envoy answers a failed call with its router's local reply (503 on a refused connection, 504 on
/// a timeout); keyrealm-host does the same.
async fn failed_and_timed_out_http_calls_answer_like_envoys_router() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let with_dead = [("dead", dead)];
    // (vm id, configuration, extra clusters, x-call-status, x-call-body if the call answered)
    let cases = [
        (
            "call-dead",
            serde_json::json!({"http_call": {"cluster": "dead", "path": "/x", "timeout_ms": 1000, "copy_body": true}}),
            &with_dead[..],
            "503",
            Some("upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"),
        ),
        (
            "call-slow",
            serde_json::json!({"http_call": {"cluster": "upstream", "path": "/slow", "timeout_ms": 200, "copy_body": true}}),
            &[],
            "504",
            Some("upstream request timeout"),
        ),
        (
            "call-unknown",
            serde_json::json!({"http_call": {"cluster": "nosuchcluster", "path": "/x"}}),
            &[],
            "dispatch-error-2",
            None,
        ),
    ];
    for (vm_id, config, extra_clusters, status, body) in cases {
        let setup = Setup {
            extra_clusters,
            ..Setup::default()
        };
        let obs = parity_with(vm_id, config, setup, &[get("/a")]).await;
        let o = &obs[0].1;
        assert_eq!(
            up_header(o, "x-call-status").as_deref(),
            Some(status),
            "{vm_id}"
        );
        if body.is_some() {
            assert_eq!(up_header(o, "x-call-body").as_deref(), body, "{vm_id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_data_with_cas_and_tick() {
    let config = serde_json::json!({"shared_counter": "requests", "tick_ms": 20});
    let setup = Setup {
        settle: Duration::from_millis(400),
        ..Setup::default()
    };
    let obs = parity_with("shared", config, setup, &[get("/1"), get("/2")]).await;
    assert_eq!(up_header(&obs[0].1, "x-shared-count").as_deref(), Some("1"));
    assert_eq!(up_header(&obs[1].1, "x-shared-count").as_deref(), Some("2"));
    assert_eq!(up_header(&obs[1].1, "x-ticked").as_deref(), Some("yes"));
}

/// The end-of-stream callbacks come in Envoy's order.
/// Shared queues: the filter registers a queue on configure and every request enqueues its path;
/// the registering root context hears of each item (`on_queue_ready`) and moves it to shared
/// data, which the next requests report. Envoy and keyrealm-host see the same sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_queue_and_on_queue_ready() {
    let config = serde_json::json!({"queue": "paths"});
    let obs = parity("queues", config, &[get("/1"), get("/2"), get("/3")]).await;
    let seen: Vec<Option<String>> = obs
        .iter()
        .map(|o| up_header(&o.1, "x-queue-seen"))
        .collect();
    assert_eq!(
        seen,
        [Some("".into()), Some("/1".into()), Some("/1,/2".into())]
    );
    assert!(obs
        .iter()
        .all(|o| up_header(&o.1, "x-enqueued").as_deref() == Some("ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_stream_callbacks_in_order() {
    let config = serde_json::json!({"record_lifecycle": true});
    let obs = parity("lifecycle", config, &[get("/1"), get("/2")]).await;
    assert_eq!(up_header(&obs[0].1, "x-lifecycle").as_deref(), Some(""));
    let second = up_header(&obs[1].1, "x-lifecycle").unwrap_or_default();
    assert!(
        second.contains("done") && second.contains("log"),
        "{second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties() {
    let config = serde_json::json!({
        "properties": ["request.path", "request.url_path", "request.query", "request.method", "request.host",
                       "request.scheme", "request.protocol", "request.headers.x-custom", "plugin_name",
                       "plugin_root_id", "no.such.property"],
        "response_properties": ["response.code"],
    });
    let req = request(
        "PUT",
        "/p/q?a=1&b=2",
        vec![("x-custom", "custom-value")],
        "x",
    );
    let obs = parity("props", config, &[req]).await;
    let o = &obs[0].1;
    assert_eq!(
        up_header(o, "x-prop-request-path").as_deref(),
        Some("/p/q?a=1&b=2")
    );
    assert_eq!(
        up_header(o, "x-prop-request-method").as_deref(),
        Some("PUT")
    );
    assert_eq!(up_header(o, "x-prop-plugin_name").as_deref(), Some("props"));
    assert_eq!(
        o.client_headers.get("x-prop-response-code"),
        Some(&vec!["200".to_string()])
    );
}

/// `codec_type: AUTO` serves HTTP/2 with prior knowledge as well as HTTP/1.1: over h2c the filter
/// sees the same request (`:authority`, headers, body, `request.protocol` "HTTP/2"), its header and
/// body edits reach the upstream and the client, and local replies come back, as in Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge() {
    let config = serde_json::json!({
        "request_headers": {"add": [["x-added", "a1"]], "remove": ["x-remove-me"]},
        "response_headers": {"add": [["x-resp-added", "r1"]]},
        "request_body": {"prefix": "<", "suffix": ">"},
        "local_reply": {"status": 403, "body": "denied", "headers": [["x-denied", "1"]], "when_header": "x-deny"},
        "properties": ["request.protocol", "request.host", "request.path", "request.method"],
    });
    let h2 = |method, path, headers, body| Req {
        h2: true,
        method,
        path,
        headers,
        body,
    };
    let requests = [
        h2(
            "GET",
            "/h2/get?a=1",
            vec![("x-remove-me", "gone"), ("x-kept", "k")],
            "",
        ),
        h2(
            "POST",
            "/h2/post",
            vec![("content-type", "text/plain")],
            "body",
        ),
        h2("GET", "/h2/deny", vec![("x-deny", "1")], ""),
        get("/h1"),
    ];
    let obs = parity("h2c", config, &requests).await;
    let get_h2 = &obs[0].1;
    assert_eq!(get_h2.status, 200);
    assert_eq!(
        up_header(get_h2, "x-prop-request-protocol").as_deref(),
        Some("HTTP/2")
    );
    assert_eq!(
        up_header(get_h2, "x-prop-request-host").as_deref(),
        Some("example.test")
    );
    assert_eq!(up_header(get_h2, "x-added").as_deref(), Some("a1"));
    assert_eq!(up_header(get_h2, "x-remove-me"), None);
    assert_eq!(
        get_h2.client_headers.get("x-resp-added"),
        Some(&vec!["r1".to_string()])
    );
    let post = obs[1]
        .1
        .upstream
        .as_ref()
        .expect("the POST reached the upstream");
    assert_eq!(post.body, "<body>");
    assert_eq!(
        (obs[2].1.status, obs[2].1.client_body.as_str()),
        (403, "denied")
    );
    assert_eq!(
        up_header(&obs[3].1, "x-prop-request-protocol").as_deref(),
        Some("HTTP/1.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_defined_by_the_filter() {
    let config =
        serde_json::json!({"metrics_prefix": "abi_test_", "request_body": {"suffix": "!"}});
    let obs = parity("metrics", config, &[get("/1"), post_body()]).await;
    assert_eq!(
        up_header(&obs[0].1, "x-metric-requests").as_deref(),
        Some("1")
    );
    assert_eq!(
        up_header(&obs[1].1, "x-metric-requests").as_deref(),
        Some("2")
    );
    let (envoy_stats, host_stats) = STATS.with(|s| s.borrow().clone());
    let envoy_counter = samples(&envoy_stats, "abi_test_requests");
    assert_eq!(
        samples(&host_stats, "abi_test_requests"),
        envoy_counter,
        "envoy: {envoy_stats}"
    );
    assert_eq!(
        samples(&host_stats, "abi_test_last_path_length"),
        samples(&envoy_stats, "abi_test_last_path_length")
    );
    // Histograms: the same series; Envoy shows recorded values only after its stats flush
    // (every 5 s), keyrealm-host at once, so the values are not compared.
    let names = |text: &str| -> Vec<String> {
        samples(text, "abi_test_body_bytes")
            .iter()
            .map(|l| {
                l.rsplit_once(' ')
                    .map(|(n, _)| n.to_string())
                    .unwrap_or_default()
            })
            .collect()
    };
    assert_eq!(names(&host_stats), names(&envoy_stats));
    assert!(samples(&host_stats, "abi_test_body_bytes")
        .contains(&"abi_test_body_bytes_sum{} 3".to_string()));
    assert_eq!(envoy_counter.len(), 1, "{envoy_stats}");
    assert!(envoy_counter[0].ends_with(" 2"), "{envoy_counter:?}");
}

fn post_body() -> Req {
    request("POST", "/2", vec![], "abc")
}

/// A filter pausing its headers for a call while the body arrives: without
/// allow_on_headers_stop_iteration the body waits until the filter continues; with it, the body
/// is handed over at once, and a body callback that continues resumes the request early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_while_headers_are_paused_for_a_call() {
    let post = || {
        request(
            "POST",
            "/paused",
            vec![("content-type", "text/plain")],
            "payload",
        )
    };
    let continues = serde_json::json!({"http_call": {"cluster": "upstream", "path": "/fixed", "body_continues": true}});
    let pauses = serde_json::json!({"http_call": {"cluster": "upstream", "path": "/fixed"}});

    // (vm id, configuration, allow_on_headers_stop_iteration, x-call-status the upstream sees)
    let cases = [
        // Stop-all: the body waits for the headers, which wait for the call.
        ("stop-all", continues.clone(), false, Some("200")),
        // The body callback continues: it resumes the request before the call's answer.
        ("stop-iter-continue", continues, true, None),
        ("stop-iter-pause", pauses, true, Some("200")),
    ];
    for (vm_id, config, allow, call_status) in cases {
        let setup = Setup {
            allow_stop_iteration: allow,
            ..Setup::default()
        };
        let obs = parity_with(vm_id, config, setup, &[post()]).await;
        let body = obs[0].1.upstream.as_ref().map(|u| u.body.as_str());
        assert_eq!(body, Some("payload"), "{vm_id}");
        assert_eq!(
            up_header(&obs[0].1, "x-call-status").as_deref(),
            call_status,
            "{vm_id}"
        );
    }
}

/// A stand-in realm service: `POST /realm-1/v0/authenticate` with `Bearer dp-token` finds the
/// secret `realm-key` (201) and nothing else (404); other tokens get 401.
async fn spawn_fake_realm() -> SocketAddr {
    common::spawn_http1(|req: hyper::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let authorized = req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == b"Bearer dp-token");
        let path = req.uri().path().to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let secret = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["secret"].as_str().map(str::to_string));
        let not_found =
            || (404, serde_json::json!({"status": 404, "title": "Not Found", "negative_ttl": 1}));
        let (status, json) = if !authorized {
            (
                401,
                serde_json::json!({"status": 401, "title": "Unauthorized"}),
            )
        } else if path != "/realm-1/v0/authenticate" {
            not_found()
        } else if secret.as_deref() == Some("realm-key") {
            (
                201,
                serde_json::json!({
                    "id": "realm-consumer-1", "username": "bob", "custom_id": null, "type": 0, "tags": [],
                    "consumer_group_names": ["gold"], "ttl": 5, "negative_ttl": 1,
                    "credential": {"id": "realm-cred-1", "created_at": "2026-01-01T00:00:00Z", "tags": [], "expires_at": null}
                }),
            )
        } else {
            not_found()
        };
        Ok::<_, std::convert::Infallible>(common::response(
            status,
            &[("content-type", "application/json")],
            json.to_string(),
        ))
    })
    .await
}

fn keyrealm_config(realm_region: &str) -> Value {
    serde_json::json!({
        "key_names": ["apikey"],
        "key_in_body": true,
        "identity_realms": [{"scope": "realm", "id": "realm-1", "region": realm_region}, {"scope": "cp", "id": null}],
        "consumers": [{"id": "c1", "username": "alice", "custom_id": "A1", "tags": [],
                       "keyauth_credentials": [{"id": "cred1", "key": "alice-key"}]}],
        "realm_service": {"clusters": {"us": "realm_us", "eu": "realm_eu"}, "token": "dp-token", "timeout_ms": 1000},
    })
}

fn with_id(mut r: Req) -> Req {
    r.headers.push(("x-request-id", "req-fixed-1"));
    r
}

/// The keyrealm key-auth filter behaves the same in keyrealm-host as in Envoy: control-plane
/// keys, realm keys through an HTTP call, unknown and missing keys, keys in the body, and an
/// unavailable realm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyrealm_filter_runs_the_same_in_both() {
    let realm = spawn_fake_realm().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let wasm = common::keyrealm_filter_wasm();
    let requests = vec![
        with_id(get("/no-key")),
        with_id(get("/q?apikey=alice-key&x=1")),
        with_id(request("GET", "/h", vec![("apikey", "realm-key")], "")),
        with_id(request("GET", "/h", vec![("apikey", "realm-key")], "")),
        with_id(request("GET", "/h", vec![("apikey", "nobody")], "")),
        with_id(request(
            "POST",
            "/form",
            vec![("content-type", "application/x-www-form-urlencoded")],
            "a=1&apikey=realm-key&b=2",
        )),
        with_id(get("/dup?apikey=a&apikey=b")),
    ];
    let clusters = [("realm_us", realm), ("realm_eu", dead)];
    let setup = || Setup {
        allow_stop_iteration: true,
        extra_clusters: &clusters,
        ..Setup::default()
    };
    let obs = parity_module(
        &wasm,
        "keyrealm",
        "keyrealm",
        keyrealm_config("us"),
        setup(),
        &requests,
    )
    .await;
    assert_eq!(obs[0].1.status, 401);
    assert_eq!(obs[1].1.status, 200);
    assert_eq!(
        up_header(&obs[1].1, "x-consumer-username").as_deref(),
        Some("alice")
    );
    assert_eq!(
        obs[1].1.upstream.as_ref().map(|u| u.path.as_str()),
        Some("/q?x=1"),
        "key hidden"
    );
    assert_eq!(obs[2].1.status, 200);
    assert_eq!(
        up_header(&obs[2].1, "x-consumer-id").as_deref(),
        Some("realm-consumer-1")
    );
    assert_eq!(
        up_header(&obs[3].1, "x-consumer-groups").as_deref(),
        Some("gold")
    );
    assert_eq!(obs[4].1.status, 401);
    assert_eq!(obs[5].1.status, 200);
    assert_eq!(
        obs[5].1.upstream.as_ref().map(|u| u.body.as_str()),
        Some("a=1&b=2")
    );
    assert_eq!(obs[6].1.status, 401);

    let unavailable = vec![
        with_id(request("GET", "/h", vec![("apikey", "nobody")], "")),
        with_id(get("/?apikey=alice-key")),
    ];
    let obs = parity_module(
        &wasm,
        "keyrealm",
        "keyrealm-eu",
        keyrealm_config("eu"),
        setup(),
        &unavailable,
    )
    .await;
    assert_eq!(obs[0].1.status, 503);
    assert_eq!(obs[1].1.status, 200, "a cp key still works");
}

/// Two wasm filters in one chain: requests go through them in order, responses in reverse
/// order, and a local reply from the first one skips the second one's request callbacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_filters_in_a_chain() {
    let upstream = common::spawn_echo().await;
    let wasm = common::abi_test_filter_wasm();
    let first = serde_json::json!({
        "request_headers": {"add": [["x-order", "first"]]},
        "response_headers": {"add": [["x-resp-order", "first"]]},
        "local_reply": {"status": 418, "body": "short and stout", "when_header": "x-deny"},
    })
    .to_string();
    let second = serde_json::json!({
        "request_headers": {"add": [["x-order", "second"]]},
        "response_headers": {"add": [["x-resp-order", "second"]]},
    })
    .to_string();
    let specs = [
        FilterSpec::abi_test("first", &wasm, &first),
        FilterSpec::abi_test("second", &wasm, &second),
    ];
    let yaml = common::envoy_yaml(upstream, &specs, &[]);
    let (envoy, host, _dir) = common::start_both(&yaml).await;
    let host_addr = host.listener_addrs()[0];
    let mut seen = Vec::new();
    for headers in [vec![], vec![("x-deny", "1")]] {
        let e = observe(&common::http(envoy.listener, "GET", "/chain", &headers, "").await);
        let h = observe(&common::http(host_addr, "GET", "/chain", &headers, "").await);
        assert_eq!(
            h, e,
            "keyrealm-host (left) differs from Envoy (right) with {headers:?}"
        );
        seen.push(h);
    }
    assert_eq!(
        up_header(&seen[0], "x-order").as_deref(),
        Some("first,second")
    );
    assert_eq!(
        seen[0].client_headers.get("x-resp-order"),
        Some(&vec!["second".to_string(), "first".to_string()])
    );
    assert_eq!(seen[1].status, 418);
    host.shutdown().await;
}

/// Starts Envoy and keyrealm-host with the abi-test-filter doing nothing, in front of the echo.
async fn both_plain() -> (common::Envoy, keyrealm_host::RunningHost, tempfile::TempDir) {
    let upstream = common::spawn_echo().await;
    let wasm = common::abi_test_filter_wasm();
    let spec = FilterSpec::abi_test("plain", &wasm, "{}");
    common::start_both(&common::envoy_yaml(upstream, &[spec], &[])).await
}

/// A HEAD answer carries the upstream's content-length (the length a GET would have), as
/// Envoy passes it on; the body is empty in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_keeps_the_upstreams_content_length() {
    let (envoy, host, _dir) = both_plain().await;
    let addr = host.listener_addrs()[0];
    let from_envoy = common::http(envoy.listener, "HEAD", "/head", &[], "").await;
    let from_host = common::http(addr, "HEAD", "/head", &[], "").await;
    assert_eq!(from_envoy.status, 200);
    let envoy_len = from_envoy.header("content-length").map(str::to_string);
    let len: usize = envoy_len
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("Envoy answers HEAD with a content-length");
    assert!(len > 0, "the echo's GET body is not empty");
    assert_eq!(
        (
            from_host.status,
            from_host.header("content-length").map(str::to_string)
        ),
        (from_envoy.status, envoy_len),
        "HEAD: keyrealm-host (left) differs from Envoy (right)"
    );
    assert_eq!(
        (from_host.body.as_str(), from_envoy.body.as_str()),
        ("", "")
    );
    host.shutdown().await;
}

/// `Expect: 100-continue` is answered by the proxy and stripped, as Envoy does without
/// `proxy_100_continue`: the upstream never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_not_forwarded() {
    let requests = [request(
        "POST",
        "/expect",
        vec![("expect", "100-continue"), ("content-type", "text/plain")],
        "payload",
    )];
    let obs = parity("expect", serde_json::json!({}), &requests).await;
    let up = obs[0].1.upstream.as_ref().expect("reached the upstream");
    assert_eq!(up.body, "payload");
    assert_eq!(up_header(&obs[0].1, "expect"), None);
}

/// One raw HTTP/1.1 request with the given Host header; the status code (10 s limit).
async fn raw_status(addr: SocketAddr, host: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        let text = String::from_utf8_lossy(&out);
        text.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"))
    })
    .await
    .expect("request timed out")
}

/// Virtual hosts are chosen as Envoy chooses them: an exact domain before a suffix wildcard
/// before a prefix wildcard before `*` (the longest wildcard first), whatever their order in
/// the file; the Host header's port takes part in the match; a wildcard never matches an
/// empty part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_host_selection_follows_envoys_order() {
    let upstream = common::spawn_echo().await;
    let base = common::envoy_yaml(upstream, &[], &[]);
    let default_vh = r#"            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: upstream, timeout: 2s}
"#;
    // Each virtual host routes only its own path, so the status tells which one was chosen.
    // (name, domain, path)
    let vhs = [
        ("any", "*", "/any"),
        ("prefix", "api.*", "/prefix"),
        ("suffix", "*.example.test", "/suffix"),
        ("longer-suffix", "*.api.example.test", "/longer"),
        ("exact", "api.example.test", "/exact"),
        ("dash", "*-dash.test", "/dash"),
    ];
    let vhs: String = std::iter::once("            virtual_hosts:\n".to_string())
        .chain(vhs.iter().map(|(name, domain, path)| {
            format!(
                r#"            - name: {name}
              domains: ["{domain}"]
              routes:
              - match: {{path: "{path}"}}
                route: {{cluster: upstream, timeout: 2s}}
"#
            )
        }))
        .collect();
    assert!(base.contains(default_vh));
    let yaml = base.replace(default_vh, &vhs);
    let (envoy, host, _dir) = common::start_both(&yaml).await;
    let addr = host.listener_addrs()[0];
    let cases = [
        ("api.example.test", "/exact", 200),
        ("api.example.test", "/suffix", 404),
        ("api.example.test", "/prefix", 404),
        ("v1.api.example.test", "/longer", 200),
        ("www.example.test", "/suffix", 200),
        ("api.other", "/prefix", 200),
        ("other", "/any", 200),
        ("API.Example.Test", "/exact", 200),
        ("api.example.test:8080", "/exact", 0),
        ("a-dash.test", "/dash", 200),
        ("-dash.test", "/dash", 404),
    ];
    for (authority, path, expected) in cases {
        let from_envoy = raw_status(envoy.listener, authority, path).await;
        let from_host = raw_status(addr, authority, path).await;
        assert_eq!(
            from_host, from_envoy,
            "Host {authority}, {path}: keyrealm-host (left) differs from Envoy (right)"
        );
        if expected != 0 {
            assert_eq!(from_envoy, expected, "Host {authority}, {path}");
        }
    }
    host.shutdown().await;
}

/// Over HTTP/2 a client may split `cookie` into several fields; Envoy joins them with "; "
/// (RFC 9113 8.2.3) before the filters and the upstream see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_fields_are_joined() {
    let config = serde_json::json!({
        "properties": ["request.headers.cookie"],
    });
    let requests = [Req {
        h2: true,
        ..request(
            "GET",
            "/cookies",
            vec![("cookie", "a=1"), ("cookie", "b=2")],
            "",
        )
    }];
    let obs = parity("cookies", config, &requests).await;
    assert_eq!(up_header(&obs[0].1, "cookie").as_deref(), Some("a=1; b=2"));
    assert_eq!(
        up_header(&obs[0].1, "x-prop-request-headers-cookie").as_deref(),
        Some("a=1; b=2")
    );
}

/// Request headers are limited as Envoy limits them (`max_request_headers_kb`, 60 KiB): over
/// HTTP/1.1 a 65 KB header is refused with 431 (it used to reach the upstream), and over
/// HTTP/2 a 20 KB one is accepted (it used to get 431, from hyper's 16 KiB default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_header_size_limit_is_envoys() {
    let (envoy, host, _dir) = both_plain().await;
    let addr = host.listener_addrs()[0];
    // (HTTP/2, header value size, status Envoy answers; 0: Envoy resets the stream)
    for (h2, size, expected) in [
        (false, 59_000usize, 200),
        (false, 65_000, 431),
        (true, 20_000, 200),
        (true, 59_000, 200),
        (true, 70_000, 0),
    ] {
        let mut statuses = Vec::new();
        for a in [envoy.listener, addr] {
            let value = "v".repeat(size);
            // A reset stream makes the helper panic; that is an answer too.
            let r = tokio::spawn(async move {
                let headers = [("x-big", value.as_str())];
                common::send(a, common::version(h2), "GET", "/big", &headers, "").await
            })
            .await;
            statuses.push(r.map(|r| r.status).unwrap_or(0));
        }
        let (from_envoy, from_host) = (statuses[0], statuses[1]);
        assert_eq!(from_envoy, expected, "Envoy, h2 {h2}, {size} bytes");
        if expected == 0 {
            assert!(
                matches!(from_host, 0 | 431),
                "h2 {h2}, {size} bytes: keyrealm-host answered {from_host}"
            );
        } else {
            assert_eq!(
                from_host, from_envoy,
                "h2 {h2}, {size} bytes: keyrealm-host (left) differs from Envoy (right)"
            );
        }
    }
    host.shutdown().await;
}

/// What a filter may get wrong, answered as Envoy answers it: a request header with an invalid
/// name or value is the router's 503 naming it (not a bare 400), a removed `:method` is 503
/// `missing required header: :method` (it went upstream as GET), a `:status` that is not a
/// number is 502 `missing required header: :status` (not 500 with the upstream's body), and a
/// local reply may use any three-digit status from 200 (600 was turned into 500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_filter_gets_wrong_is_answered_as_envoy_answers() {
    let cases = [
        (
            serde_json::json!({"request_headers": {"add": [["x-bad", "a\nb"]]}}),
            503,
            "invalid header value for: x-bad",
        ),
        (
            serde_json::json!({"request_headers": {"add": [["bad name", "v"]]}}),
            503,
            "invalid header name: bad name",
        ),
        (
            serde_json::json!({"request_headers": {"remove": [":method"]}}),
            503,
            "missing required header: :method",
        ),
        (
            serde_json::json!({"response_headers": {"replace": [[":status", "abc"]]}}),
            502,
            "missing required header: :status",
        ),
        (
            serde_json::json!({"local_reply": {"status": 600, "body": "six hundred"}}),
            600,
            "six hundred",
        ),
    ];
    for (config, status, body) in cases {
        let obs = parity("wrong", config.clone(), &[get("/wrong")]).await;
        assert_eq!(
            (obs[0].1.status, obs[0].1.client_body.as_str()),
            (status, body),
            "{config}"
        );
    }
}

/// Hop-by-hop request headers as Envoy treats them: headers named in `Connection` are removed
/// (also from what filters see), `TE: trailers` is kept, an `Upgrade: h2c` attempt is served as
/// a plain request, and any other upgrade is refused with 403 (no `upgrade_configs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_as_envoy() {
    let config = serde_json::json!({
        "properties": ["request.headers.x-foo", "request.headers.te", "request.headers.http2-settings"],
    });
    let req = |headers: Vec<(&'static str, &'static str)>| Req {
        h2: false,
        method: "GET",
        path: "/hop",
        headers,
        body: "",
    };
    let requests = [
        req(vec![
            ("connection", "x-foo"),
            ("x-foo", "1"),
            ("x-kept", "k"),
        ]),
        req(vec![("te", "trailers")]),
        req(vec![("te", "gzip")]),
        req(vec![
            ("upgrade", "h2c"),
            ("connection", "upgrade, http2-settings"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ]),
        req(vec![("connection", "upgrade"), ("upgrade", "websocket")]),
    ];
    let obs = parity("hop", config, &requests).await;
    assert_eq!(up_header(&obs[0].1, "x-foo"), None);
    assert_eq!(
        up_header(&obs[0].1, "x-prop-request-headers-x-foo").as_deref(),
        Some("<none>")
    );
    assert_eq!(up_header(&obs[0].1, "x-kept").as_deref(), Some("k"));
    assert_eq!(up_header(&obs[1].1, "te").as_deref(), Some("trailers"));
    assert_eq!(up_header(&obs[2].1, "te"), None);
    assert_eq!(obs[3].1.status, 200);
    assert_eq!(up_header(&obs[3].1, "http2-settings"), None);
    assert_eq!(obs[4].1.status, 403);
}

/// The `x-envoy-*` request headers Envoy's connection manager strips from an external request
/// (a client could otherwise set retries, timeouts or trace decisions) are removed before the
/// filters; the others pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_control_headers_from_clients_are_stripped() {
    let config = serde_json::json!({
        "properties": ["request.headers.x-envoy-retry-on", "request.headers.x-envoy-internal"],
    });
    let requests = [request(
        "GET",
        "/control",
        vec![
            ("x-envoy-internal", "true"),
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-retry-grpc-on", "cancelled"),
            ("x-envoy-max-retries", "3"),
            ("x-envoy-retriable-status-codes", "503"),
            ("x-envoy-retriable-header-names", "x-a"),
            ("x-envoy-upstream-alt-stat-name", "alt"),
            ("x-envoy-upstream-rq-timeout-ms", "1"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "1"),
            ("x-envoy-upstream-rq-timeout-alt-response", "204"),
            ("x-envoy-expected-rq-timeout-ms", "5"),
            ("x-envoy-force-trace", "1"),
            ("x-envoy-ip-tags", "t"),
            ("x-envoy-original-url", "http://a/b"),
            ("x-envoy-hedge-on-per-try-timeout", "true"),
            ("x-envoy-decorator-operation", "op"),
            ("x-envoy-original-path", "/o"),
        ],
        "",
    )];
    let obs = parity("control", config, &requests).await;
    let o = &obs[0].1;
    assert_eq!(o.status, 200);
    assert_eq!(up_header(o, "x-envoy-retry-on"), None);
    assert_eq!(
        up_header(o, "x-prop-request-headers-x-envoy-retry-on").as_deref(),
        Some("<none>")
    );
    assert_eq!(up_header(o, "x-envoy-internal"), None);
    assert_eq!(up_header(o, "x-envoy-upstream-rq-timeout-ms"), None);
    assert_eq!(
        up_header(o, "x-envoy-expected-rq-timeout-ms").as_deref(),
        Some("2000")
    );
    assert_eq!(up_header(o, "x-envoy-original-path").as_deref(), Some("/o"));
}

/// Behind a proxy that terminated TLS (`x-forwarded-proto: https`), Envoy's `:scheme` (and the
/// `request.scheme` property) is `https`, as the forwarded protocol says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheme_follows_x_forwarded_proto() {
    let config = serde_json::json!({"properties": ["request.scheme"]});
    let req = |xfp: &'static str| request("GET", "/scheme", vec![("x-forwarded-proto", xfp)], "");
    let obs = parity("scheme", config, &[req("https"), req("http")]).await;
    assert_eq!(
        up_header(&obs[0].1, "x-prop-request-scheme").as_deref(),
        Some("https")
    );
    assert_eq!(
        up_header(&obs[1].1, "x-prop-request-scheme").as_deref(),
        Some("http")
    );
}

/// An upstream that answers every request with `response` (raw HTTP/1.1 bytes) and closes.
async fn spawn_raw_upstream(response: &'static str) -> SocketAddr {
    common::spawn_fixed(response).await
}

/// Response headers from the upstream as Envoy passes them on: hop-by-hop ones dropped, its
/// own `x-envoy-upstream-service-time` replacing the upstream's (it was sent twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_response_headers_as_envoy() {
    let upstream = spawn_raw_upstream(
        "HTTP/1.1 200 OK\r\nconnection: close\r\nkeep-alive: timeout=5\r\nproxy-connection: x\r\n\
         x-envoy-upstream-service-time: 99999\r\nx-up: 1\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let yaml = common::envoy_yaml(upstream, &[], &[]);
    let (envoy, host, _dir) = common::start_both(&yaml).await;
    let addr = host.listener_addrs()[0];
    let seen = |r: &Reply| {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| !["date", "server", "connection"].contains(&k.as_str()))
            .map(|(k, v)| {
                let v = if k == "x-envoy-upstream-service-time" {
                    // A duration: only whether it is the upstream's matters.
                    (v == "99999").to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        h.sort();
        (r.status, h, r.body.clone())
    };
    let from_envoy = seen(&common::http(envoy.listener, "GET", "/", &[], "").await);
    let from_host = seen(&common::http(addr, "GET", "/", &[], "").await);
    assert_eq!(
        from_host, from_envoy,
        "keyrealm-host (left) differs from Envoy (right)"
    );
    let times: Vec<_> = from_envoy
        .1
        .iter()
        .filter(|(k, _)| k == "x-envoy-upstream-service-time")
        .collect();
    assert_eq!(times.len(), 1);
    assert_eq!(times[0].1, "false", "Envoy's own service time");
    host.shutdown().await;
}

/// One raw request; the status code and the body of the answer (5 s limit).
async fn raw_exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let body = text
            .find("\r\n\r\n")
            .map(|i| text[i + 4..].to_string())
            .unwrap_or_default();
        (status, body)
    })
    .await
    .expect("request timed out")
}

/// Odd HTTP/1 requests answered as Envoy answers them: HTTP/1.0 is 426 (no `accept_http_10`),
/// HTTP/1.1 without Host is 400, an absolute URI's authority is `:authority`, repeated Host
/// headers are one value joined with ",".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_http1_requests_as_envoy() {
    let (envoy, host, _dir) = both_plain().await;
    let addr = host.listener_addrs()[0];
    let cases = [
        ("GET /v10 HTTP/1.0\r\nHost: example.test\r\n\r\n", 426, None),
        ("GET /nohost HTTP/1.1\r\nConnection: close\r\n\r\n", 400, None),
        (
            "GET http://other.test/abs?q=1 HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
            200,
            Some("other.test"),
        ),
        (
            "GET /dup HTTP/1.1\r\nHost: example.test\r\nHost: other.test\r\nConnection: close\r\n\r\n",
            200,
            Some("example.test,other.test"),
        ),
    ];
    for (request, status, upstream_host) in cases {
        let (envoy_status, envoy_body) = raw_exchange(envoy.listener, request).await;
        let (host_status, host_body) = raw_exchange(addr, request).await;
        let line = request.lines().next().unwrap_or_default();
        assert_eq!(envoy_status, status, "Envoy, {line}");
        assert_eq!(
            host_status, envoy_status,
            "{line}: keyrealm-host differs from Envoy"
        );
        match upstream_host {
            Some(h) => {
                for body in [&envoy_body, &host_body] {
                    let echo: Value = serde_json::from_str(body).expect("echo JSON");
                    assert_eq!(
                        common::echoed_header(&echo, "host").as_deref(),
                        Some(h),
                        "{line}"
                    );
                }
            }
            None => assert_eq!(host_body, envoy_body, "{line}: body"),
        }
    }
    host.shutdown().await;
}

/// A filter that traps (the abi-test-filter panics on `x-trap`) is answered as Envoy answers
/// it: 503 with an empty body for the request it ends; then, with no failure policy (Envoy's
/// FAIL_CLOSED), every later request 503 too; with `failure_policy: FAIL_RELOAD`, requests are
/// served by a new instance again after the reload back-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_filter_is_answered_as_envoy_answers_it() {
    let wasm = common::abi_test_filter_wasm();
    for policy in ["", "FAIL_RELOAD"] {
        let upstream = common::spawn_echo().await;
        let spec = FilterSpec::abi_test("trapper", &wasm, r#"{"trap_when_header": "x-trap"}"#);
        let yaml = common::with_failure_policy(common::envoy_yaml(upstream, &[spec], &[]), policy);
        let (envoy, host, _dir) = common::start_both(&yaml).await;
        let both = |path: &'static str, trap: bool| {
            let headers: Vec<(&str, &str)> = if trap { vec![("x-trap", "1")] } else { vec![] };
            let (e, h) = (envoy.listener, host.listener_addrs()[0]);
            async move {
                let from_envoy = common::http(e, "GET", path, &headers, "").await;
                let from_host = common::http(h, "GET", path, &headers, "").await;
                let (e, h) = (observe(&from_envoy), observe(&from_host));
                assert_eq!(
                    h, e,
                    "{policy:?} {path}: keyrealm-host (left) differs from Envoy (right)"
                );
                h
            }
        };
        assert_eq!(both("/before", false).await.status, 200);
        let trapped = both("/trap", true).await;
        assert_eq!((trapped.status, trapped.client_body.as_str()), (503, ""));
        assert!(trapped.upstream.is_none());
        if policy.is_empty() {
            // FAIL_CLOSED: the filter stays failed.
            tokio::time::sleep(Duration::from_millis(1300)).await;
            assert_eq!(both("/after", false).await.status, 503);
        } else {
            // FAIL_RELOAD: each gateway answers 503 (empty body) until its new instance runs,
            // which both start once a jittered [1 s, 1.5 s) has passed since the last load
            // (Envoy 1.40's JitteredLowerBoundBackOffStrategy): both serve again within 2.5 s of
            // the trap (1.5 s at most after loads made before it, plus slack for a slow
            // machine), then the same answers.
            let trapped_at = std::time::Instant::now();
            for (name, addr) in [
                ("envoy", envoy.listener),
                ("keyrealm-host", host.listener_addrs()[0]),
            ] {
                loop {
                    let r = common::http(addr, "GET", "/reloading", &[], "").await;
                    if r.status == 200 {
                        break;
                    }
                    assert_eq!((r.status, r.body.as_str()), (503, ""), "{name}");
                    assert!(
                        trapped_at.elapsed() < Duration::from_millis(2500),
                        "{name}: no new instance within 2.5 s of the trap"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                eprintln!(
                    "{name}: served again {:?} after the trap",
                    trapped_at.elapsed()
                );
            }
            assert_eq!(both("/after", false).await.status, 200);
        }
        host.shutdown().await;
        drop(envoy);
    }
}
