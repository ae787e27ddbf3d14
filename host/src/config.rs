//! The subset of Envoy's static configuration (`envoy.yaml`) that keyrealm-host understands.
//!
//! The file is read into a YAML tree and walked by hand, so that every field that is not part of
//! the subset is rejected with its full path (`static_resources.listeners[0].foo: unsupported
//! field`) instead of being silently ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

/// `@type` of the HTTP connection manager network filter.
pub const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// `@type` of the wasm HTTP filter.
pub const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// `@type` of the router HTTP filter.
pub const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// A configuration error: the path of the offending field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `static_resources.listeners[0].address`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

type Result<T> = std::result::Result<T, ConfigError>;

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// `admin.address`, when present.
    pub admin: Option<SocketAddr>,
    /// `static_resources.listeners`.
    pub listeners: Vec<ListenerConfig>,
    /// `static_resources.clusters`, by name.
    pub clusters: BTreeMap<String, ClusterConfig>,
}

/// One listener with its HTTP connection manager.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub stat_prefix: String,
    /// Which HTTP versions the listener speaks (`codec_type`).
    pub codec: Codec,
    pub virtual_hosts: Vec<VirtualHost>,
    /// The wasm filters, in the order of `http_filters` (the router comes last).
    pub wasm_filters: Vec<WasmFilterConfig>,
}

/// `codec_type` of the HTTP connection manager.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/1.1, or HTTP/2 when the client starts with the HTTP/2 preface (prior knowledge).
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only (h2c with prior knowledge; no TLS here).
    Http2,
}

/// `route_config.virtual_hosts[]`.
#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    /// `match.prefix`
    Prefix(String),
    /// `match.path`
    Path(String),
}

/// One route: a match and the cluster it sends to.
#[derive(Debug, Clone)]
pub struct Route {
    pub matcher: RouteMatch,
    pub cluster: String,
    /// `route.timeout` (Envoy's default is 15 s; zero disables it).
    pub timeout: Duration,
}

/// `envoy.filters.http.wasm` configuration.
#[derive(Debug, Clone, Default)]
pub struct WasmFilterConfig {
    /// `config.name` (the plugin name, property `plugin_name`).
    pub name: String,
    /// `config.root_id`.
    pub root_id: String,
    /// `config.vm_config.vm_id`.
    pub vm_id: String,
    /// `config.configuration` (StringValue).
    pub configuration: Vec<u8>,
    /// `config.vm_config.configuration` (StringValue).
    pub vm_configuration: Vec<u8>,
    /// `config.vm_config.code.local.filename`, as written (resolved against the cwd when loaded).
    pub code_path: PathBuf,
    /// `config.vm_config.environment_variables.host_env_keys`.
    pub host_env_keys: Vec<String>,
    /// `config.vm_config.environment_variables.key_values`.
    pub key_values: Vec<(String, String)>,
    /// `config.fail_open`.
    pub fail_open: bool,
    /// `config.allow_on_headers_stop_iteration`: when false (Envoy's default), a filter that
    /// pauses in its headers callback gets no body callback until it continues; when true, the
    /// body is handed to it while the headers are paused, and continuing from the body
    /// callback resumes the stream.
    pub allow_on_headers_stop_iteration: bool,
    /// `config.failure_policy` (Envoy's `FailurePolicy`).
    pub failure_policy: FailurePolicy,
    /// `config.reload_config.backoff.base_interval` (Envoy's default: 1 s). As in Envoy 1.40,
    /// `max_interval` is accepted (and checked) but plays no part in the reload timing.
    pub reload_base_interval: Duration,
}

/// What a filter's failure (a trap, a call past its time budget) does, as Envoy's
/// `FailurePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Not set: `fail_open` decides between `FailOpen` and `FailClosed`.
    #[default]
    Unspecified,
    /// Requests the failed filter would have served get 503 (`wasm_fail_stream`).
    FailClosed,
    /// Requests pass the failed filter as if it were not configured.
    FailOpen,
    /// The instance is re-created, at least a jittered `[base, 1.5 x base)` after the last
    /// load; requests that find no instance get 503.
    FailReload,
}

