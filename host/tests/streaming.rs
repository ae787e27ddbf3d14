//! Streaming bodies, in real Envoy (`ENVOY_BIN`) and in keyrealm-host with the same
//! envoy.yaml and a wasm filter in the chain: server-sent events reach the client one by one
//! (each when the upstream sends it, not at the end), a slow upstream body streams through — and
//! is delivered whole, edited, when the filter asks for the whole body — and a 200 MiB download
//! passes keyrealm-host with its memory bounded.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A script for [`common::spawn_scripted`].
type Script = fn(&str) -> (String, Vec<(Duration, Vec<u8>)>);

async fn spawn_scripted(script: Script) -> SocketAddr {
    common::spawn_scripted(std::sync::Arc::new(script)).await
}

/// A chunk of a chunked body.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut c = format!("{:x}\r\n", data.len()).into_bytes();
    c.extend_from_slice(data);
    c.extend_from_slice(b"\r\n");
    c
}

const EVENTS: usize = 5;
const EVENT_GAP: Duration = Duration::from_millis(400);

/// Server-sent events: one every `EVENT_GAP`, chunked.
fn sse(_path: &str) -> (String, Vec<(Duration, Vec<u8>)>) {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_string();
    let mut pieces: Vec<(Duration, Vec<u8>)> = (0..EVENTS)
        .map(|i| (EVENT_GAP, chunk(format!("data: event {i}\n\n").as_bytes())))
        .collect();
    pieces.push((Duration::ZERO, b"0\r\n\r\n".to_vec()));
    (head, pieces)
}

/// A body of three pieces, 400 ms apart, with a content-length.
fn slow_body(_path: &str) -> (String, Vec<(Duration, Vec<u8>)>) {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 15\r\nconnection: close\r\n\r\n".to_string();
    let pieces = ["part1", "part2", "part3"]
        .iter()
        .map(|p| (Duration::from_millis(400), p.as_bytes().to_vec()))
        .collect();
    (head, pieces)
}

/// Reads `s` to its end, handing each piece to `piece` as it arrives; a read that waits longer
/// than `stall` fails the test.
async fn read_to_end(s: &mut tokio::net::TcpStream, stall: Duration, mut piece: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = tokio::time::timeout(stall, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the answer stalled for {stall:?}"))
            .expect("read");
        if n == 0 {
            return;
        }
        piece(&buf[..n]);
    }
}

/// GETs `path` over raw HTTP/1.1 and returns the status and when each of `markers` first
/// showed in what arrived (since the request was sent), and all that arrived.
async fn get_timed(
    addr: SocketAddr,
    path: &str,
    markers: &[String],
) -> (u16, Vec<Duration>, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n");
    let started = Instant::now();
    s.write_all(request.as_bytes()).await.expect("write");
    let mut seen = vec![None; markers.len()];
    let mut text = String::new();
    read_to_end(&mut s, Duration::from_secs(10), |piece| {
        text.push_str(&String::from_utf8_lossy(piece));
        for (i, m) in markers.iter().enumerate() {
            if seen[i].is_none() && text.contains(m.as_str()) {
                seen[i] = Some(started.elapsed());
            }
        }
    })
    .await;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let times = seen
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| panic!("{} never arrived: {text:?}", markers[i])))
        .collect();
    (status, times, text)
}

/// Envoy and keyrealm-host on the same envoy.yaml (route timeout 10 s) with the abi-test-filter
/// configured by `config`, in front of `upstream`.
async fn both(
    upstream: SocketAddr,
    config: &str,
) -> (common::Envoy, keyrealm_host::RunningHost, tempfile::TempDir) {
    let wasm = common::abi_test_filter_wasm();
    let spec = common::FilterSpec::abi_test("streamed", &wasm, config);
    let yaml = common::envoy_yaml(upstream, &[spec], &[]).replace("timeout: 2s", "timeout: 10s");
    common::start_both(&yaml).await
}

