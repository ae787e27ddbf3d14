//! The `identity_realms` walk: which entry knows a key. Pure: it reads the configuration, the
//! shared cache and the clock, counts what it saw, and returns an outcome the worker acts on
//! (set the consumer headers, make a realm call, or answer the failure).

use std::sync::Arc;

use crate::cache::Cached;
use crate::config::{RealmRef, Source};
use crate::engine::answers::Failure;
use crate::engine::counters::Counters;
use crate::engine::filter::Filter;
use crate::engine::lookups::LookupKey;
use crate::engine::shared::SharedCache;
use crate::identity::Identity;
use crate::metrics::Metric;
use crate::sha256::Digest;

/// Where the walk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walked {
    /// A consumer (control plane, or a fresh realm cache entry).
    Authenticated(Arc<Identity>),
    /// `identity_realms[source]` is a realm the cache cannot answer for: its answer is needed.
    NeedsCall {
        source: usize,
        key: LookupKey,
        realm: Arc<RealmRef>,
    },
    /// No entry knows the key (`Unauthorized`), or a realm that might could not answer
    /// (`Unavailable`).
    Failed(Failure),
}

/// Tries the entries of `filter`'s `identity_realms` from `from` on. `unavailable`: an entry
/// before `from` could not answer. `now` reads the clock (only when an entry needs it).
pub fn walk(
    filter: &Filter,
    cache: &SharedCache,
    digest: &Digest,
    from: usize,
    unavailable: bool,
    now: &mut dyn FnMut() -> u64,
    counters: &mut Counters,
) -> Walked {
    let config = filter.config();
    for (source, entry) in config.sources.iter().enumerate().skip(from) {
        match entry {
            Source::ControlPlane => {
                if let Some(cred) = config.credentials.get(digest) {
                    if cred.expires_at_ms.map(|e| now() < e).unwrap_or(true) {
                        counters.add(Metric::RequestsAuthenticatedCp);
                        return Walked::Authenticated(cred.identity.clone());
                    }
                }
            }
            Source::Realm(realm) => {
                let key = filter.lookup_key(source, *digest);
                match cache.lookup(&key.cache, now()) {
                    Cached::Found(identity) => {
                        counters.add(Metric::CacheHit);
                        counters.add(Metric::RequestsAuthenticatedRealm);
                        return Walked::Authenticated(identity);
                    }
                    Cached::NotFound => counters.add(Metric::CacheHit),
                    Cached::Miss => {
                        counters.add(Metric::CacheMiss);
                        return Walked::NeedsCall {
                            source,
                            key,
                            realm: realm.clone(),
                        };
                    }
                }
            }
        }
    }
    Walked::Failed(if unavailable {
        Failure::Unavailable
    } else {
        Failure::Unauthorized
    })
}

/// A found entry past its ttl but within `stale_if_error_seconds`, for a realm that could not
/// answer.
pub fn stale(
    filter: &Filter,
    cache: &SharedCache,
    key: &LookupKey,
    now_ms: u64,
) -> Option<Arc<Identity>> {
    let stale_ms = filter.config().realm_service.as_ref()?.stale_if_error_ms;
    cache.stale(&key.cache, now_ms, stale_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::engine::shared::SharedState;
    use crate::sha256::sha256;

    const REALM: &str = "11111111-1111-4111-8111-111111111111";

    fn filter(shared: &SharedState, sources: &str) -> Arc<Filter> {
        let json = format!(
            r#"{{"identity_realms":[{sources}],
                "consumers":[{{"id":"c","username":"u","keyauth_credentials":[{{"id":"k","key":"cp-key"}}]}}],
                "realm_service":{{"clusters":{{"us":"realm_us","eu":"realm_eu"}},"token":"t"}}}}"#
        );
        Filter::new(parse(json.as_bytes(), 0, &|_| None).unwrap(), shared)
    }

    fn realm(region: &str) -> String {
        format!(r#"{{"scope":"realm","id":"{REALM}","region":"{region}"}}"#)
    }

    #[test]
    fn the_walk_goes_in_order_and_stops_at_the_first_miss() {
        let shared = SharedState::new(1);
        let f = filter(
            &shared,
            &format!(r#"{},{{"scope":"cp"}},{}"#, realm("us"), realm("eu")),
        );
        let mut counters = Counters::default();
        let mut reads = 0;
        let mut now = || {
            reads += 1;
            1_000
        };
        let cp = sha256(b"cp-key");
        let Walked::NeedsCall { source, key, realm } =
            walk(&f, shared.cache(), &cp, 0, false, &mut now, &mut counters)
        else {
            panic!("the realm comes first")
        };
        assert_eq!((source, realm.cluster.as_str()), (0, "realm_us"));
        // The realm said "not found": the cp entry knows the key.
        shared.cache().insert_not_found(key.cache, 60_000, 1_000);
        let w = walk(&f, shared.cache(), &cp, 0, false, &mut now, &mut counters);
        assert!(matches!(w, Walked::Authenticated(i) if i.consumer_id == "c"));
        // A key nobody knows, after "us" was unavailable: "eu" is asked next (another route,
        // the same cache entry), and then the failure is "unavailable".
        let other = sha256(b"other");
        let Walked::NeedsCall {
            source, key: eu, ..
        } = walk(&f, shared.cache(), &other, 1, true, &mut now, &mut counters)
        else {
            panic!()
        };
        assert_eq!(source, 2);
        let us = f.lookup_key(0, other);
        assert_eq!(us.cache, eu.cache, "one cache entry per realm and key");
        assert_ne!(us.route, eu.route, "one look-up per region");
        assert_eq!(
            walk(&f, shared.cache(), &other, 3, true, &mut now, &mut counters),
            Walked::Failed(Failure::Unavailable)
        );
        assert_eq!(
            walk(
                &f,
                shared.cache(),
                &other,
                3,
                false,
                &mut now,
                &mut counters
            ),
            Walked::Failed(Failure::Unauthorized)
        );
        let mut seen = Vec::new();
        counters.drain(|m, n| seen.push((m, n)));
        assert!(seen.contains(&(Metric::CacheMiss, 2)));
        assert!(seen.contains(&(Metric::RequestsAuthenticatedCp, 1)));
    }

    #[test]
    fn a_cp_key_without_ttl_does_not_read_the_clock() {
        let shared = SharedState::new(1);
        let f = filter(&shared, r#"{"scope":"cp"}"#);
        let mut counters = Counters::default();
        let mut now = || -> u64 { panic!("clock read") };
        let w = walk(
            &f,
            shared.cache(),
            &sha256(b"cp-key"),
            0,
            false,
            &mut now,
            &mut counters,
        );
        assert!(matches!(w, Walked::Authenticated(_)));
    }
}
