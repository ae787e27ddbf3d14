//! The state every filter configuration and every worker of one proxy shares: realm answers,
//! negative entries and look-ups in flight. VM-wide in wasm (one VM per Envoy worker thread,
//! shared by all its root contexts, so a configuration change keeps them); process-wide in the
//! native module (shared by all worker threads, so a key costs one authenticate call per ttl per
//! process).
//!
//! Thread-safe without a global lock on the request path: the cache and the look-ups are split
//! in shards by key digest, each behind its own lock (a read lock for a cache hit). The registry
//! of realm numbers is locked only when a configuration is taken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::cache::{CacheKey, Cached, CredentialCache};
use crate::engine::lookups::Lookups;
use crate::identity::Identity;
use crate::sha256::{sha256, Digest};

/// Shards for a process shared by several threads.
pub const PROCESS_SHARDS: usize = 64;

/// Realm answers and negative entries, sharded.
pub struct SharedCache {
    shards: Box<[RwLock<CredentialCache>]>,
}

impl SharedCache {
    fn new(shards: usize) -> SharedCache {
        SharedCache {
            shards: (0..shards.max(1))
                .map(|_| RwLock::new(CredentialCache::new(0, 0)))
                .collect(),
        }
    }

    fn index(&self, key: &CacheKey) -> usize {
        usize::from(key.digest[9]) % self.shards.len()
    }

    fn read(&self, key: &CacheKey) -> RwLockReadGuard<'_, CredentialCache> {
        self.shards[self.index(key)]
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, key: &CacheKey) -> RwLockWriteGuard<'_, CredentialCache> {
        self.shards[self.index(key)]
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Bounds of the whole cache; each shard holds its share (rounded up).
    pub fn set_limits(&self, max_found: usize, max_not_found: usize) {
        let n = self.shards.len();
        for shard in self.shards.iter() {
            shard
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .set_limits(max_found.div_ceil(n), max_not_found.div_ceil(n));
        }
    }

    pub fn lookup(&self, key: &CacheKey, now_ms: u64) -> Cached {
        self.read(key).lookup(key, now_ms)
    }

    pub fn stale(&self, key: &CacheKey, now_ms: u64, stale_ms: u64) -> Option<Arc<Identity>> {
        self.read(key).stale(key, now_ms, stale_ms)
    }

    pub fn insert_found(
        &self,
        key: CacheKey,
        identity: Arc<Identity>,
        ttl_ms: u64,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) {
        self.write(&key)
            .insert_found(key, identity, ttl_ms, expires_at_ms, now_ms);
    }

    pub fn insert_not_found(&self, key: CacheKey, negative_ttl_ms: u64, now_ms: u64) {
        self.write(&key)
            .insert_not_found(key, negative_ttl_ms, now_ms);
    }

    pub fn len_found(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len_found())
            .sum()
    }

    pub fn len_not_found(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len_not_found())
            .sum()
    }
}

/// Numbers for what cache keys and look-up keys name, so that keys stay small and `Copy`.
#[derive(Default)]
struct Registry {
    realms: HashMap<Digest, u32>,
    routes: HashMap<Digest, u32>,
}

fn number(map: &mut HashMap<Digest, u32>, parts: &[&str]) -> u32 {
    let mut joined = Vec::new();
    for p in parts {
        joined.extend_from_slice(p.as_bytes());
        joined.push(0);
    }
    let next = map.len() as u32;
    *map.entry(sha256(&joined)).or_insert(next)
}

/// See the module documentation.
pub struct SharedState {
    registry: Mutex<Registry>,
    cache: SharedCache,
    lookups: Lookups,
    next_home: AtomicU32,
}

impl SharedState {
    /// `shards`: 1 where one thread uses it (a wasm VM), [`PROCESS_SHARDS`] for a process.
    pub fn new(shards: usize) -> Arc<SharedState> {
        Arc::new(SharedState {
            registry: Mutex::new(Registry::default()),
            cache: SharedCache::new(shards),
            lookups: Lookups::new(shards),
            next_home: AtomicU32::new(1),
        })
    }

    pub fn cache(&self) -> &SharedCache {
        &self.cache
    }

    pub fn lookups(&self) -> &Lookups {
        &self.lookups
    }

    /// The number of a realm as seen with one data-plane token: cache entries are per realm and
    /// per token (a realm may allow one control plane and refuse another), not per region.
    pub(crate) fn realm_number(&self, realm_id: &str, authorization: &str) -> u32 {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        number(&mut registry.realms, &[realm_id, authorization])
    }

    /// The number of a call route (realm, token, cluster, authority): look-ups are per route.
    pub(crate) fn route_number(
        &self,
        realm_id: &str,
        authorization: &str,
        cluster: &str,
        authority: &str,
    ) -> u32 {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        number(
            &mut registry.routes,
            &[realm_id, authorization, cluster, authority],
        )
    }

    /// A number for a new worker.
    pub(crate) fn new_home(&self) -> u32 {
        self.next_home.fetch_add(1, Ordering::Relaxed)
    }
}
