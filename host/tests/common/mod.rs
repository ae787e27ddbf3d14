//! Test helpers shared by the host's integration tests: an echo upstream, a small HTTP client,
//! configuration writers, and a real-Envoy runner.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// What a test sees of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The echo upstream's view of the request (`None` if the reply is not from the echo).
    pub fn echoed(&self) -> Option<serde_json::Value> {
        self.header("x-echo-upstream")?;
        serde_json::from_str(&self.body).ok()
    }
}

/// The echo's JSON: the value of a request header the upstream received.
pub fn echoed_header(echo: &serde_json::Value, name: &str) -> Option<String> {
    echo["headers"].as_array()?.iter().find_map(|pair| {
        let k = pair[0].as_str()?;
        (k.eq_ignore_ascii_case(name)).then(|| pair[1].as_str().unwrap_or_default().to_string())
    })
}

/// An HTTP/1.1 server on 127.0.0.1:0 that answers every request with `handler`.
pub async fn spawn_http1<F, Fut, B, E>(handler: F) -> SocketAddr
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<hyper::Response<B>, E>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let handler = std::sync::Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handler(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A response with `status` (200 if it is not one), `body` and `headers`.
pub fn response(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: impl Into<Bytes>,
) -> hyper::Response<Full<Bytes>> {
    let mut resp = hyper::Response::new(Full::new(body.into()));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    for (k, v) in headers {
        resp.headers_mut()
            .insert(*k, hyper::header::HeaderValue::from_static(v));
    }
    resp
}

/// An upstream that answers 200 with a JSON echo of the request (method, path, headers, body)
/// and `x-echo-upstream: 1`. `/status/NNN` answers NNN; `/slow` waits 3 s; `/fixed` answers
/// `fixed-200` and `/fixed-status/NNN` answers NNN with `fixed-NNN` (no echo).
pub async fn spawn_echo() -> SocketAddr {
    spawn_http1(|req: hyper::Request<hyper::body::Incoming>| async move {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        if path == "/slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        // Fixed answers (the same bytes whoever asks), for HTTP call tests.
        if let Some(rest) = path.strip_prefix("/fixed") {
            let status = rest
                .strip_prefix("-status/")
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(200);
            return Ok::<_, std::convert::Infallible>(response(
                status,
                &[("x-fixed", "1")],
                format!("fixed-{status}"),
            ));
        }
        let status = path
            .strip_prefix("/status/")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(200);
        let json = serde_json::json!({
            "method": parts.method.as_str(),
            "path": path,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        Ok(response(
            status,
            &[
                ("x-echo-upstream", "1"),
                ("content-type", "application/json"),
            ],
            json.to_string(),
        ))
    })
    .await
}

/// One HTTP/1.1 request on a fresh connection, with a 10 s limit.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    send(addr, hyper::Version::HTTP_11, method, path, headers, body).await
}

/// The HTTP version of a request: HTTP/2 (cleartext, prior knowledge) if `h2`, else HTTP/1.1.
pub fn version(h2: bool) -> hyper::Version {
    if h2 {
        hyper::Version::HTTP_2
    } else {
        hyper::Version::HTTP_11
    }
}

/// One request in `version` (HTTP/1.1, or HTTP/2 cleartext with prior knowledge) on a fresh
/// connection, with a 10 s limit.
pub async fn send(
    addr: SocketAddr,
    version: hyper::Version,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    tokio::time::timeout(Duration::from_secs(10), async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let io = TokioIo::new(stream);
        let mut builder = hyper::Request::builder().method(method);
        builder = if version == hyper::Version::HTTP_2 {
            // HTTP/2 carries the authority in the URI (`:authority`), not in a host header.
            builder.uri(format!("http://example.test{path}"))
        } else {
            builder.uri(path).header("host", "example.test")
        };
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let resp = if version == hyper::Version::HTTP_2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            sender.send_request(req).await.expect("send")
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("handshake");
            tokio::spawn(conn);
            sender.send_request(req).await.expect("send")
        };
        assert_eq!(resp.version(), version, "answered in the version asked");
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    })
    .await
    .expect("request timed out")
}

/// A GET that returns the raw status and body (for admin endpoints).
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, &[], "").await
}

/// The abi-test-filter module (see [`wasm_module`]).
pub fn abi_test_filter_wasm() -> PathBuf {
    wasm_module("abi_test_filter")
}

/// The keyrealm key-auth filter module, stripped of the hooks it does not implement as
/// `scripts/build-wasm.sh` leaves it (see [`wasm_module`]).
pub fn keyrealm_filter_wasm() -> PathBuf {
    wasm_module("keyrealm_filter")
}