impl WasmFilterConfig {
    /// Whether requests pass a failed filter (Envoy's `FAIL_OPEN`, or `fail_open` when no
    /// policy is set).
    pub fn fails_open(&self) -> bool {
        match self.failure_policy {
            FailurePolicy::FailOpen => true,
            FailurePolicy::Unspecified => self.fail_open,
            FailurePolicy::FailClosed | FailurePolicy::FailReload => false,
        }
    }

    /// A name for log lines: the plugin name, else the root id.
    pub fn log_name(&self) -> &str {
        if self.name.is_empty() {
            &self.root_id
        } else {
            &self.name
        }
    }
}

/// How a cluster finds its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryType {
    Static,
    StrictDns,
    LogicalDns,
}

/// One static cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub connect_timeout: Duration,
    pub discovery: DiscoveryType,
    /// (host, port) of each endpoint; hosts are IP literals for STATIC clusters.
    pub endpoints: Vec<(String, u16)>,
    /// `dns_refresh_rate`: how long a DNS answer is used (Envoy's default: 5 s).
    pub dns_refresh_rate: Duration,
}

/// Reads and checks a configuration file.
pub fn load(path: &std::path::Path) -> std::result::Result<HostConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: String::new(),
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    parse(&text)
}

/// Parses a configuration from YAML text.
pub fn parse(text: &str) -> Result<HostConfig> {
    let root: Value = serde_yaml::from_str(text).map_err(|e| ConfigError {
        path: String::new(),
        message: format!("not valid YAML: {e}"),
    })?;
    let root = Node {
        value: &root,
        path: String::new(),
    };
    let top = root.map()?;
    top.allow(&["static_resources", "admin"])?;
    let admin = match top.opt("admin") {
        Some(admin) => {
            let admin = admin.map()?;
            admin.allow(&["address"])?;
            Some(parse_address(&admin.req("address")?)?)
        }
        None => None,
    };
    let sr = top.req("static_resources")?.map()?;
    sr.allow(&["listeners", "clusters"])?;
    let mut clusters = BTreeMap::new();
    if let Some(cs) = sr.opt("clusters") {
        for c in cs.seq()? {
            let cluster = parse_cluster(&c)?;
            if clusters.contains_key(&cluster.name) {
                return Err(c.err(format!("duplicate cluster name {:?}", cluster.name)));
            }
            clusters.insert(cluster.name.clone(), cluster);
        }
    }
    let mut listeners = Vec::new();
    if let Some(ls) = sr.opt("listeners") {
        for l in ls.seq()? {
            listeners.push(parse_listener(&l, &clusters)?);
        }
    }
    if listeners.is_empty() {
        return Err(ConfigError {
            path: "static_resources.listeners".into(),
            message: "at least one listener is required".into(),
        });
    }
    Ok(HostConfig {
        admin,
        listeners,
        clusters,
    })
}

fn parse_address(node: &Node) -> Result<SocketAddr> {
    let addr = node.map()?;
    addr.allow(&["socket_address"])?;
    let sa = addr.req("socket_address")?.map()?;
    sa.allow(&["address", "port_value", "protocol"])?;
    if let Some(p) = sa.opt("protocol") {
        if p.str()? != "TCP" {
            return Err(p.err("only TCP is supported"));
        }
    }
    let host_node = sa.req("address")?;
    let host = host_node.str()?;
    let ip: IpAddr = match host {
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        other => other
            .parse()
            .map_err(|_| host_node.err(format!("{other:?} is not an IP address")))?,
    };
    let port = sa
        .opt("port_value")
        .map(|p| p.port())
        .transpose()?
        .unwrap_or(0);
    Ok(SocketAddr::new(ip, port))
}

