//! The plugin configuration: parsed once in `on_configure`, validated, and turned into the
//! structures the request path uses (hashed credential index, precomputed header names and
//! `WWW-Authenticate` value, resolved clusters and authenticate paths).
//!
//! Every refusal is a [`ConfigError`] naming the field (`identity_realms[1].region`) and the reason.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::identity::Identity;
use crate::sha256::{parse_sha256_hex, sha256, Digest};

/// A refused configuration: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------------------------
// The JSON shape. Every field is optional and `null` means "the default", as in a decK file.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    key_names: Option<Vec<String>>,
    #[serde(default)]
    key_in_header: Option<bool>,
    #[serde(default)]
    key_in_query: Option<bool>,
    #[serde(default)]
    key_in_body: Option<bool>,
    #[serde(default)]
    hide_credentials: Option<bool>,
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default)]
    run_on_preflight: Option<bool>,
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    identity_realms: Option<Vec<RawIdentityRealm>>,
    #[serde(default)]
    consumers: Option<Vec<RawConsumer>>,
    #[serde(default)]
    realm_service: Option<RawRealmService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentityRealm {
    scope: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsumer {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    custom_id: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    keyauth_credentials: Option<Vec<RawCredential>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    #[serde(default)]
    id: Option<String>,
    key: String,
    #[serde(default)]
    ttl: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)] // accepted for decK compatibility; not used by the filter
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRealmService {
    #[serde(default)]
    clusters: Option<HashMap<String, String>>,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    stale_if_error_seconds: Option<u64>,
    #[serde(default)]
    max_cached_found: Option<usize>,
    #[serde(default)]
    max_cached_not_found: Option<usize>,
}

// ---------------------------------------------------------------------------------------------
// The validated configuration.
// ---------------------------------------------------------------------------------------------

pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
pub const MAX_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_STALE_IF_ERROR_SECONDS: u64 = 300;
pub const DEFAULT_MAX_CACHED: usize = 10_000;
pub const MAX_CACHED_LIMIT: usize = 10_000_000;

/// One entry of `key_names`.
#[derive(Debug, Clone)]
pub struct KeyName {
    /// As configured: matched exactly in the query string and the body.
    pub name: String,
    /// Lower case with `_` replaced by `-`: how header names are compared.
    pub header_form: String,
}

/// Where consumers come from, in priority order.
#[derive(Debug, Clone)]
pub enum Source {
    /// The `consumers` of this configuration.
    ControlPlane,
    /// A realm of the realm service.
    Realm(Arc<RealmRef>),
}

/// A realm entry of `identity_realms`, resolved against `realm_service`.
#[derive(Debug, PartialEq, Eq)]
pub struct RealmRef {
    pub id: String,
    pub region: Option<String>,
    pub cluster: String,
    pub authority: String,
    /// `/<realm id>/v0/authenticate`.
    pub path: String,
}

/// A control-plane credential, indexed by the SHA-256 of its key.
#[derive(Debug, Clone)]
pub struct CpCredential {
    pub identity: Arc<Identity>,
    /// Milliseconds since the Unix epoch after which the key is unknown.
    pub expires_at_ms: Option<u64>,
}

/// `realm_service`, resolved.
#[derive(Debug, Clone)]
pub struct RealmService {
    pub timeout_ms: u64,
    /// `Bearer <data-plane token>`.
    pub authorization: String,
    pub stale_if_error_ms: u64,
    pub max_cached_found: usize,
    pub max_cached_not_found: usize,
}

/// `anonymous`, with the consumer it names (if any: naming nobody is a 500 at request time).
#[derive(Debug, Clone)]
pub struct Anonymous {
    pub value: String,
    pub identity: Option<Arc<Identity>>,
}

/// The validated configuration the request path works from.
#[derive(Debug)]
pub struct Config {
    pub key_names: Vec<KeyName>,
    pub key_in_header: bool,
    pub key_in_query: bool,
    pub key_in_body: bool,
    pub hide_credentials: bool,
    pub run_on_preflight: bool,
    pub anonymous: Option<Anonymous>,
    /// `Key` or `Key realm="<realm>"`.
    pub www_authenticate: String,
    pub sources: Vec<Source>,
    pub credentials: HashMap<Digest, CpCredential>,
    pub realm_service: Option<RealmService>,
}

impl Config {
    /// The configuration with every default (an empty configuration document).
    pub fn defaults() -> Result<Config, ConfigError> {
        parse(b"{}", 0, &|_| None)
    }

    pub fn has_realms(&self) -> bool {
        self.sources.iter().any(|s| matches!(s, Source::Realm(_)))
    }
}