/// A wasm32-wasip1 module of this workspace, built by the test itself with
/// `scripts/build-wasm.sh` (cargo makes that a no-op when it is up to date; the strip step runs
/// every time), so a test never runs a stale or unstripped module. It goes into a separate target
/// directory, as the outer cargo holds the lock of the main one.
pub fn wasm_module(file: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let own = BUILT.get_or_init(|| {
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join("target"));
        let target = if target.is_absolute() {
            target
        } else {
            repo_root().join(target)
        };
        let own = target.join("host-tests-wasm");
        let status = std::process::Command::new(repo_root().join("scripts/build-wasm.sh"))
            .env("CARGO_TARGET_DIR", &own)
            .current_dir(repo_root())
            .status()
            .expect("run scripts/build-wasm.sh");
        assert!(status.success(), "scripts/build-wasm.sh failed");
        own
    });
    own.join(format!("wasm32-wasip1/release/{file}.wasm"))
}

/// The repository root (two levels above this crate's manifest... one level: host/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// One wasm filter entry for [`envoy_yaml`].
pub struct FilterSpec<'a> {
    pub name: &'a str,
    pub root_id: &'a str,
    pub wasm: &'a Path,
    pub configuration: &'a str,
    pub fail_open: bool,
    pub env: &'a [(&'a str, &'a str)],
    /// `allow_on_headers_stop_iteration`
    pub allow_stop_iteration: bool,
}

impl<'a> FilterSpec<'a> {
    /// A filter that fails closed, with no environment and no `allow_on_headers_stop_iteration`.
    pub fn new(name: &'a str, root_id: &'a str, wasm: &'a Path, configuration: &'a str) -> Self {
        FilterSpec {
            name,
            root_id,
            wasm,
            configuration,
            fail_open: false,
            env: &[],
            allow_stop_iteration: false,
        }
    }

    /// [`FilterSpec::new`] for the abi-test-filter (root id `abi_test`), `wasm` being
    /// [`abi_test_filter_wasm`].
    pub fn abi_test(name: &'a str, wasm: &'a Path, configuration: &'a str) -> Self {
        Self::new(name, "abi_test", wasm, configuration)
    }
}

/// `yaml` (from [`envoy_yaml`]) with `failure_policy: POLICY` on its wasm filters that fail
/// closed; unchanged if `policy` is empty.
pub fn with_failure_policy(yaml: String, policy: &str) -> String {
    if policy.is_empty() {
        return yaml;
    }
    yaml.replace(
        "fail_open: false\n",
        &format!("fail_open: false\n                failure_policy: {policy}\n"),
    )
}

fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

/// An envoy.yaml with one listener on 127.0.0.1:0, the admin on 127.0.0.1:0, the given wasm
/// filters, a route `/` to cluster `upstream`, and extra clusters (name, address).
pub fn envoy_yaml(
    upstream: SocketAddr,
    filters: &[FilterSpec],
    extra_clusters: &[(&str, SocketAddr)],
) -> String {
    let mut http_filters = String::new();
    for f in filters {
        let mut env = String::new();
        if !f.env.is_empty() {
            env.push_str(
                "                  environment_variables:\n                    key_values:\n",
            );
            for (k, v) in f.env {
                env.push_str(&format!("                      {k}: {}\n", yaml_string(v)));
            }
        }
        http_filters.push_str(&format!(
            r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {root}
                fail_open: {fail_open}
                allow_on_headers_stop_iteration: {allow}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {config}
                vm_config:
                  vm_id: {name}
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {path}}}}}
{env}"#,
            name = f.name,
            root = f.root_id,
            fail_open = f.fail_open,
            allow = f.allow_stop_iteration,
            config = yaml_string(f.configuration),
            path = yaml_string(&f.wasm.display().to_string()),
        ));
    }
    let mut clusters = cluster_yaml("upstream", upstream);
    for (name, addr) in extra_clusters {
        clusters.push_str(&cluster_yaml(name, *addr));
    }
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream, timeout: 2s}}
          http_filters:
{http_filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}"#
    )
}

fn cluster_yaml(name: &str, addr: SocketAddr) -> String {
    format!(
        r#"  - name: {name}
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}
"#,
        ip = addr.ip(),
        port = addr.port()
    )
}

/// A running real Envoy (killed on drop).
pub struct Envoy {
    child: std::process::Child,
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// The Envoy process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for Envoy to exit; its exit status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        wait_exit(&mut self.child, limit)
    }
}

/// Waits up to `limit` for `child` to exit; its exit status if it did.
pub fn wait_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Envoy binary: `ENVOY_BIN`, which must be set (a missing Envoy is a failure).
pub fn envoy_bin() -> PathBuf {
    let bin = std::env::var("ENVOY_BIN")
        .expect("ENVOY_BIN must point at the envoy binary (scripts/install-envoy.sh)");
    let path = PathBuf::from(bin);
    assert!(path.exists(), "ENVOY_BIN={} does not exist", path.display());
    path
}