fn parse_cluster(node: &Node) -> Result<ClusterConfig> {
    let c = node.map()?;
    c.allow(&[
        "name",
        "connect_timeout",
        "type",
        "lb_policy",
        "load_assignment",
        "dns_refresh_rate",
    ])?;
    let dns_refresh_rate = match c.opt("dns_refresh_rate") {
        Some(t) => match t.duration()? {
            d if d < Duration::from_millis(1) => {
                return Err(t.err("dns_refresh_rate must be at least 1ms"))
            }
            d => d,
        },
        None => Duration::from_secs(5),
    };
    let name = c.req("name")?.string()?;
    let connect_timeout = match c.opt("connect_timeout") {
        Some(t) => match t.duration()? {
            d if d.is_zero() => return Err(t.err("connect_timeout must be greater than 0s")),
            d => d,
        },
        None => Duration::from_secs(5),
    };
    let discovery = match c.opt("type") {
        None => DiscoveryType::Static,
        Some(t) => match t.str()? {
            "STATIC" => DiscoveryType::Static,
            "STRICT_DNS" => DiscoveryType::StrictDns,
            "LOGICAL_DNS" => DiscoveryType::LogicalDns,
            other => return Err(t.err(format!("cluster type {other:?} is not supported"))),
        },
    };
    if let Some(lb) = c.opt("lb_policy") {
        match lb.str()? {
            "ROUND_ROBIN" | "RANDOM" | "LEAST_REQUEST" => {}
            other => return Err(lb.err(format!("lb_policy {other:?} is not supported"))),
        }
    }
    let la = c.req("load_assignment")?.map()?;
    la.allow(&["cluster_name", "endpoints"])?;
    if let Some(cn) = la.opt("cluster_name") {
        cn.str()?;
    }
    let mut endpoints = Vec::new();
    for ep in la.req("endpoints")?.seq()? {
        let ep = ep.map()?;
        ep.allow(&["lb_endpoints"])?;
        for lbe in ep.req("lb_endpoints")?.seq()? {
            let lbe = lbe.map()?;
            lbe.allow(&["endpoint"])?;
            let e = lbe.req("endpoint")?.map()?;
            e.allow(&["address"])?;
            let a = e.req("address")?.map()?;
            a.allow(&["socket_address"])?;
            let sa = a.req("socket_address")?.map()?;
            sa.allow(&["address", "port_value", "protocol"])?;
            let host_node = sa.req("address")?;
            let host = host_node.string()?;
            if discovery == DiscoveryType::Static && host.parse::<IpAddr>().is_err() {
                return Err(host_node.err(format!(
                    "{host:?} is not an IP address (a STATIC cluster needs IP addresses)"
                )));
            }
            let port = sa.req("port_value")?.port()?;
            endpoints.push((host, port));
        }
    }
    if endpoints.is_empty() {
        return Err(ConfigError {
            path: format!("{}.load_assignment.endpoints", node.path),
            message: "a cluster needs at least one endpoint".into(),
        });
    }
    Ok(ClusterConfig {
        name,
        connect_timeout,
        discovery,
        endpoints,
        dns_refresh_rate,
    })
}

