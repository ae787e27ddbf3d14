//! The filter's counters. The adapter defines them through the proxy-wasm metrics ABI; Envoy
//! shows them as `wasmcustom.<name>` (Prometheus: `envoy_wasmcustom_<name>`), see
//! `docs/configuration.md`.

/// A counter the filter increments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Authenticated by a control-plane consumer of the configuration.
    RequestsAuthenticatedCp,
    /// Authenticated by a realm consumer (fresh or stale cache entry, or a realm answer).
    RequestsAuthenticatedRealm,
    /// Failed authentication, continued as the anonymous consumer.
    RequestsAnonymous,
    /// `OPTIONS` passed without authentication (`run_on_preflight: false`).
    RequestsPreflight,
    /// 401 `No API key found in request`.
    RequestsNoKey,
    /// 401 `Duplicate API key found`.
    RequestsDuplicate,
    /// 401 `Unauthorized`.
    RequestsUnauthorized,
    /// 503 `Identity realm unavailable`.
    RequestsUnavailable,
    /// 500: `anonymous` names no consumer.
    RequestsAnonymousMissing,
    /// Realm calls answered 201.
    RealmCallsFound,
    /// Realm calls answered 404.
    RealmCallsNotFound,
    /// Realm calls that failed (timeout, connection failure, 401/403/5xx, malformed answer).
    RealmCallsUnavailable,
    /// Requests that waited for a call already under way for the same key instead of calling.
    RealmCallsCoalesced,
    /// Realm look-ups answered from the cache (found or not found).
    CacheHit,
    /// Realm look-ups the cache could not answer.
    CacheMiss,
    /// Requests authenticated by a stale entry while the realm was unavailable.
    CacheStale,
}

impl Metric {
    pub const ALL: [Metric; 16] = [
        Metric::RequestsAuthenticatedCp,
        Metric::RequestsAuthenticatedRealm,
        Metric::RequestsAnonymous,
        Metric::RequestsPreflight,
        Metric::RequestsNoKey,
        Metric::RequestsDuplicate,
        Metric::RequestsUnauthorized,
        Metric::RequestsUnavailable,
        Metric::RequestsAnonymousMissing,
        Metric::RealmCallsFound,
        Metric::RealmCallsNotFound,
        Metric::RealmCallsUnavailable,
        Metric::RealmCallsCoalesced,
        Metric::CacheHit,
        Metric::CacheMiss,
        Metric::CacheStale,
    ];

    /// The metric's name as defined through the ABI.
    pub fn name(self) -> &'static str {
        match self {
            Metric::RequestsAuthenticatedCp => "keyrealm_requests_authenticated_cp",
            Metric::RequestsAuthenticatedRealm => "keyrealm_requests_authenticated_realm",
            Metric::RequestsAnonymous => "keyrealm_requests_anonymous",
            Metric::RequestsPreflight => "keyrealm_requests_preflight",
            Metric::RequestsNoKey => "keyrealm_requests_no_key",
            Metric::RequestsDuplicate => "keyrealm_requests_duplicate",
            Metric::RequestsUnauthorized => "keyrealm_requests_unauthorized",
            Metric::RequestsUnavailable => "keyrealm_requests_unavailable",
            Metric::RequestsAnonymousMissing => "keyrealm_requests_anonymous_missing",
            Metric::RealmCallsFound => "keyrealm_realm_calls_found",
            Metric::RealmCallsNotFound => "keyrealm_realm_calls_not_found",
            Metric::RealmCallsUnavailable => "keyrealm_realm_calls_unavailable",
            Metric::RealmCallsCoalesced => "keyrealm_realm_calls_coalesced",
            Metric::CacheHit => "keyrealm_cache_hit",
            Metric::CacheMiss => "keyrealm_cache_miss",
            Metric::CacheStale => "keyrealm_cache_stale",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}