/// Starts real Envoy on `yaml` with one worker and waits until its listener is up.
pub async fn start_envoy(yaml: &str, env: &[(&str, &str)]) -> Envoy {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, yaml).expect("write envoy.yaml");
    let admin_file = dir.path().join("admin.txt");
    let log = std::fs::File::create(dir.path().join("envoy.log")).expect("log file");
    let mut cmd = std::process::Command::new(envoy_bin());
    cmd.arg("-c")
        .arg(&config)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warning",
        ])
        .arg("--admin-address-path")
        .arg(&admin_file)
        .stdout(std::process::Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn envoy");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let admin: SocketAddr = loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default();
            panic!("envoy exited with {status}: {log}");
        }
        if let Ok(text) = std::fs::read_to_string(&admin_file) {
            if let Ok(addr) = text.trim().parse() {
                break addr;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "envoy did not start in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let listener = loop {
        let r = get(admin, "/listeners?format=json").await;
        let json: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let port =
            json["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64();
        let ready = get(admin, "/ready").await.status == 200;
        if let (Some(port), true) = (port, ready) {
            break SocketAddr::from(([127, 0, 0, 1], port as u16));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "envoy listener not ready in 30 s: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Envoy {
        child,
        listener,
        admin,
        _dir: dir,
    }
}

/// Starts keyrealm-host on `yaml` in-process.
pub async fn start_host(
    yaml: &str,
    options: keyrealm_host::HostOptions,
) -> (keyrealm_host::RunningHost, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, yaml).expect("write envoy.yaml");
    let host = keyrealm_host::start_with_options(&config, options)
        .await
        .expect("host starts");
    (host, dir)
}

/// Options with one worker (the rest default), as Envoy runs with `--concurrency 1`.
pub fn one_worker() -> keyrealm_host::HostOptions {
    keyrealm_host::HostOptions {
        workers: Some(1),
        ..Default::default()
    }
}

/// Real Envoy and keyrealm-host (in-process, one worker) on the same `yaml`.
pub async fn start_both(yaml: &str) -> (Envoy, keyrealm_host::RunningHost, tempfile::TempDir) {
    let envoy = start_envoy(yaml, &[]).await;
    let (host, dir) = start_host(yaml, one_worker()).await;
    (envoy, host, dir)
}

/// A keyrealm-host process (killed on drop).
pub struct HostProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HostProcess {
    /// Peak resident memory, from `/proc/<pid>/status`.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        kib << 10
    }
}

/// Starts the keyrealm-host binary (of this package's test build) on `yaml` with `args`;
/// waits until it listens. Its log is drained (and dropped); use `--log-path` to keep it.
pub fn start_process(yaml: &str, args: &[&str]) -> HostProcess {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, yaml).expect("write envoy.yaml");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyrealm-host"))
        .arg("-c")
        .arg(&config)
        .args(["--concurrency", "1"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn keyrealm-host");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the log for the bound addresses, then keeps draining it (a guest may log a lot).
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { return };
            for (key, kind) in [("listening on ", "listener"), ("admin on ", "admin")] {
                if let Some(rest) = line.split(key).nth(1) {
                    if let Ok(addr) = rest.trim().parse::<SocketAddr>() {
                        let _ = tx.send((kind, addr));
                    }
                }
            }
        }
    });
    let (mut addr, mut admin) = (None, None);
    while addr.is_none() || admin.is_none() {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(("listener", a)) => addr = Some(a),
            Ok((_, a)) => admin = Some(a),
            Err(e) => panic!("keyrealm-host did not start: {e}"),
        }
    }
    HostProcess {
        child,
        addr: addr.expect("listener"),
        admin: admin.expect("admin"),
        dir,
    }
}

/// What a scripted upstream sends for a request path: a response head, then body pieces, each
/// after its pause.
pub type Script = std::sync::Arc<dyn Fn(&str) -> (String, Vec<(Duration, Vec<u8>)>) + Send + Sync>;

/// A raw upstream that reads each request's head and answers it with `script(path)`, then
/// closes the connection.
pub async fn spawn_scripted(script: Script) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let script = script.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let path = text.split(' ').nth(1).unwrap_or("/").to_string();
                let (response_head, pieces) = script(&path);
                if s.write_all(response_head.as_bytes()).await.is_err() {
                    return;
                }
                for (pause, piece) in pieces {
                    tokio::time::sleep(pause).await;
                    if s.write_all(&piece).await.is_err() {
                        return;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A raw upstream that answers every request with `response` (head and body) and closes.
pub async fn spawn_fixed(response: &'static str) -> SocketAddr {
    spawn_scripted(std::sync::Arc::new(move |_| {
        (response.to_string(), Vec::new())
    }))
    .await
}