/// The body of a chunked HTTP/1.1 answer, de-chunked.
fn dechunk(text: &str) -> String {
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// The body of an HTTP/1.1 answer: de-chunked if it is chunked.
fn body_of(text: &str) -> String {
    if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(text)
    } else {
        text.rsplit("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// GETs `path` through Envoy and through keyrealm-host ([`both`], with `config`), timing when
/// each of `markers` arrives: each answers 200, `check(gateway, times, answer)` asserts on each,
/// and what it returns must be the same from both.
async fn timed_in_both<T: PartialEq + std::fmt::Debug>(
    upstream: SocketAddr,
    config: &str,
    path: &str,
    markers: &[String],
    check: impl Fn(&str, &[Duration], &str) -> T,
) {
    let (envoy, host, _dir) = both(upstream, config).await;
    let mut observed = Vec::new();
    for (name, addr) in [
        ("envoy", envoy.listener),
        ("keyrealm-host", host.listener_addrs()[0]),
    ] {
        let (status, times, text) = get_timed(addr, path, markers).await;
        assert_eq!(status, 200, "{name}: {text}");
        observed.push(check(name, &times, &text));
    }
    assert_eq!(observed[0], observed[1], "keyrealm-host differs from Envoy");
    host.shutdown().await;
    drop(envoy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_one_by_one_in_both() {
    let upstream = spawn_scripted(sse).await;
    let config = r#"{"response_headers": {"add": [["x-filtered", "yes"]]}}"#;
    let markers: Vec<String> = (0..EVENTS).map(|i| format!("data: event {i}")).collect();
    timed_in_both(
        upstream,
        config,
        "/events",
        &markers,
        |name, times, text| {
            assert!(
                text.to_ascii_lowercase().contains("x-filtered: yes"),
                "{name}: {text}"
            );
            let body = dechunk(text);
            let expected: String = (0..EVENTS)
                .map(|i| format!("data: event {i}\n\n"))
                .collect();
            assert_eq!(body, expected, "{name}");
            // Each event arrives when it is sent, not with the last one: consecutive events at
            // least half the upstream's gap apart, and the first one long before the last.
            for pair in times.windows(2) {
                assert!(
                    pair[1] - pair[0] >= EVENT_GAP / 2,
                    "{name}: events held back and released together: {times:?}"
                );
            }
            assert!(
                times[EVENTS - 1] - times[0] >= EVENT_GAP * (EVENTS as u32 - 1) / 2,
                "{name}: {times:?}"
            );
            eprintln!("{name}: events arrived at {times:?}");
            body
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_body_streams_unless_the_filter_wants_it_whole() {
    let upstream = spawn_scripted(slow_body).await;
    let markers: Vec<String> = ["part1", "part3"].iter().map(|s| s.to_string()).collect();
    // A filter that does not touch the body: the first piece arrives before the last is sent.
    timed_in_both(upstream, "{}", "/slow", &markers, |name, times, text| {
        assert!(text.ends_with("part1part2part3"), "{name}: {text}");
        assert!(
            times[1] - times[0] >= Duration::from_millis(500),
            "{name}: the first piece waited for the last: {times:?}"
        );
        text.rsplit("\r\n\r\n").next().map(str::to_string)
    })
    .await;

    // A filter that edits the whole body (it pauses each chunk until the last): Envoy's
    // buffering — the client gets the edited body in one go, at the end.
    let config = r#"{"response_body": {"suffix": "!"}}"#;
    timed_in_both(upstream, config, "/slow", &markers, |name, times, text| {
        let body = body_of(text);
        assert_eq!(body, "part1part2part3!", "{name}: {text}");
        assert!(
            times[1] - times[0] < Duration::from_millis(100),
            "{name}: the body should come whole: {times:?}"
        );
        body
    })
    .await;
}

const DOWNLOAD: usize = 200 << 20;
/// keyrealm-host's peak RSS while it passes the 200 MiB download (a buffered body alone would
/// take 200 MiB).
const DOWNLOAD_RSS_BOUND: u64 = 80 << 20;

/// 200 MiB in 64 KiB pieces, with a content-length.
fn big_download(_path: &str) -> (String, Vec<(Duration, Vec<u8>)>) {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {DOWNLOAD}\r\nconnection: close\r\n\r\n"
    );
    let piece = vec![b'z'; 64 << 10];
    let pieces = (0..DOWNLOAD / piece.len())
        .map(|_| (Duration::ZERO, piece.clone()))
        .collect();
    (head, pieces)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_download_passes_with_bounded_memory() {
    let upstream = spawn_scripted(big_download).await;
    let wasm = common::abi_test_filter_wasm();
    let spec = common::FilterSpec::abi_test(
        "streamed",
        &wasm,
        r#"{"response_headers": {"add": [["x-filtered", "yes"]]}}"#,
    );
    let yaml = common::envoy_yaml(upstream, &[spec], &[]).replace("timeout: 2s", "timeout: 120s");
    let host = common::start_process(&yaml, &[]);
    let before = host.peak_rss();
    let mut s = tokio::net::TcpStream::connect(host.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut total = 0usize;
    let mut head = Vec::new();
    let mut head_done = false;
    read_to_end(&mut s, Duration::from_secs(30), |piece| {
        if head_done {
            total += piece.len();
            return;
        }
        head.extend_from_slice(piece);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            total = head.len() - at - 4;
            head.truncate(at);
            head_done = true;
        }
    })
    .await;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-filtered: yes"), "{head}");
    assert_eq!(total, DOWNLOAD, "the whole body arrived");
    let peak = host.peak_rss();
    eprintln!(
        "keyrealm-host peak RSS: {} MiB before, {} MiB after the download",
        before >> 20,
        peak >> 20
    );
    assert!(
        peak < DOWNLOAD_RSS_BOUND,
        "peak RSS {} MiB is over {} MiB",
        peak >> 20,
        DOWNLOAD_RSS_BOUND >> 20
    );
}
