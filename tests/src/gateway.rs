//! The gateway under test, behind one small abstraction so that the same scenarios run against
//! every gateway that can host the filter.
//!
//! A scenario describes what it needs as a [`GatewaySpec`] (one listener per filter
//! configuration, the upstream, the realm clusters, the process environment) and starts it with
//! [`GatewayKind::start`]. The spec is rendered to one Envoy configuration file
//! ([`render_config`]); every gateway kind is started from that same file.
//!
//! There are three kinds, and [`gateway_test!`](crate::gateway_test) runs every scenario on each:
//!
//! - [`GatewayKind::Envoy`]: the real Envoy binary named by `ENVOY_BIN`, started as a child
//!   process with `--concurrency 1` (or [`GatewaySpec::workers`]), on free ports picked before it
//!   starts, with the wasm filter;
//! - [`GatewayKind::EnvoyNative`]: the same Envoy with the filter as the native dynamic module
//!   (`libkeyrealm_native.so`, [`native_module_dir`], found through
//!   `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`) instead of the wasm filter;
//! - [`GatewayKind::Host`]: keyrealm-host, started in-process with
//!   [`keyrealm_host::start_with_options`] and one worker (to match Envoy's `--concurrency 1`,
//!   so that per-worker state such as the filter's cache is the same), from the same rendered
//!   file with port 0 for the listeners and the admin address, its own environment
//!   ([`GatewaySpec::env`]) and its own log file, so that parallel tests do not mix and the
//!   scenarios' log-line assertions read the same kind of file for both gateways.

use std::fmt;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

/// How long a gateway may take to become ready (V8 compiles the module; 2 shared cores).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a gateway with a bad configuration may take to give up.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Envoy's count of listener updates taken from the listeners file.
const LDS_UPDATES: &str = "listener_manager.lds.update_success";
/// Envoy's gauge of listeners not yet serving (an update is in progress while it is above 0).
const LISTENERS_WARMING: &str = "listener_manager.total_listeners_warming";

/// A gateway implementation the scenarios can run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayKind {
    /// Real Envoy (`ENVOY_BIN`) with the filter loaded in V8.
    Envoy,
    /// Real Envoy with the filter as the native dynamic module (`keyrealm-native`).
    EnvoyNative,
    /// keyrealm-host, in-process, one worker.
    Host,
}

impl GatewayKind {
    /// Starts a gateway serving `spec`; waits until it is ready.
    pub async fn start(self, spec: &GatewaySpec) -> anyhow::Result<Gateway> {
        let started = Instant::now();
        let gateway = match self {
            GatewayKind::Envoy | GatewayKind::EnvoyNative => start_envoy(self, spec).await,
            GatewayKind::Host => start_host(spec).await,
        }?;
        eprintln!("{self} ready in {:?}", started.elapsed());
        Ok(gateway)
    }

    /// Starts a gateway with `spec`, which is expected to be refused; returns what it logged.
    pub async fn start_expecting_refusal(self, spec: &GatewaySpec) -> anyhow::Result<Refusal> {
        match self {
            GatewayKind::Envoy | GatewayKind::EnvoyNative => {
                start_envoy_expecting_refusal(self, spec).await
            }
            GatewayKind::Host => start_host_expecting_refusal(spec).await,
        }
    }
}

impl fmt::Display for GatewayKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayKind::Envoy => f.write_str("envoy"),
            GatewayKind::EnvoyNative => f.write_str("envoy-native"),
            GatewayKind::Host => f.write_str("host"),
        }
    }
}

/// What a scenario needs from the gateway.
#[derive(Clone, Debug, Default)]
pub struct GatewaySpec {
    /// One listener per entry, in order; each runs the keyrealm filter with this configuration
    /// (`None`: a listener without the filter).
    pub listeners: Vec<Option<Value>>,
    /// Where the `upstream` cluster points.
    pub upstream: Option<SocketAddr>,
    /// Extra clusters (name, address) the filter calls, e.g. `("realm_us", addr)`; a name given
    /// several times is one cluster over all its addresses (replicas).
    pub clusters: Vec<(String, SocketAddr)>,
    /// Environment of the gateway process (e.g. `KEYREALM_DP_TOKEN`).
    pub env: Vec<(String, String)>,
    /// Worker threads (Envoy's `--concurrency`, keyrealm-host's workers); `None`: 1.
    pub workers: Option<u32>,
    /// Envoy only: the listeners come from a watched file (LDS from a file, as a control plane
    /// would push them) instead of the bootstrap, so that [`Gateway::reconfigure`] can change a
    /// filter configuration while Envoy runs.
    pub listeners_from_file: bool,
    /// The native form only: the folder of the module to load instead of [`native_module_dir`]
    /// (a test build of it).
    pub native_module_dir: Option<PathBuf>,
}