fn is_key_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Characters allowed in a value that ends up in an HTTP header or a request path.
fn is_header_safe(s: &str) -> bool {
    s.bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80)
}

fn is_path_segment_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// Parses and validates a configuration document.
///
/// `now_ms` is when the configuration is taken (credential `ttl`s count from it); `env` reads an
/// environment variable (for `realm_service.token_env`).
pub fn parse(
    bytes: &[u8],
    now_ms: u64,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let raw: RawConfig = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        RawConfig::default()
    } else {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError::new("configuration", format!("not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(ConfigError::new("configuration", "must be a JSON object"));
        }
        match serde_path_to_error::deserialize::<_, RawConfig>(value) {
            Ok(raw) => raw,
            Err(err) => {
                let path = err.path().to_string();
                let field = if path == "." || path == "?" || path.is_empty() {
                    "configuration".to_string()
                } else {
                    path
                };
                return Err(ConfigError::new(field, err.inner().to_string()));
            }
        }
    };
    validate(raw, now_ms, env)
}

fn validate(
    raw: RawConfig,
    now_ms: u64,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    // key_names
    let names = raw.key_names.unwrap_or_else(|| vec!["apikey".to_string()]);
    if names.is_empty() {
        return Err(ConfigError::new("key_names", "must hold at least one name"));
    }
    let mut key_names = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        if name.is_empty() {
            return Err(ConfigError::new(
                format!("key_names[{i}]"),
                "must not be empty",
            ));
        }
        if !name.chars().all(is_key_name_char) {
            return Err(ConfigError::new(
                format!("key_names[{i}]"),
                format!("{name:?} may contain only A-Z a-z 0-9 _ -"),
            ));
        }
        let header_form = name.to_ascii_lowercase().replace('_', "-");
        key_names.push(KeyName { name, header_form });
    }

    // realm -> WWW-Authenticate
    let www_authenticate = match raw.realm {
        None => "Key".to_string(),
        Some(realm) => {
            if realm.contains('"') || realm.contains('\\') || !is_header_safe(&realm) {
                return Err(ConfigError::new(
                    "realm",
                    "must not contain double quotes, backslashes or control characters",
                ));
            }
            format!("Key realm=\"{realm}\"")
        }
    };

    // consumers
    let mut identities: Vec<Arc<Identity>> = Vec::new();
    let mut credentials: HashMap<Digest, CpCredential> = HashMap::new();
    let mut consumer_ids: HashSet<String> = HashSet::new();
    let mut usernames: HashSet<String> = HashSet::new();
    let mut custom_ids: HashSet<String> = HashSet::new();
    let mut credential_ids: HashSet<String> = HashSet::new();
    for (ci, consumer) in raw.consumers.unwrap_or_default().into_iter().enumerate() {
        let field = |f: &str| format!("consumers[{ci}].{f}");
        let id = match consumer.id {
            Some(id) if !id.is_empty() => id,
            _ => return Err(ConfigError::new(field("id"), "is required")),
        };
        for (name, value) in [
            ("id", Some(&id)),
            ("username", consumer.username.as_ref()),
            ("custom_id", consumer.custom_id.as_ref()),
        ] {
            if let Some(v) = value {
                if v.is_empty() {
                    return Err(ConfigError::new(field(name), "must not be empty"));
                }
                if !is_header_safe(v) {
                    return Err(ConfigError::new(
                        field(name),
                        "must not contain control characters",
                    ));
                }
            }
        }
        if consumer.username.is_none() && consumer.custom_id.is_none() {
            return Err(ConfigError::new(
                format!("consumers[{ci}]"),
                "needs a username or a custom_id",
            ));
        }
        if !consumer_ids.insert(id.clone()) {
            return Err(ConfigError::new(
                field("id"),
                format!("{id:?} is used by another consumer"),
            ));
        }
        if let Some(username) = &consumer.username {
            if !usernames.insert(username.clone()) {
                return Err(ConfigError::new(
                    field("username"),
                    format!("{username:?} is used by another consumer"),
                ));
            }
        }
        if let Some(custom_id) = &consumer.custom_id {
            if !custom_ids.insert(custom_id.clone()) {
                return Err(ConfigError::new(
                    field("custom_id"),
                    format!("{custom_id:?} is used by another consumer"),
                ));
            }
        }
        let _ = consumer.tags;
        let identity = Arc::new(Identity {
            consumer_id: id,
            username: consumer.username,
            custom_id: consumer.custom_id,
            credential_id: None,
            groups: None,
        });
        identities.push(identity.clone());
        for (ki, cred) in consumer
            .keyauth_credentials
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let cfield = |f: &str| format!("consumers[{ci}].keyauth_credentials[{ki}].{f}");
            let cred_id = match cred.id {
                Some(id) if !id.is_empty() => id,
                _ => return Err(ConfigError::new(cfield("id"), "is required")),
            };
            if !is_header_safe(&cred_id) {
                return Err(ConfigError::new(
                    cfield("id"),
                    "must not contain control characters",
                ));
            }
            if !credential_ids.insert(cred_id.clone()) {
                return Err(ConfigError::new(
                    cfield("id"),
                    format!("{cred_id:?} is used by another credential"),
                ));
            }
            let digest = if let Some(hex) = cred.key.strip_prefix("sha256:") {
                parse_sha256_hex(hex).ok_or_else(|| {
                    ConfigError::new(cfield("key"), "sha256: must be followed by 64 hex digits")
                })?
            } else if cred.key.is_empty() {
                return Err(ConfigError::new(cfield("key"), "must not be empty"));
            } else {
                sha256(cred.key.as_bytes())
            };
            let expires_at_ms = match cred.ttl {
                None => None,
                Some(0) => {
                    return Err(ConfigError::new(
                        cfield("ttl"),
                        "must be at least 1 second (or null: no expiry)",
                    ))
                }
                Some(ttl) => Some(now_ms.saturating_add(ttl.saturating_mul(1000))),
            };
            let identity = Arc::new(Identity {
                credential_id: Some(cred_id),
                ..(*identity).clone()
            });
            if credentials
                .insert(
                    digest,
                    CpCredential {
                        identity,
                        expires_at_ms,
                    },
                )
                .is_some()
            {
                return Err(ConfigError::new(
                    cfield("key"),
                    "the same key is given to another credential",
                ));
            }
        }
    }

    // anonymous: by id first, then by username (like Kong).
    let anonymous = match raw.anonymous {
        None => None,
        Some(value) if value.is_empty() => None,
        Some(value) => {
            let identity = identities
                .iter()
                .find(|c| c.consumer_id == value)
                .or_else(|| {
                    identities
                        .iter()
                        .find(|c| c.username.as_deref() == Some(value.as_str()))
                })
                .cloned();
            Some(Anonymous { value, identity })
        }
    };

    // realm_service (validated whenever present)
    let realm_service_raw = raw.realm_service;
    let mut clusters: HashMap<String, String> = HashMap::new();
    let mut authority: Option<String> = None;
    let mut realm_service: Option<RealmService> = None;
    let entries = raw.identity_realms.unwrap_or_else(|| {
        vec![RawIdentityRealm {
            scope: "cp".to_string(),
            id: None,
            region: None,
        }]
    });
    let needs_realm_service = entries.iter().any(|e| e.scope == "realm");
    if let Some(rs) = realm_service_raw {
        let rs_clusters = rs.clusters.unwrap_or_default();
        for (region, cluster) in &rs_clusters {
            if cluster.is_empty() {
                return Err(ConfigError::new(
                    format!("realm_service.clusters.{region}"),
                    "cluster name must not be empty",
                ));
            }
        }
        clusters = rs_clusters;
        if let Some(a) = rs.authority {
            if a.is_empty() || !is_header_safe(&a) || a.contains(' ') {
                return Err(ConfigError::new(
                    "realm_service.authority",
                    "must be a non-empty host[:port] without spaces or control characters",
                ));
            }
            authority = Some(a);
        }
        let timeout_ms = rs.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
            return Err(ConfigError::new(
                "realm_service.timeout_ms",
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        let max_found = rs.max_cached_found.unwrap_or(DEFAULT_MAX_CACHED);
        if max_found > MAX_CACHED_LIMIT {
            return Err(ConfigError::new(
                "realm_service.max_cached_found",
                format!("must be at most {MAX_CACHED_LIMIT}"),
            ));
        }
        let max_not_found = rs.max_cached_not_found.unwrap_or(DEFAULT_MAX_CACHED);
        if max_not_found > MAX_CACHED_LIMIT {
            return Err(ConfigError::new(
                "realm_service.max_cached_not_found",
                format!("must be at most {MAX_CACHED_LIMIT}"),
            ));
        }
        let stale = rs
            .stale_if_error_seconds
            .unwrap_or(DEFAULT_STALE_IF_ERROR_SECONDS);
        // The token: exactly one of `token` and `token_env`, needed only when a realm is used.
        let token = match (rs.token, rs.token_env) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "realm_service.token",
                    "give either token or token_env, not both",
                ))
            }
            (Some(token), None) => {
                if token.is_empty() {
                    return Err(ConfigError::new("realm_service.token", "must not be empty"));
                }
                Some(("realm_service.token", token))
            }
            (None, Some(var)) => {
                if var.is_empty() {
                    return Err(ConfigError::new(
                        "realm_service.token_env",
                        "must name an environment variable",
                    ));
                }
                if needs_realm_service {
                    match env(&var) {
                        Some(token) if !token.is_empty() => Some(("realm_service.token_env", token)),
                        _ => {
                            return Err(ConfigError::new(
                                "realm_service.token_env",
                                format!(
                                    "environment variable {var} is not set or empty \
                                     (with Envoy, list it in vm_config.environment_variables.host_env_keys)"
                                ),
                            ))
                        }
                    }
                } else {
                    None
                }
            }
            (None, None) => {
                if needs_realm_service {
                    return Err(ConfigError::new(
                        "realm_service",
                        "one of token or token_env is required",
                    ));
                }
                None
            }
        };
        let authorization = match token {
            Some((field, token)) => {
                if !token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                    return Err(ConfigError::new(
                        field,
                        "the token must be visible ASCII without spaces",
                    ));
                }
                format!("Bearer {token}")
            }
            None => String::new(),
        };
        realm_service = Some(RealmService {
            timeout_ms,
            authorization,
            stale_if_error_ms: stale.saturating_mul(1000),
            max_cached_found: max_found,
            max_cached_not_found: max_not_found,
        });
    }

    // identity_realms
    if entries.is_empty() {
        return Err(ConfigError::new(
            "identity_realms",
            "must hold at least one entry",
        ));
    }
    let mut sources = Vec::with_capacity(entries.len());
    let mut seen: HashSet<(String, Option<String>)> = HashSet::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let field = |f: &str| format!("identity_realms[{i}].{f}");
        match entry.scope.as_str() {
            "cp" => {
                if entry.id.is_some() {
                    return Err(ConfigError::new(field("id"), "must be null for scope cp"));
                }
                if entry.region.is_some() {
                    return Err(ConfigError::new(
                        field("region"),
                        "must be null for scope cp",
                    ));
                }
                if !seen.insert(("cp".to_string(), None)) {
                    return Err(ConfigError::new(
                        format!("identity_realms[{i}]"),
                        "scope cp is listed twice",
                    ));
                }
                sources.push(Source::ControlPlane);
            }
            "realm" => {
                let id = match entry.id {
                    Some(id) => id,
                    None => {
                        return Err(ConfigError::new(field("id"), "is required for scope realm"))
                    }
                };
                if !is_path_segment_safe(&id) {
                    return Err(ConfigError::new(
                        field("id"),
                        "must be a realm id (letters, digits, - _ . ~)",
                    ));
                }
                if !seen.insert((id.clone(), entry.region.clone())) {
                    return Err(ConfigError::new(
                        format!("identity_realms[{i}]"),
                        format!("realm {id} is listed twice"),
                    ));
                }
                if realm_service.is_none() {
                    return Err(ConfigError::new(
                        "realm_service",
                        "is required when identity_realms has a realm entry",
                    ));
                }
                let region_key = entry
                    .region
                    .clone()
                    .unwrap_or_else(|| "default".to_string());
                let cluster = match clusters.get(&region_key) {
                    Some(c) => c.clone(),
                    None => {
                        return Err(ConfigError::new(
                            field("region"),
                            format!(
                                "no cluster for region {region_key:?} in realm_service.clusters"
                            ),
                        ))
                    }
                };
                let path = format!("/{id}/v0/authenticate");
                sources.push(Source::Realm(Arc::new(RealmRef {
                    authority: authority.clone().unwrap_or_else(|| cluster.clone()),
                    id,
                    region: entry.region,
                    cluster,
                    path,
                })));
            }
            other => {
                return Err(ConfigError::new(
                    field("scope"),
                    format!("{other:?} is not one of \"cp\", \"realm\""),
                ))
            }
        }
    }

    Ok(Config {
        key_names,
        key_in_header: raw.key_in_header.unwrap_or(true),
        key_in_query: raw.key_in_query.unwrap_or(true),
        key_in_body: raw.key_in_body.unwrap_or(false),
        hide_credentials: raw.hide_credentials.unwrap_or(true),
        run_on_preflight: raw.run_on_preflight.unwrap_or(true),
        anonymous,
        www_authenticate,
        sources,
        credentials,
        realm_service,
    })
}