fn parse_listener(
    node: &Node,
    clusters: &BTreeMap<String, ClusterConfig>,
) -> Result<ListenerConfig> {
    let l = node.map()?;
    l.allow(&["name", "address", "filter_chains"])?;
    let name = match l.opt("name") {
        Some(n) => n.string()?,
        None => String::new(),
    };
    let address = parse_address(&l.req("address")?)?;
    let chains_node = l.req("filter_chains")?;
    let chains = chains_node.seq()?;
    if chains.len() != 1 {
        return Err(chains_node.err("exactly one filter chain is supported"));
    }
    let chain = chains[0].map()?;
    chain.allow(&["filters"])?;
    let filters_node = chain.req("filters")?;
    let filters = filters_node.seq()?;
    if filters.len() != 1 {
        return Err(filters_node.err(
            "exactly one network filter (envoy.filters.network.http_connection_manager) is supported",
        ));
    }
    let f = filters[0].map()?;
    f.allow(&["name", "typed_config"])?;
    let fname = f.req("name")?;
    if fname.str()? != "envoy.filters.network.http_connection_manager" {
        return Err(fname.err("only envoy.filters.network.http_connection_manager is supported"));
    }
    let hcm = f.req("typed_config")?.map()?;
    hcm.allow(&[
        "@type",
        "stat_prefix",
        "codec_type",
        "route_config",
        "http_filters",
    ])?;
    hcm.expect_type(HCM_TYPE)?;
    let stat_prefix = hcm.req("stat_prefix")?.string()?;
    let codec = match hcm.opt("codec_type") {
        None => Codec::Auto,
        Some(node) => match node.str()? {
            "AUTO" => Codec::Auto,
            "HTTP1" => Codec::Http1,
            "HTTP2" => Codec::Http2,
            other => {
                return Err(node.err(format!(
                    "codec_type {other:?} is not supported (AUTO, HTTP1, HTTP2)"
                )))
            }
        },
    };
    let rc = hcm.req("route_config")?.map()?;
    rc.allow(&["name", "virtual_hosts"])?;
    if let Some(n) = rc.opt("name") {
        n.str()?;
    }
    let mut virtual_hosts = Vec::new();
    // Envoy refuses a domain (compared without case) that appears twice in a route configuration.
    let mut domains_seen = std::collections::HashSet::new();
    for vh in rc.req("virtual_hosts")?.seq()? {
        let parsed = parse_virtual_host(&vh, clusters)?;
        for (i, d) in parsed.domains.iter().enumerate() {
            if !domains_seen.insert(d.to_ascii_lowercase()) {
                return Err(ConfigError {
                    path: format!("{}.domains[{i}]", vh.path),
                    message: format!("duplicate domain {d:?} (domains must be unique)"),
                });
            }
        }
        virtual_hosts.push(parsed);
    }
    let hf_node = hcm.req("http_filters")?;
    let hfs = hf_node.seq()?;
    let mut wasm_filters = Vec::new();
    let mut router_seen = false;
    for hf in &hfs {
        let m = hf.map()?;
        m.allow(&["name", "typed_config"])?;
        let n = m.req("name")?;
        if router_seen {
            return Err(hf.err("the router must be the last HTTP filter"));
        }
        // Envoy picks the filter by its typed_config's type; the name only matters without one.
        let name = n.str()?;
        let type_node = match m.opt("typed_config") {
            Some(tc) => Some(tc.map()?.req("@type")?),
            None => None,
        };
        let type_url = match &type_node {
            Some(t) => Some(t.str()?),
            None => None,
        };
        match (type_url, name) {
            (Some(ROUTER_TYPE), _) | (None, "envoy.filters.http.router") => {
                if let Some(tc) = m.opt("typed_config") {
                    let tc = tc.map()?;
                    tc.allow(&["@type"])?;
                }
                router_seen = true;
            }
            (Some(WASM_TYPE), _) | (None, "envoy.filters.http.wasm") => {
                wasm_filters.push(parse_wasm(&m.req("typed_config")?, clusters)?)
            }
            (Some(other), _) => {
                let t = type_node.as_ref().unwrap_or(&n);
                return Err(t.err(format!(
                    "HTTP filter type {other:?} is not supported ({WASM_TYPE}, {ROUTER_TYPE})"
                )));
            }
            (None, other) => {
                return Err(n.err(format!(
                    "HTTP filter {other:?} is not supported (envoy.filters.http.wasm, envoy.filters.http.router)"
                )))
            }
        }
    }
    if !router_seen {
        return Err(hf_node.err("envoy.filters.http.router must be the last HTTP filter"));
    }
    Ok(ListenerConfig {
        name,
        address,
        stat_prefix,
        codec,
        virtual_hosts,
        wasm_filters,
    })
}