impl GatewaySpec {
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            upstream: Some(upstream),
            ..Self::default()
        }
    }

    /// Adds a listener without the filter (plain proxy to the upstream); returns its index.
    pub fn plain_listener(&mut self) -> usize {
        self.listeners.push(None);
        self.listeners.len() - 1
    }

    /// Adds a listener running the filter with `filter_config`; returns its index.
    pub fn listener(&mut self, filter_config: Value) -> usize {
        self.listeners.push(Some(filter_config));
        self.listeners.len() - 1
    }

    pub fn cluster(&mut self, name: &str, addr: SocketAddr) -> &mut Self {
        self.clusters.push((name.to_string(), addr));
        self
    }

    pub fn env(&mut self, name: &str, value: &str) -> &mut Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
}

/// The name of the env var that carries the data-plane token to the filter (`token_env`).
pub const TOKEN_ENV: &str = "KEYREALM_DP_TOKEN";

/// The wasm filter as Envoy's `envoy.filters.http.wasm` with the project's conventions: plugin
/// name and root id `keyrealm`, V8, the token env var passed through `host_env_keys`.
pub fn wasm_filter(filter_config: &Value, wasm_path: &Path) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "keyrealm",
                "root_id": "keyrealm",
                // Without it Envoy turns the filter's pause in the headers phase into
                // StopAllIterationAndWatermark and never hands it the body (key_in_body).
                "allow_on_headers_stop_iteration": true,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": filter_config.to_string(),
                },
                "vm_config": {
                    "vm_id": "keyrealm",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm_path.display().to_string()}},
                    "environment_variables": {"host_env_keys": [TOKEN_ENV]},
                },
            },
        },
    })
}

/// The filter as Envoy's `envoy.filters.http.dynamic_modules` (the native form): module
/// `keyrealm_native`, filter name `keyrealm`, the same JSON configuration as a StringValue.
pub fn native_filter(filter_config: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"name": "keyrealm_native"},
            "filter_name": "keyrealm",
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": filter_config.to_string(),
            },
        },
    })
}

/// Which form of the filter a rendered configuration loads.
#[derive(Clone, Debug)]
pub enum FilterForm {
    /// The wasm module at this path (`envoy.filters.http.wasm`).
    Wasm(PathBuf),
    /// The native dynamic module (`envoy.filters.http.dynamic_modules`), found by Envoy through
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
    Native,
}

fn socket_address(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

fn static_cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(addr)}}]}],
        },
    })
}

/// A cluster over several endpoints (the same name given to [`GatewaySpec::cluster`] more than
/// once): round robin, `/health` checked every second, an endpoint refusing connections ejected
/// at once (as `envoy-replicas.yaml` does for realm-service replicas).
fn replicated_cluster(name: &str, addrs: &[SocketAddr]) -> Value {
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|addr| json!({"endpoint": {"address": socket_address(*addr)}}))
        .collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        // Never "panic" (spread over unhealthy endpoints too) when half of them are down.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
        "health_checks": [{
            // no_traffic_interval: a realm cluster is often idle (data planes cache answers);
            // without it Envoy checks an idle cluster only once a minute.
            "timeout": "1s", "interval": "1s", "no_traffic_interval": "1s",
            "unhealthy_threshold": 1, "healthy_threshold": 1,
            "http_health_check": {"path": "/health"},
        }],
        "outlier_detection": {
            "split_external_local_origin_errors": true,
            "consecutive_local_origin_failure": 1,
            "interval": "1s", "base_ejection_time": "5s", "max_ejection_percent": 100,
        },
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    })
}

