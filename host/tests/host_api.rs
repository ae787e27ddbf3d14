//! The library API the end-to-end suite uses: `start` on port 0, `listener_addrs`,
//! `admin_addr` (`/ready`, `/stats/prometheus`), `shutdown`; configuration errors name the
//! field; the binary's `--mode validate`.

mod common;

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_port_zero_with_admin_ready_and_stats() {
    let upstream = common::spawn_echo().await;
    let yaml = common::envoy_yaml(upstream, &[], &[]);
    let (host, _dir) = common::start_host(&yaml, keyrealm_host::HostOptions::default()).await;
    let addr = host.listener_addrs()[0];
    assert_ne!(addr.port(), 0);
    let r = common::http(
        addr,
        "POST",
        "/some/path?x=1",
        &[("x-client", "1")],
        "payload",
    )
    .await;
    assert_eq!(r.status, 200);
    let echo = r.echoed().expect("reached the upstream");
    assert_eq!(echo["path"], "/some/path?x=1");
    assert_eq!(echo["body"], "payload");
    assert_eq!(
        common::echoed_header(&echo, "x-client").as_deref(),
        Some("1")
    );
    assert_eq!(
        common::echoed_header(&echo, "host").as_deref(),
        Some("example.test")
    );
    assert_eq!(
        common::echoed_header(&echo, "x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert!(common::echoed_header(&echo, "x-request-id").is_some_and(|id| id.len() == 36));

    let admin = host.admin_addr().expect("admin address");
    let ready = common::get(admin, "/ready").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "LIVE\n"));
    let stats = common::get(admin, "/stats/prometheus").await;
    assert_eq!(stats.status, 200);
    assert!(
        stats.body.contains("keyrealm_host_requests_total 1\n"),
        "{}",
        stats.body
    );
    assert_eq!(common::get(admin, "/nope").await.status, 404);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_answer_like_envoys_router() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let yaml = common::envoy_yaml(dead, &[], &[]);
    let (host, _dir) = common::start_host(&yaml, keyrealm_host::HostOptions::default()).await;
    let r = common::get(host.listener_addrs()[0], "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.body,
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    );
    let upstream = common::spawn_echo().await;
    let yaml = common::envoy_yaml(upstream, &[], &[]);
    let (slow_host, _dir2) = common::start_host(&yaml, keyrealm_host::HostOptions::default()).await;
    // The route timeout in the generated configuration is 2 s; /slow answers after 3 s.
    let r = common::get(slow_host.listener_addrs()[0], "/slow").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (504, "upstream request timeout")
    );
    host.shutdown().await;
    slow_host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_keep_alive_connections() {
    let upstream = common::spawn_echo().await;
    let yaml = common::envoy_yaml(upstream, &[], &[]);
    let (host, _dir) = common::start_host(&yaml, keyrealm_host::HostOptions::default()).await;
    let addr = host.listener_addrs()[0];
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let req = || {
        hyper::Request::builder()
            .uri("/")
            .header("host", "a")
            .body(Full::new(bytes::Bytes::new()))
            .expect("request")
    };
    let first = sender.send_request(req()).await.expect("first request");
    assert_eq!(first.status(), 200);
    let _ = first.into_body().collect().await;
    tokio::time::timeout(Duration::from_secs(5), host.shutdown())
        .await
        .expect("shutdown within 5 s");
    let ended = tokio::time::timeout(Duration::from_secs(2), conn).await;
    assert!(
        ended.is_ok(),
        "the keep-alive connection was closed by the shutdown"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_fields_are_rejected_with_their_path() {
    let upstream = common::spawn_echo().await;
    let yaml = common::envoy_yaml(upstream, &[], &[]).replace(
        "stat_prefix: ingress",
        "stat_prefix: ingress\n          use_remote_address: true",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, yaml).expect("write");
    let err = keyrealm_host::start(&path).await.err().expect("refused");
    assert_eq!(
        err.to_string(),
        "configuration: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.use_remote_address: unsupported field"
    );
    let missing = dir.path().join("missing.yaml");
    let err = keyrealm_host::start(&missing).await.err().expect("refused");
    assert!(err.to_string().contains("cannot read"), "{err}");
}

#[test]
fn the_binary_validates_a_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        common::envoy_yaml("127.0.0.1:9".parse().expect("addr"), &[], &[]),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyrealm-host"))
        .args(["--mode", "validate", "-c"])
        .arg(&good)
        .output()
        .expect("run keyrealm-host");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "static_resources: {listeners: [], secrets: []}").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyrealm-host"))
        .args(["--mode", "validate", "--config"])
        .arg(&bad)
        .output()
        .expect("run keyrealm-host");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("static_resources.secrets: unsupported field"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_host_stops_it() {
    let upstream = common::spawn_echo().await;
    let yaml = common::envoy_yaml(upstream, &[], &[]);
    let (host, _dir) = common::start_host(&yaml, keyrealm_host::HostOptions::default()).await;
    let addr = host.listener_addrs()[0];
    assert_eq!(common::get(addr, "/").await.status, 200);
    drop(host);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting 5 s after drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shared data is shared by the instances of all workers, and CAS keeps concurrent updates from
/// different workers from losing any: after a first request created the counter, 39 concurrent
/// requests on separate connections (which the 2 workers accept between them) each get a
/// distinct count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_data_cas_across_workers() {
    let upstream = common::spawn_echo().await;
    let wasm = common::abi_test_filter_wasm();
    let spec = common::FilterSpec::abi_test("counter", &wasm, r#"{"shared_counter": "hits"}"#);
    let yaml = common::envoy_yaml(upstream, &[spec], &[]);
    let options = keyrealm_host::HostOptions {
        workers: Some(2),
        ..Default::default()
    };
    let (host, _dir) = common::start_host(&yaml, options).await;
    let addr = host.listener_addrs()[0];
    // The first count creates the key, and a set without CAS is unconditional (Envoy's rule):
    // two workers creating it at once would both write 1. Create it first.
    let first = common::get(addr, "/count").await;
    let echo = first.echoed().expect("echo");
    assert_eq!(
        common::echoed_header(&echo, "x-shared-count").as_deref(),
        Some("1")
    );
    let mut tasks = Vec::new();
    for _ in 0..39 {
        tasks.push(tokio::spawn(
            async move { common::get(addr, "/count").await },
        ));
    }
    let mut counts = vec![1];
    for t in tasks {
        let r = t.await.expect("request task");
        assert_eq!(r.status, 200);
        let echo = r.echoed().expect("echo");
        let n: u32 = common::echoed_header(&echo, "x-shared-count")
            .and_then(|v| v.parse().ok())
            .expect("count");
        counts.push(n);
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=40).collect::<Vec<u32>>());
    host.shutdown().await;
}

/// Shutting down while a request is paused in a filter (waiting for an HTTP call) ends cleanly:
/// the client's connection closes, and `shutdown` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_request_paused_in_a_filter() {
    let upstream = common::spawn_echo().await;
    let wasm = common::abi_test_filter_wasm();
    let spec = common::FilterSpec::abi_test(
        "slowcall",
        &wasm,
        r#"{"http_call": {"cluster": "upstream", "path": "/slow", "timeout_ms": 5000}}"#,
    );
    let yaml = common::envoy_yaml(upstream, &[spec], &[]);
    let options = common::one_worker();
    let (host, _dir) = common::start_host(&yaml, options).await;
    let addr = host.listener_addrs()[0];
    let paused = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .uri("/p")
            .header("host", "a")
            .body(Full::new(bytes::Bytes::new()));
        sender
            .send_request(req.expect("request"))
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::time::timeout(Duration::from_secs(5), host.shutdown())
        .await
        .expect("shutdown returns");
    let outcome = tokio::time::timeout(Duration::from_secs(2), paused)
        .await
        .expect("client released");
    assert!(
        outcome.expect("task").is_err(),
        "the paused request was not answered, its connection closed"
    );
}

/// A filter that keeps a request paused past the pause limit (its HTTP call takes 3 s, the limit
/// is 300 ms) fails that request at the limit: 503, or, with `fail_open`, the request goes on
/// unfiltered. Either way the failed context still ends: its `on_log` and `on_done` run, as the
/// lifecycle record that the next request (which makes no call) carries upstream shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_paused_past_the_limit_fails_and_its_context_ends() {
    let upstream = common::spawn_echo().await;
    let wasm = common::abi_test_filter_wasm();
    let configuration = r#"{"http_call": {"cluster": "upstream", "path": "/slow", "timeout_ms": 5000, "when_header": "x-call"}, "record_lifecycle": true}"#;
    for fail_open in [false, true] {
        let spec = common::FilterSpec {
            fail_open,
            ..common::FilterSpec::abi_test("paused", &wasm, configuration)
        };
        let yaml = common::envoy_yaml(upstream, &[spec], &[]);
        let options = keyrealm_host::HostOptions {
            workers: Some(1),
            limits: keyrealm_host::VmLimits {
                pause_limit: Duration::from_millis(300),
                ..Default::default()
            },
            ..Default::default()
        };
        let (host, _dir) = common::start_host(&yaml, options).await;
        let addr = host.listener_addrs()[0];

        let started = std::time::Instant::now();
        let first = common::http(addr, "GET", "/first", &[("x-call", "1")], "").await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(2500),
            "answered after {took:?}, not at the 300 ms pause limit"
        );
        if fail_open {
            assert_eq!(first.status, 200, "fail_open passes the request on");
            assert!(first.echoed().is_some(), "and it reached the upstream");
        } else {
            assert_eq!(first.status, 503, "{}", first.body);
            assert!(first.echoed().is_none(), "nothing reached the upstream");
        }
        let second = common::get(addr, "/second").await;
        assert_eq!(second.status, 200, "{}", second.body);
        let echo = second
            .echoed()
            .expect("the second request reached the upstream");
        let record = common::echoed_header(&echo, "x-lifecycle").unwrap_or_default();
        let mut events: Vec<&str> = record.split(',').collect();
        events.sort_unstable();
        assert_eq!(
            events,
            ["done", "log"],
            "the first request's context ends (on_log, on_done) exactly once: {record:?}"
        );
        host.shutdown().await;
    }
}