fn parse_virtual_host(
    node: &Node,
    clusters: &BTreeMap<String, ClusterConfig>,
) -> Result<VirtualHost> {
    let vh = node.map()?;
    vh.allow(&["name", "domains", "routes"])?;
    let name = vh.req("name")?.string()?;
    let domains = vh.req("domains")?.strings()?;
    let mut routes = Vec::new();
    for r in vh.req("routes")?.seq()? {
        let rm = r.map()?;
        rm.allow(&["name", "match", "route"])?;
        if let Some(n) = rm.opt("name") {
            n.str()?;
        }
        let m = rm.req("match")?.map()?;
        m.allow(&["prefix", "path"])?;
        let matcher = match (m.opt("prefix"), m.opt("path")) {
            (Some(p), None) => RouteMatch::Prefix(p.string()?),
            (None, Some(p)) => RouteMatch::Path(p.string()?),
            _ => {
                return Err(ConfigError {
                    path: format!("{}.match", r.path),
                    message: "exactly one of prefix or path is required".into(),
                })
            }
        };
        let action = rm.req("route")?.map()?;
        action.allow(&["cluster", "timeout"])?;
        let cnode = action.req("cluster")?;
        let cluster = cnode.string()?;
        if !clusters.contains_key(&cluster) {
            return Err(cnode.err(format!("unknown cluster {cluster:?}")));
        }
        let timeout = match action.opt("timeout") {
            Some(t) => t.duration()?,
            None => Duration::from_secs(15),
        };
        routes.push(Route {
            matcher,
            cluster,
            timeout,
        });
    }
    Ok(VirtualHost {
        name,
        domains,
        routes,
    })
}

fn parse_wasm(
    node: &Node,
    _clusters: &BTreeMap<String, ClusterConfig>,
) -> Result<WasmFilterConfig> {
    let tc = node.map()?;
    tc.allow(&["@type", "config"])?;
    tc.expect_type(WASM_TYPE)?;
    let c = tc.req("config")?.map()?;
    c.allow(&[
        "name",
        "root_id",
        "configuration",
        "vm_config",
        "fail_open",
        "allow_on_headers_stop_iteration",
        "failure_policy",
        "reload_config",
    ])?;
    let failure_policy = match c.opt("failure_policy") {
        None => FailurePolicy::Unspecified,
        Some(p) => match p.str()? {
            "UNSPECIFIED" => FailurePolicy::Unspecified,
            "FAIL_CLOSED" => FailurePolicy::FailClosed,
            "FAIL_OPEN" => FailurePolicy::FailOpen,
            "FAIL_RELOAD" => FailurePolicy::FailReload,
            other => return Err(p.err(format!("failure_policy {other:?} is not supported"))),
        },
    };
    let mut reload_base_interval = Duration::from_secs(1);
    if let Some(rc) = c.opt("reload_config") {
        let rc = rc.map()?;
        rc.allow(&["backoff"])?;
        if let Some(b) = rc.opt("backoff") {
            let b = b.map()?;
            b.allow(&["base_interval", "max_interval"])?;
            let base = b.req("base_interval")?;
            reload_base_interval = base.duration()?;
            if reload_base_interval.is_zero() {
                return Err(base.err("base_interval must be greater than 0s"));
            }
            if let Some(m) = b.opt("max_interval") {
                let max = m.duration()?;
                if max < reload_base_interval {
                    return Err(m.err("max_interval must be at least base_interval"));
                }
            }
        }
    }
    let allow_on_headers_stop_iteration = c
        .opt("allow_on_headers_stop_iteration")
        .map(|n| n.bool())
        .transpose()?
        .unwrap_or(false);
    let name = c
        .opt("name")
        .map(|n| n.string())
        .transpose()?
        .unwrap_or_default();
    let root_id = c
        .opt("root_id")
        .map(|n| n.string())
        .transpose()?
        .unwrap_or_default();
    let configuration = match c.opt("configuration") {
        Some(v) => string_value(&v)?,
        None => Vec::new(),
    };
    let fail_open = c
        .opt("fail_open")
        .map(|n| n.bool())
        .transpose()?
        .unwrap_or(false);
    let vm = c.req("vm_config")?.map()?;
    vm.allow(&[
        "vm_id",
        "runtime",
        "code",
        "configuration",
        "environment_variables",
    ])?;
    let vm_id = vm
        .opt("vm_id")
        .map(|n| n.string())
        .transpose()?
        .unwrap_or_default();
    let runtime = vm.req("runtime")?;
    match runtime.str()? {
        "envoy.wasm.runtime.v8" | "envoy.wasm.runtime.wasmtime" | "envoy.wasm.runtime.wamr" => {}
        other => return Err(runtime.err(format!("runtime {other:?} is not supported"))),
    }
    let vm_configuration = match vm.opt("configuration") {
        Some(v) => string_value(&v)?,
        None => Vec::new(),
    };
    let code = vm.req("code")?.map()?;
    code.allow(&["local"])?;
    let local = code.req("local")?.map()?;
    local.allow(&["filename"])?;
    let code_path = PathBuf::from(local.req("filename")?.string()?);
    let mut host_env_keys = Vec::new();
    let mut key_values = Vec::new();
    if let Some(ev) = vm.opt("environment_variables") {
        let ev = ev.map()?;
        ev.allow(&["host_env_keys", "key_values"])?;
        if let Some(k) = ev.opt("host_env_keys") {
            host_env_keys = k.strings()?;
        }
        if let Some(kv) = ev.opt("key_values") {
            let kvm = kv.map()?;
            for (k, v) in kvm.fields.iter() {
                let key = k
                    .as_str()
                    .ok_or_else(|| kv.err("keys must be strings"))?
                    .to_string();
                let vnode = Node {
                    value: v,
                    path: format!("{}.{key}", kv.path),
                };
                key_values.push((key, vnode.string()?));
            }
        }
    }
    Ok(WasmFilterConfig {
        name,
        root_id,
        vm_id,
        configuration,
        vm_configuration,
        code_path,
        host_env_keys,
        key_values,
        fail_open,
        allow_on_headers_stop_iteration,
        failure_policy,
        reload_base_interval,
    })
}