/// Renders `spec` as an Envoy bootstrap (JSON, which is valid YAML). `listener_addrs` are the
/// addresses to bind, one per listener of the spec (port 0 where the gateway supports it).
pub fn render_config(
    spec: &GatewaySpec,
    listener_addrs: &[SocketAddr],
    admin_addr: SocketAddr,
    form: &FilterForm,
) -> Value {
    let listeners: Vec<Value> = spec
        .listeners
        .iter()
        .zip(listener_addrs)
        .enumerate()
        .map(|(index, (filter_config, addr))| {
            let mut http_filters = Vec::new();
            if let Some(filter_config) = filter_config {
                http_filters.push(match form {
                    FilterForm::Wasm(wasm_path) => wasm_filter(filter_config, wasm_path),
                    FilterForm::Native => native_filter(filter_config),
                });
            }
            http_filters.push(json!({
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }));
            json!({
                "name": format!("listener_{index}"),
                "address": socket_address(*addr),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": format!("listener_{index}"),
                        "route_config": {
                            "name": "local_route",
                            "virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                            }],
                        },
                        "http_filters": http_filters,
                    },
                }]}],
            })
        })
        .collect();
    let mut clusters = Vec::new();
    if let Some(upstream) = spec.upstream {
        clusters.push(static_cluster("upstream", upstream));
    }
    // A name given more than once is one cluster over all its addresses.
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in &spec.clusters {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    for name in names {
        let addrs: Vec<SocketAddr> = spec
            .clusters
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, addr)| *addr)
            .collect();
        clusters.push(match addrs.as_slice() {
            [addr] => static_cluster(name, *addr),
            many => replicated_cluster(name, many),
        });
    }
    json!({
        "admin": {"address": socket_address(admin_addr)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

/// A running gateway. Stopped (killed) when dropped.
pub struct Gateway {
    kind: GatewayKind,
    listeners: Vec<SocketAddr>,
    admin: SocketAddr,
    log_path: PathBuf,
    process: Process,
    http: reqwest::Client,
    /// Set when the listeners come from a watched file ([`GatewaySpec::listeners_from_file`]).
    lds: Option<ListenersFile>,
    _dir: tempfile::TempDir,
}

/// The listeners of a running Envoy as a watched file, and what it was rendered from.
struct ListenersFile {
    path: PathBuf,
    spec: GatewaySpec,
    form: FilterForm,
    listeners: Vec<SocketAddr>,
    admin: SocketAddr,
}

enum Process {
    Envoy(Child),
    /// `None` once stopped.
    Host(Option<keyrealm_host::RunningHost>),
}

impl Gateway {
    pub fn kind(&self) -> GatewayKind {
        self.kind
    }

    /// The address of listener `index` (in the order of [`GatewaySpec::listeners`]).
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.listeners[index]
    }

    /// `http://<listener index>/<path>`; `path_and_query` starts with `/`.
    pub fn url(&self, index: usize, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr(index), path_and_query)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (bounded) for a log line that satisfies `pred`; returns it, or `None` after `within`.
    pub async fn wait_for_log_line(
        &self,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.log().lines().find(|line| pred(line)) {
                return Some(line.to_string());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The admin address's Prometheus text (`/stats/prometheus`).
    pub async fn prometheus_stats(&self) -> anyhow::Result<String> {
        self.admin_text("/stats/prometheus").await
    }

    /// Waits (at most `within`) until Envoy's active health checks have passed for `hosts` hosts
    /// of `cluster` (admin `/clusters`: `<cluster>::<host>::health_flags::healthy`); whether
    /// they did. Right after start-up the first checks may still be running, more so on a
    /// loaded machine, and a cluster with no healthy host fails every call.
    pub async fn wait_for_healthy_hosts(
        &self,
        cluster: &str,
        hosts: usize,
        within: Duration,
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + within;
        let prefix = format!("{cluster}::");
        loop {
            let clusters = self.admin_text("/clusters").await?;
            let healthy = clusters
                .lines()
                .filter(|l| l.starts_with(&prefix) && l.ends_with("::health_flags::healthy"))
                .count();
            if healthy >= hosts {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET `path` on the admin address; its body.
    async fn admin_text(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("http://{}{path}", self.admin);
        let res = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        Ok(res.text().await?)
    }

    /// Changes the filter configuration of listener `index` while Envoy runs, as a control plane
    /// does: the listeners file is replaced (written aside, then renamed into place) and Envoy
    /// updates the listener in place, which creates a new filter configuration (a new root
    /// context in the wasm form). Returns once Envoy took it (bounded). Needs
    /// [`GatewaySpec::listeners_from_file`].
    pub async fn reconfigure(&mut self, index: usize, filter_config: Value) -> anyhow::Result<()> {
        let Some(lds) = &mut self.lds else {
            bail!("{} was not started with listeners_from_file", self.kind);
        };
        lds.spec.listeners[index] = Some(filter_config);
        let before = self.admin_counter(LDS_UPDATES).await?;
        let lds = self
            .lds
            .as_ref()
            .ok_or_else(|| anyhow!("no listeners file"))?;
        write_listeners_file(lds)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.admin_counter(LDS_UPDATES).await? > before
                && self.admin_counter(LISTENERS_WARMING).await? == 0
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "Envoy did not take the new listeners within {READY_TIMEOUT:?}\n---- Envoy log ----\n{}",
                    tail(&self.log(), 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A counter or gauge of the admin's `/stats` (0 when absent).
    async fn admin_counter(&self, name: &str) -> anyhow::Result<u64> {
        let url = format!("http://{}/stats?filter=^{name}$", self.admin);
        let text = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .filter_map(|value| value.trim().parse::<u64>().ok())
            .sum())
    }

    fn stop(&mut self) {
        match &mut self.process {
            Process::Envoy(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Process::Host(host) => {
                if let Some(host) = host.take() {
                    stop_host(host);
                }
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ({}) ----\n{}\n---- end of log ----",
                self.kind,
                self.log_path.display(),
                tail(&self.log(), 60)
            );
        }
    }
}

/// What a gateway that refused its configuration said.
#[derive(Debug)]
pub struct Refusal {
    /// How it refused (Envoy: its non-zero exit status).
    pub how: String,
    /// Everything it logged.
    pub log: String,
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The Envoy binary: `ENVOY_BIN`, which must be set and exist. A missing Envoy fails the test.
pub fn envoy_bin() -> anyhow::Result<PathBuf> {
    let bin = std::env::var_os("ENVOY_BIN").ok_or_else(|| {
        anyhow!(
            "ENVOY_BIN is not set. The end-to-end suite needs real Envoy: run \
             `export ENVOY_BIN=$(scripts/install-envoy.sh)` (or scripts/test.sh, which does it)"
        )
    })?;
    let bin = PathBuf::from(bin);
    if !bin.is_file() {
        bail!(
            "ENVOY_BIN={} does not exist: run scripts/install-envoy.sh",
            bin.display()
        );
    }
    Ok(bin)
}

/// The built filter: `$KEYREALM_WASM`, else `$CARGO_TARGET_DIR/wasm32-wasip1/release/`, else the
/// workspace's `target/wasm32-wasip1/release/`. Missing = an error that says how to build it; a
/// module whose exports are not the stripped ones (see [`check_wasm_exports`]: a plain `cargo
/// build` of the filter re-copies the unstripped module over it) is refused the same way.
pub fn wasm_path() -> anyhow::Result<PathBuf> {
    const REL: &str = "wasm32-wasip1/release/keyrealm_filter.wasm";
    let path = find_built("KEYREALM_WASM", REL, Path::is_file, |looked_at| {
        anyhow!("the filter is not built (looked at {looked_at}): run scripts/build-wasm.sh first")
    })?;
    check_wasm_exports(&path)?;
    Ok(path)
}

/// The export names of a wasm module.
pub fn wasm_exports(path: &Path) -> anyhow::Result<Vec<String>> {
    let bytes = std::fs::read(path)?;
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        if let wasmparser::Payload::ExportSection(reader) = payload? {
            for export in reader {
                names.push(export?.name.to_string());
            }
        }
    }
    Ok(names)
}

/// Checks that the module at `path` is the filter as `scripts/build-wasm.sh` leaves it: every
/// export Envoy and keyrealm-host need (`keyrealm_filter::exports::REQUIRED`) and none of the
/// hooks the build strips (`keyrealm_filter::exports::STRIPPED`).
pub fn check_wasm_exports(path: &Path) -> anyhow::Result<()> {
    let exports = wasm_exports(path)?;
    let left: Vec<&str> = exports
        .iter()
        .map(String::as_str)
        .filter(|name| keyrealm_filter::exports::is_stripped(name))
        .collect();
    let missing: Vec<&str> = keyrealm_filter::exports::REQUIRED
        .iter()
        .copied()
        .filter(|name| !exports.iter().any(|e| e == name))
        .collect();
    if !left.is_empty() {
        bail!(
            "{} still exports {} (not stripped: a plain `cargo build` re-copies the unstripped \
             module): run scripts/build-wasm.sh",
            path.display(),
            left.join(", ")
        );
    }
    if !missing.is_empty() {
        bail!(
            "{} does not export {}: it is not a usable keyrealm filter",
            path.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// The folder of the built native module (`libkeyrealm_native.so`): `$KEYREALM_NATIVE_DIR`,
/// else `$CARGO_TARGET_DIR/release/`, else the workspace's `target/release/`. Missing = an error
/// that says how to build it.
pub fn native_module_dir() -> anyhow::Result<PathBuf> {
    const FILE: &str = "libkeyrealm_native.so";
    find_built(
        "KEYREALM_NATIVE_DIR",
        "release",
        |candidate| candidate.join(FILE).is_file(),
        |looked_in| {
            anyhow!(
                "the native module is not built (looked for {FILE} in {looked_in}): run `cargo build --release -p keyrealm-native` first"
            )
        },
    )
}

/// The first of `$<explicit_env>`, `$CARGO_TARGET_DIR/<rel>` and the workspace's `target/<rel>`
/// that is `found`, canonicalized; else the `missing` error, given the candidates looked at.
fn find_built(
    explicit_env: &str,
    rel: &str,
    found: impl Fn(&Path) -> bool,
    missing: impl FnOnce(String) -> anyhow::Error,
) -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(explicit) = std::env::var_os(explicit_env) {
        candidates.push(PathBuf::from(explicit));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(target).join(rel));
    }
    candidates.push(workspace_root().join("target").join(rel));
    for candidate in &candidates {
        if found(candidate) {
            return Ok(candidate.canonicalize()?);
        }
    }
    Err(missing(
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    ))
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A free loopback port (bound then released; Envoy cannot take port 0 and tell us).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A base id no other Envoy of this machine's concurrent test runs uses.
fn unique_base_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (std::process::id() % 1_000_000) * 100 + (n % 100) + 1
}

struct Prepared {
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` for the native form.
    module_dir: Option<PathBuf>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    listeners: Vec<SocketAddr>,
    admin: SocketAddr,
    lds: Option<ListenersFile>,
}

/// Writes the listeners of `lds` as an LDS file (a discovery response), aside first and then
/// renamed into place: Envoy reloads the file when one is moved into its watched folder.
fn write_listeners_file(lds: &ListenersFile) -> anyhow::Result<()> {
    let config = render_config(&lds.spec, &lds.listeners, lds.admin, &lds.form);
    let resources: Vec<Value> = config["static_resources"]["listeners"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut listener| {
            listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
            listener
        })
        .collect();
    let folder = lds
        .path
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("listeners file without a folder"))?;
    let aside = folder.join("listeners.json.new");
    std::fs::write(
        &aside,
        serde_json::to_string_pretty(&json!({"resources": resources}))?,
    )?;
    std::fs::rename(&aside, &lds.path)?;
    Ok(())
}

fn prepare_envoy(kind: GatewayKind, spec: &GatewaySpec) -> anyhow::Result<Prepared> {
    // The filter must be built, unless no listener runs it (the harness's own check).
    let uses_filter = spec.listeners.iter().any(Option::is_some);
    let (form, module_dir) = match kind {
        GatewayKind::EnvoyNative => {
            let dir = match &spec.native_module_dir {
                Some(dir) => Some(dir.clone()),
                None if uses_filter => Some(native_module_dir()?),
                None => None,
            };
            (FilterForm::Native, dir)
        }
        _ if uses_filter => (FilterForm::Wasm(wasm_path()?), None),
        _ => (FilterForm::Wasm(PathBuf::from("unused.wasm")), None),
    };
    let dir = tempfile::Builder::new().prefix("keyrealm-e2e-").tempdir()?;
    let listeners = spec
        .listeners
        .iter()
        .map(|_| free_port().map(loopback))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let admin = loopback(free_port()?);
    let mut config = render_config(spec, &listeners, admin, &form);
    let lds = if spec.listeners_from_file {
        let lds = ListenersFile {
            path: dir.path().join("lds").join("listeners.json"),
            spec: spec.clone(),
            form,
            listeners: listeners.clone(),
            admin,
        };
        std::fs::create_dir(dir.path().join("lds"))?;
        write_listeners_file(&lds)?;
        config["static_resources"]["listeners"] = json!([]);
        config["node"] = json!({"id": "keyrealm-e2e", "cluster": "keyrealm-e2e"});
        config["dynamic_resources"] = json!({"lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": lds.path.display().to_string(),
                "watched_directory": {"path": dir.path().join("lds").display().to_string()},
            },
        }});
        Some(lds)
    } else {
        None
    };
    let config_path = dir.path().join("envoy.yaml");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
    let log_path = dir.path().join("envoy.log");
    Ok(Prepared {
        module_dir,
        dir,
        config_path,
        log_path,
        listeners,
        admin,
        lds,
    })
}

fn spawn_envoy(spec: &GatewaySpec, prepared: &Prepared) -> anyhow::Result<Child> {
    let envoy = envoy_bin()?;
    let log = File::create(&prepared.log_path)?;
    let mut command = Command::new(&envoy);
    command
        .arg("-c")
        .arg(&prepared.config_path)
        .args(["--disable-hot-restart", "--concurrency"])
        .arg(spec.workers.unwrap_or(1).to_string())
        .args(["-l", "warning"])
        .arg("--base-id")
        .arg(unique_base_id().to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    for (name, value) in &spec.env {
        command.env(name, value);
    }
    if let Some(dir) = &prepared.module_dir {
        command.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dir);
    }
    kill_with_parent(&mut command);
    command
        .spawn()
        .with_context(|| format!("starting {}", envoy.display()))
}

/// Makes the kernel kill the child when the test process dies without running `Drop` (killed by
/// a timeout, SIGKILL), so that no Envoy outlives the suite.
fn kill_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn port_clash(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("cannot bind")
}

async fn start_envoy(kind: GatewayKind, spec: &GatewaySpec) -> anyhow::Result<Gateway> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    // A port picked as free may be taken by a parallel test before Envoy binds it: retry then.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let prepared = prepare_envoy(kind, spec)?;
        let child = spawn_envoy(spec, &prepared)?;
        let mut gateway = Gateway {
            kind,
            listeners: prepared.listeners.clone(),
            admin: prepared.admin,
            log_path: prepared.log_path.clone(),
            process: Process::Envoy(child),
            http: http.clone(),
            lds: prepared.lds,
            _dir: prepared.dir,
        };
        match wait_ready(&mut gateway).await {
            Ok(()) => return Ok(gateway),
            Err(err) => {
                let log = gateway.log();
                gateway.stop();
                if attempt < 3 && port_clash(&log) {
                    continue;
                }
                bail!(
                    "Envoy did not become ready: {err}\n---- Envoy log ----\n{}",
                    tail(&log, 60)
                );
            }
        }
    }
}

async fn wait_ready(gateway: &mut Gateway) -> anyhow::Result<()> {
    let url = format!("http://{}/ready", gateway.admin);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Process::Envoy(child) = &mut gateway.process {
            if let Some(status) = child.try_wait()? {
                bail!("Envoy exited with {status} before it was ready");
            }
        }
        if let Ok(res) = gateway.http.get(&url).send().await {
            if res.status().as_u16() == 200 {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("not ready after {READY_TIMEOUT:?} (GET {url})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_envoy_expecting_refusal(
    kind: GatewayKind,
    spec: &GatewaySpec,
) -> anyhow::Result<Refusal> {
    let prepared = prepare_envoy(kind, spec)?;
    let mut child = spawn_envoy(spec, &prepared)?;
    let deadline = Instant::now() + REFUSAL_TIMEOUT;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let ready_url = format!("http://{}/ready", prepared.admin);
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&prepared.log_path).unwrap_or_default();
            if status.success() {
                bail!("Envoy exited with success instead of refusing the configuration\n---- Envoy log ----\n{}", tail(&log, 60));
            }
            return Ok(Refusal {
                how: format!("Envoy exited with {status}"),
                log,
            });
        }
        let ready =
            matches!(http.get(&ready_url).send().await, Ok(res) if res.status().as_u16() == 200);
        if ready || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&prepared.log_path).unwrap_or_default();
            bail!(
                "Envoy {} instead of refusing the configuration\n---- Envoy log ----\n{}",
                if ready {
                    "started and became ready"
                } else {
                    "neither exited nor became ready"
                },
                tail(&log, 60)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a stopping keyrealm-host may take to close its connections and join its workers.
const HOST_STOP_TIMEOUT: Duration = Duration::from_secs(5);

struct PreparedHost {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    options: keyrealm_host::HostOptions,
}

/// Renders `spec` for keyrealm-host: the same file as for Envoy, with port 0 everywhere.
fn prepare_host(spec: &GatewaySpec) -> anyhow::Result<PreparedHost> {
    let wasm = if spec.listeners.iter().any(Option::is_some) {
        wasm_path()?
    } else {
        PathBuf::from("unused.wasm")
    };
    let dir = tempfile::Builder::new()
        .prefix("keyrealm-e2e-host-")
        .tempdir()?;
    let listeners = vec![loopback(0); spec.listeners.len()];
    let config = render_config(spec, &listeners, loopback(0), &FilterForm::Wasm(wasm));
    let config_path = dir.path().join("envoy.yaml");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
    let log_path = dir.path().join("host.log");
    let options = keyrealm_host::HostOptions {
        workers: Some(spec.workers.unwrap_or(1) as usize),
        env: spec.env.clone(),
        log_path: Some(log_path.clone()),
        ..keyrealm_host::HostOptions::default()
    };
    Ok(PreparedHost {
        dir,
        config_path,
        log_path,
        options,
    })
}

async fn start_host(spec: &GatewaySpec) -> anyhow::Result<Gateway> {
    if spec.listeners_from_file {
        bail!("keyrealm-host takes its listeners from its configuration file only (no LDS)");
    }
    let prepared = prepare_host(spec)?;
    let host =
        match keyrealm_host::start_with_options(&prepared.config_path, prepared.options.clone())
            .await
        {
            Ok(host) => host,
            Err(err) => bail!(
                "keyrealm-host did not start: {err}\n---- keyrealm-host log ----\n{}",
                tail(
                    &std::fs::read_to_string(&prepared.log_path).unwrap_or_default(),
                    60
                )
            ),
        };
    let listeners = host.listener_addrs();
    let Some(admin) = host.admin_addr() else {
        stop_host(host);
        bail!("keyrealm-host has no admin address although the configuration has one");
    };
    if listeners.len() != spec.listeners.len() {
        stop_host(host);
        bail!(
            "keyrealm-host bound {} listeners for {} configured",
            listeners.len(),
            spec.listeners.len()
        );
    }
    let mut gateway = Gateway {
        kind: GatewayKind::Host,
        listeners,
        admin,
        log_path: prepared.log_path,
        process: Process::Host(Some(host)),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?,
        lds: None,
        _dir: prepared.dir,
    };
    // `start` returns once it serves; readiness is checked all the same, as for Envoy.
    wait_ready(&mut gateway).await?;
    Ok(gateway)
}

/// A refused configuration is the `Err` of the start; what the host logged (the filter's lines)
/// is in its log file, the error itself (which quotes them) is `how`.
async fn start_host_expecting_refusal(spec: &GatewaySpec) -> anyhow::Result<Refusal> {
    let prepared = prepare_host(spec)?;
    match keyrealm_host::start_with_options(&prepared.config_path, prepared.options.clone()).await {
        Ok(host) => {
            stop_host(host);
            bail!(
                "keyrealm-host started instead of refusing the configuration\n---- keyrealm-host log ----\n{}",
                tail(
                    &std::fs::read_to_string(&prepared.log_path).unwrap_or_default(),
                    60
                )
            )
        }
        Err(err) => Ok(Refusal {
            how: format!("keyrealm-host refused to start: {err}"),
            log: std::fs::read_to_string(&prepared.log_path).unwrap_or_default(),
        }),
    }
}

/// Stops `host` and waits (bounded) for its workers, so that nothing of it outlives the test.
/// Outside a multi-threaded runtime it is only dropped (its threads are told to end).
fn stop_host(host: keyrealm_host::RunningHost) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        drop(host);
        return;
    };
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        drop(host);
        return;
    }
    tokio::task::block_in_place(|| {
        let _ = handle.block_on(tokio::time::timeout(HOST_STOP_TIMEOUT, host.shutdown()));
    });
}

/// Declares one `#[tokio::test]` per [`GatewayKind`] for a scenario `async fn(GatewayKind)`:
/// `gateway_test!(seed_story);` makes `seed_story::envoy`, `seed_story::envoy_native` and
/// `seed_story::host`.
#[macro_export]
macro_rules! gateway_test {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn envoy() {
                super::$scenario($crate::gateway::GatewayKind::Envoy).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn envoy_native() {
                super::$scenario($crate::gateway::GatewayKind::EnvoyNative).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn host() {
                super::$scenario($crate::gateway::GatewayKind::Host).await
            }
        }
    };
}
