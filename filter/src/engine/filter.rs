//! One filter configuration as the engine runs it (a root context in wasm, a filter config in
//! the native module): the validated [`Config`] and the numbers its realm entries have in the
//! [`SharedState`]. Immutable once made, so it is shared by every request and thread using it.

use std::sync::Arc;

use crate::cache::CacheKey;
use crate::config::{Config, Source};
use crate::engine::lookups::LookupKey;
use crate::engine::shared::SharedState;
use crate::sha256::Digest;

#[derive(Debug, Clone, Copy, Default)]
struct RealmNumbers {
    realm: u32,
    route: u32,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Filter {
    config: Config,
    /// Per `identity_realms` entry (unused for `cp` entries).
    numbers: Vec<RealmNumbers>,
}

impl Filter {
    /// Takes a configuration into `shared`. A configuration with a `realm_service` sets the
    /// bounds of the shared cache (the most recent one wins); entries already cached for the same
    /// realm and token are kept.
    pub fn new(config: Config, shared: &SharedState) -> Arc<Filter> {
        let authorization = config
            .realm_service
            .as_ref()
            .map_or("", |rs| rs.authorization.as_str());
        let numbers = config
            .sources
            .iter()
            .map(|source| match source {
                Source::ControlPlane => RealmNumbers::default(),
                Source::Realm(r) => RealmNumbers {
                    realm: shared.realm_number(&r.id, authorization),
                    route: shared.route_number(&r.id, authorization, &r.cluster, &r.authority),
                },
            })
            .collect();
        if let Some(rs) = &config.realm_service {
            shared
                .cache()
                .set_limits(rs.max_cached_found, rs.max_cached_not_found);
        }
        Arc::new(Filter { config, numbers })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the engine needs its tick for this configuration (realm calls to watch, bodies
    /// to wait for). Counters are flushed on the tick too.
    pub fn needs_tick(&self) -> bool {
        self.config.has_realms() || self.config.key_in_body
    }

    /// The look-up key of `identity_realms[source]` for a key digest.
    pub(crate) fn lookup_key(&self, source: usize, digest: Digest) -> LookupKey {
        let n = self.numbers.get(source).copied().unwrap_or_default();
        LookupKey {
            cache: CacheKey {
                realm: n.realm,
                digest,
            },
            route: n.route,
        }
    }
}