fn string_value(node: &Node) -> Result<Vec<u8>> {
    let m = node.map()?;
    m.allow(&["@type", "value"])?;
    m.expect_type(STRING_VALUE_TYPE)?;
    Ok(m.opt("value")
        .map(|v| v.string())
        .transpose()?
        .unwrap_or_default()
        .into_bytes())
}

struct Node<'a> {
    value: &'a Value,
    path: String,
}

struct MapNode<'a> {
    fields: &'a Mapping,
    path: String,
}

impl<'a> Node<'a> {
    fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn map(&self) -> Result<MapNode<'a>> {
        match self.value {
            Value::Mapping(m) => Ok(MapNode {
                fields: m,
                path: self.path.clone(),
            }),
            _ => Err(self.err("expected a mapping")),
        }
    }

    fn seq(&self) -> Result<Vec<Node<'a>>> {
        match self.value {
            Value::Sequence(s) => Ok(s
                .iter()
                .enumerate()
                .map(|(i, v)| Node {
                    value: v,
                    path: format!("{}[{i}]", self.path),
                })
                .collect()),
            _ => Err(self.err("expected a list")),
        }
    }

    fn str(&self) -> Result<&'a str> {
        match self.value {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(self.err("expected a string")),
        }
    }

    fn string(&self) -> Result<String> {
        self.str().map(str::to_string)
    }

    fn strings(&self) -> Result<Vec<String>> {
        self.seq()?.iter().map(|n| n.string()).collect()
    }

    fn bool(&self) -> Result<bool> {
        match self.value {
            Value::Bool(b) => Ok(*b),
            _ => Err(self.err("expected true or false")),
        }
    }

    fn port(&self) -> Result<u16> {
        match self.value {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| self.err("expected a port number (0-65535)")),
            _ => Err(self.err("expected a port number (0-65535)")),
        }
    }

    /// A protobuf Duration in its JSON/YAML form, as Envoy reads it: `"5s"`, `"0.25s"` (digits,
    /// at most nine after the point, no sign or exponent), at most 9223372035 seconds.
    fn duration(&self) -> Result<Duration> {
        let s = self
            .str()
            .map_err(|_| self.err("expected a duration such as \"5s\""))?;
        let bad = || self.err(format!("{s:?} is not a duration such as \"5s\""));
        let number = s.strip_suffix('s').ok_or_else(bad)?;
        let (secs, frac) = match number.split_once('.') {
            Some((secs, frac)) => (secs, Some(frac)),
            None => (number, None),
        };
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(secs) || frac.is_some_and(|f| !digits(f) || f.len() > 9) {
            return Err(bad());
        }
        let out_of_range = || self.err(format!("{s:?} is out of range (at most 9223372035s)"));
        let secs: u64 = secs.parse().map_err(|_| out_of_range())?;
        if secs > 9_223_372_035 {
            return Err(out_of_range());
        }
        let nanos = match frac {
            Some(f) => format!("{f:0<9}").parse::<u32>().map_err(|_| bad())?,
            None => 0,
        };
        Ok(Duration::new(secs, nanos))
    }
}