/// `codec_type` decides what a listener speaks: `HTTP1` refuses an HTTP/2 client, `HTTP2` an
/// HTTP/1.1 one, `AUTO` (tested with Envoy in envoy_parity) takes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codec_type_http1_or_http2_only() {
    let upstream = common::spawn_echo().await;
    let auto = common::envoy_yaml(upstream, &[], &[]);
    for (codec, h2_works) in [("HTTP1", false), ("HTTP2", true)] {
        let yaml = auto.replace("codec_type: AUTO", &format!("codec_type: {codec}"));
        assert_ne!(yaml, auto);
        let (host, _dir) = common::start_host(&yaml, keyrealm_host::HostOptions::default()).await;
        let addr = host.listener_addrs()[0];
        let [h1, h2] = [false, true].map(|h2| {
            tokio::spawn(async move {
                common::send(addr, common::version(h2), "GET", "/", &[], "").await
            })
        });
        let (h1, h2) = (h1.await, h2.await);
        assert_eq!(h2.is_ok(), h2_works, "{codec}: HTTP/2 {h2:?}");
        assert_eq!(h1.is_ok(), !h2_works, "{codec}: HTTP/1.1 {h1:?}");
        for reply in [h1, h2].into_iter().flatten() {
            assert_eq!(reply.status, 200, "{codec}");
            assert!(reply.echoed().is_some(), "{codec}: reached the upstream");
        }
        host.shutdown().await;
    }
}

/// An upstream that counts its requests and answers 200 with `size` bytes (`/size/N`), else
/// `ok`.
async fn spawn_counting() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let addr = common::spawn_http1(move |req: hyper::Request<hyper::body::Incoming>| {
        let counter = counter.clone();
        async move {
            // Counts requests whose body arrived whole.
            let (parts, body) = req.into_parts();
            if body.collect().await.is_err() {
                return Err("request body broken off");
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let size = parts
                .uri
                .path()
                .strip_prefix("/size/")
                .and_then(|s| s.parse::<usize>().ok());
            // A sized body comes in 500-byte pieces, 100 ms apart.
            let body = match size {
                Some(n) => {
                    let (tx, body) = keyrealm_host::body::ProxyBody::channel();
                    tokio::spawn(async move {
                        let mut left = n;
                        while left > 0 {
                            let piece = left.min(500);
                            if !tx.send(bytes::Bytes::from(vec![b'x'; piece])).await {
                                return;
                            }
                            left -= piece;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    });
                    body
                }
                None => keyrealm_host::body::ProxyBody::full(bytes::Bytes::from_static(b"ok")),
            };
            let mut r = hyper::Response::new(body);
            if let Some(n) = size {
                r.headers_mut()
                    .insert(hyper::header::CONTENT_LENGTH, n.into());
            }
            Ok::<_, &str>(r)
        }
    })
    .await;
    (addr, hits)
}

/// Each cluster has its own round-robin position: with an HTTP call to the realm cluster before
/// every forward, a two-endpoint cluster still gets an even split of the forwards (one counter
/// per worker for all clusters pinned every forward to one endpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_endpoint_cluster_gets_an_even_split_while_calls_interleave() {
    use std::sync::atomic::Ordering;
    let (a, hits_a) = spawn_counting().await;
    let (b, hits_b) = spawn_counting().await;
    let (realm, realm_hits) = spawn_counting().await;
    let wasm = common::abi_test_filter_wasm();
    let spec = common::FilterSpec::abi_test(
        "caller",
        &wasm,
        r#"{"http_call": {"cluster": "realm", "path": "/realm"}}"#,
    );
    let one = format!(
        "        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n",
        a.port()
    );
    let two = format!(
        "{one}        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n",
        b.port()
    );
    let yaml = common::envoy_yaml(a, &[spec], &[("realm", realm)]).replacen(&one, &two, 1);
    let (host, _dir) = common::start_host(&yaml, common::one_worker()).await;
    let addr = host.listener_addrs()[0];
    for i in 0..20 {
        let r = common::http(addr, "GET", "/x", &[], "").await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    assert_eq!(
        realm_hits.load(Ordering::SeqCst),
        20,
        "every request made its call"
    );
    let (na, nb) = (hits_a.load(Ordering::SeqCst), hits_b.load(Ordering::SeqCst));
    assert_eq!((na, nb), (10, 10), "forwards split evenly");
    host.shutdown().await;
}

/// GETs `path` over HTTP/1.1; the status, and whether the (chunked) body ended properly.
async fn get_raw(addr: std::net::SocketAddr, path: &str) -> (u16, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text.ends_with("0\r\n\r\n"))
}