impl<'a> MapNode<'a> {
    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// Rejects any key that is not in `allowed`.
    fn allow(&self, allowed: &[&str]) -> Result<()> {
        for key in self.fields.keys() {
            match key.as_str() {
                Some(k) if allowed.contains(&k) => {}
                Some(k) => {
                    return Err(ConfigError {
                        path: self.child_path(k),
                        message: "unsupported field".into(),
                    })
                }
                None => return Err(self.err("field names must be strings")),
            }
        }
        Ok(())
    }

    fn opt(&self, key: &str) -> Option<Node<'a>> {
        self.fields.get(key).map(|v| Node {
            value: v,
            path: self.child_path(key),
        })
    }

    fn req(&self, key: &str) -> Result<Node<'a>> {
        self.opt(key).ok_or_else(|| ConfigError {
            path: self.child_path(key),
            message: "required field is missing".into(),
        })
    }

    fn expect_type(&self, expected: &str) -> Result<()> {
        let t = self.req("@type")?;
        if t.str()? != expected {
            return Err(t.err(format!("expected {expected}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
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
              - match: {prefix: "/"}
                route: {cluster: upstream, timeout: 2.5s}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: keyrealm
                root_id: keyrealm
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"a":1}'
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {local: {filename: f.wasm}}
                  environment_variables:
                    host_env_keys: [KEYREALM_DP_TOKEN]
                    key_values: {A: b}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    connect_timeout: 0.25s
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}
"#;

    #[test]
    fn parses_the_supported_subset() {
        let c = parse(GOOD).expect("valid config");
        assert_eq!(c.admin, Some("127.0.0.1:0".parse().expect("addr")));
        let l = &c.listeners[0];
        assert_eq!(l.address.port(), 10000);
        assert_eq!(l.virtual_hosts[0].routes[0].cluster, "upstream");
        assert_eq!(
            l.virtual_hosts[0].routes[0].timeout,
            Duration::from_millis(2500)
        );
        let w = &l.wasm_filters[0];
        assert_eq!(w.root_id, "keyrealm");
        assert_eq!(w.configuration, b"{\"a\":1}");
        assert_eq!(w.host_env_keys, vec!["KEYREALM_DP_TOKEN".to_string()]);
        assert_eq!(w.key_values, vec![("A".to_string(), "b".to_string())]);
        assert_eq!(
            c.clusters["upstream"].connect_timeout,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let bad = GOOD.replace("  - name: main\n", "  - name: main\n    foo: 1\n");
        let e = parse(&bad).expect_err("must fail");
        assert_eq!(
            e.to_string(),
            "static_resources.listeners[0].foo: unsupported field"
        );
        let bad = GOOD.replace("fail_open", "x").replace(
            "runtime: envoy",
            "fail_opn: true\n                  runtime: envoy",
        );
        let e = parse(&bad).expect_err("must fail");
        assert_eq!(
            e.path,
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.config.vm_config.fail_opn"
        );
    }

    #[test]
    fn codec_type_chooses_the_http_versions() {
        let codec = |c: &str| {
            parse(&GOOD.replace("codec_type: AUTO", &format!("codec_type: {c}")))
                .map(|cfg| cfg.listeners[0].codec)
        };
        assert_eq!(parse(GOOD).expect("valid").listeners[0].codec, Codec::Auto);
        assert_eq!(codec("HTTP1").expect("valid"), Codec::Http1);
        assert_eq!(codec("HTTP2").expect("valid"), Codec::Http2);
        let e = codec("HTTP3").expect_err("HTTP/3 needs QUIC");
        assert_eq!(
            e.path,
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.codec_type"
        );
        assert!(e.to_string().contains("AUTO, HTTP1, HTTP2"), "{e}");
    }

    #[test]
    fn unknown_cluster_and_bad_types_are_rejected() {
        let e =
            parse(&GOOD.replace("{cluster: upstream,", "{cluster: nope,")).expect_err("must fail");
        assert!(e.to_string().contains("unknown cluster \"nope\""), "{e}");
        let e = parse(&GOOD.replace("port_value: 10000", "port_value: x")).expect_err("must fail");
        assert_eq!(
            e.path,
            "static_resources.listeners[0].address.socket_address.port_value"
        );
        let e = parse(&GOOD.replace("connect_timeout: 0.25s", "connect_timeout: soon"))
            .expect_err("fail");
        assert_eq!(e.path, "static_resources.clusters[0].connect_timeout");
    }

    /// Durations are read as Envoy reads them (checked with `envoy --mode validate`): digits
    /// with at most nine decimals, no sign or exponent, at most 9223372035 s. An out-of-range one
    /// used to panic in `Duration::from_secs_f64`. `connect_timeout` must be above zero.
    #[test]
    fn durations_follow_envoys_rules_and_a_zero_connect_timeout_is_rejected() {
        let route = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.timeout";
        let timeout = |t: &str| {
            parse(&GOOD.replace("timeout: 2.5s", &format!("timeout: {t}")))
                .map(|c| c.listeners[0].virtual_hosts[0].routes[0].timeout)
        };
        for bad in [
            "1e20s",
            "99999999999999999999s",
            "9223372036s",
            "1e3s",
            "-1s",
            ".5s",
            "1.s",
            "1.1234567891s",
            "5",
        ] {
            let e = timeout(bad).expect_err(bad);
            assert_eq!(e.path, route, "{bad}: {e}");
        }
        assert_eq!(
            timeout("9223372035s").expect("Envoy's largest"),
            Duration::from_secs(9_223_372_035)
        );
        assert_eq!(
            timeout("1.123456789s").expect("nine decimals"),
            Duration::new(1, 123_456_789)
        );
        assert_eq!(
            timeout("01s").expect("leading zero"),
            Duration::from_secs(1)
        );
        assert_eq!(timeout("0s").expect("no timeout"), Duration::ZERO);
        let e = parse(&GOOD.replace("connect_timeout: 0.25s", "connect_timeout: 0s"))
            .expect_err("Envoy requires connect_timeout > 0");
        assert_eq!(e.path, "static_resources.clusters[0].connect_timeout");
    }

    /// Envoy refuses a domain that appears twice in one route configuration.
    #[test]
    fn duplicate_domains_are_rejected() {
        let twice = GOOD.replace(
            "            - name: all\n              domains: [\"*\"]\n",
            "            - name: other\n              domains: [\"a.test\", \"*\"]\n              routes: []\n            - name: all\n              domains: [\"A.test\"]\n",
        );
        assert_ne!(twice, GOOD);
        let e = parse(&twice).expect_err("duplicate domain");
        assert_eq!(
            e.path,
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[1].domains[0]"
        );
        assert!(e.to_string().contains("duplicate domain"), "{e}");
    }

    /// Envoy chooses an HTTP filter by its typed_config's type, whatever its name.
    #[test]
    fn http_filters_are_chosen_by_type_not_name() {
        let renamed = GOOD
            .replace("- name: envoy.filters.http.wasm", "- name: keyrealm-auth")
            .replace("- name: envoy.filters.http.router", "- name: my-router");
        assert_ne!(renamed, GOOD);
        let c = parse(&renamed).expect("Envoy accepts any filter name");
        assert_eq!(c.listeners[0].wasm_filters.len(), 1);
        let e = parse(&GOOD.replace(
            "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        ))
        .expect_err("an unsupported filter type");
        assert_eq!(
            e.path,
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.@type"
        );
    }
}