/// POSTs `pieces` pieces of `piece` bytes to `/in`, 100 ms apart; the answer's status.
async fn post_in_pieces(addr: std::net::SocketAddr, pieces: usize, piece: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /in HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        pieces * piece
    );
    s.write_all(head.as_bytes()).await.expect("write");
    for _ in 0..pieces {
        // The host may answer (413) before all of it was sent.
        if s.write_all(&vec![b'y'; piece]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// The body limits apply to what a filter buffers: a request body it buffers past
/// `request_body_bytes`, or past what the process may buffer, is answered 413 and never reaches
/// the upstream whole; a response body it buffers past `response_body_bytes` after the head
/// went out resets the stream; smaller ones pass. Without a filter that buffers, the same
/// bodies stream through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limits_get_413_or_503() {
    use std::sync::atomic::Ordering;
    let (up, hits) = spawn_counting().await;
    // The filter buffers both bodies whole (it edits them at their end).
    let wasm = common::abi_test_filter_wasm();
    let spec = common::FilterSpec::abi_test(
        "buffering",
        &wasm,
        r#"{"request_body": {"suffix": ""}, "response_body": {"suffix": ""}}"#,
    );
    let buffering = common::envoy_yaml(up, &[spec], &[]);
    let streaming = common::envoy_yaml(up, &[], &[]);
    for (limits, name) in [
        (
            keyrealm_host::Limits {
                request_body_bytes: 1000,
                response_body_bytes: 1000,
                ..Default::default()
            },
            "per message",
        ),
        (
            keyrealm_host::Limits {
                process_body_bytes: 900,
                ..Default::default()
            },
            "per process",
        ),
    ] {
        let (host, _dir) = common::start_host(
            &buffering,
            keyrealm_host::HostOptions {
                limits,
                ..common::one_worker()
            },
        )
        .await;
        let addr = host.listener_addrs()[0];
        let before = hits.load(Ordering::SeqCst);
        let status = post_in_pieces(addr, 3, 500).await;
        assert_eq!(status, 413, "{name}");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            before,
            "{name}: no whole body reached the upstream"
        );
        let r = common::http(addr, "POST", "/in", &[], "small").await;
        assert_eq!(r.status, 200, "{name}: {r:?}");
        // The filter passed the response headers at once (as Envoy, which resets the stream
        // when the buffer overflows after that): the client gets the head, then a reset.
        let (status, complete) = get_raw(addr, "/size/1500").await;
        assert_eq!((status, complete), (200, false), "{name}");
        let r = common::get(addr, "/size/500").await;
        assert_eq!((r.status, r.body.len()), (200, 500), "{name}");
        let stats = common::get(host.admin_addr().expect("admin"), "/stats/prometheus")
            .await
            .body;
        assert!(
            stats.contains("keyrealm_host_body_limit_rejections_total 2"),
            "{stats}"
        );
        host.shutdown().await;

        // Without a filter that buffers, bodies stream: the limits do not apply to them.
        let (host, _dir) = common::start_host(
            &streaming,
            keyrealm_host::HostOptions {
                limits,
                ..common::one_worker()
            },
        )
        .await;
        let addr = host.listener_addrs()[0];
        assert_eq!(post_in_pieces(addr, 3, 500).await, 200, "{name}");
        let r = common::get(addr, "/size/1500").await;
        assert_eq!((r.status, r.body.len()), (200, 1500), "{name}");
        host.shutdown().await;
    }
}

/// An upstream that closes each connection right after its answer, without saying so
/// (`Connection: close` missing): the pooled connection the host kept is stale by the next
/// request, which must still get 200 (a fresh connection, or one retry on one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pooled_connection_is_retried_on_a_fresh_one() {
    // Closed with no warning after each answer.
    let up = common::spawn_fixed("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let yaml = common::envoy_yaml(up, &[], &[]);
    let (host, _dir) = common::start_host(&yaml, common::one_worker()).await;
    let addr = host.listener_addrs()[0];
    for i in 0..20 {
        let r = common::get(addr, "/again").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "request {i}");
        if i % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    host.shutdown().await;
}
