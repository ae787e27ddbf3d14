//! The in-process cache that lets the authenticate path answer without touching the database.
//!
//! It holds four maps: data-plane token hash → control plane, admin token hashes, realm id →
//! the realm's policy, and (realm id, sha256(secret)) → the finished 201 body (or "not found").
//! None holds a plaintext secret.
//!
//! On PostgreSQL, other replicas write too: each write `NOTIFY`s inside its transaction, and a
//! listener task calls [`AuthCache::invalidate`] when it hears one. While the listener is
//! disconnected the cache is suspended ([`AuthCache::suspend`]) and every look-up reads the
//! database; it resumes (empty) once the listener is back.
//!
//! Invalidation is deliberately blunt: every committed write clears all of it and bumps a
//! generation number. A look-up that missed remembers the generation it started under and may
//! store its answer only if no write committed meanwhile, so an answer read before a delete can
//! never be stored after it. Writes are admin operations, rare next to look-ups, so a cold cache
//! after each one costs little, and no write path can forget to invalidate.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use parking_lot::RwLock;
use uuid::Uuid;

use crate::secrets::SecretHash;

/// Most entries each map keeps; when full, it is emptied (a flood of random keys cannot grow
/// memory without bound, and the next look-ups refill it).
const MAX_ENTRIES: usize = 200_000;

/// What the authenticate path needs to know about a realm.
#[derive(Debug, Clone)]
pub struct RealmPolicy {
    pub allow_all_control_planes: bool,
    pub allowed_control_planes: HashSet<Uuid>,
    pub ttl: i64,
    pub negative_ttl: i64,
    pub consumer_groups: Vec<String>,
}

impl RealmPolicy {
    pub fn allows(&self, control_plane: &Uuid) -> bool {
        self.allow_all_control_planes || self.allowed_control_planes.contains(control_plane)
    }
}

/// A cached answer for (realm, secret).
#[derive(Debug, Clone)]
pub enum KeyAnswer {
    /// The serialized 201 body, and the key's expiry (Unix seconds) if it has one.
    Found {
        body: Bytes,
        expires_at: Option<i64>,
    },
    NotFound,
}

/// What [`AuthCache::lookup`] found (None: not cached).
pub struct Snapshot {
    pub control_plane: Option<Uuid>,
    pub realm: Option<Option<Arc<RealmPolicy>>>,
    pub key: Option<KeyAnswer>,
}

#[derive(Default)]
struct Maps {
    tokens: HashMap<SecretHash, Uuid>,
    admin: HashSet<SecretHash>,
    realms: HashMap<Uuid, Option<Arc<RealmPolicy>>>,
    keys: HashMap<(Uuid, SecretHash), KeyAnswer>,
}

pub struct AuthCache {
    generation: AtomicU64,
    maps: RwLock<Maps>,
    /// False while a replica cannot hear other replicas' invalidations (its PostgreSQL listener
    /// is down): the cache is then neither read nor filled, and every look-up goes to the
    /// database.
    live: AtomicBool,
}

impl Default for AuthCache {
    fn default() -> Self {
        AuthCache {
            generation: AtomicU64::new(0),
            maps: RwLock::new(Maps::default()),
            live: AtomicBool::new(true),
        }
    }
}

/// The generation a look-up started under.
#[derive(Debug, Clone, Copy)]
pub struct Generation(u64);

fn bounded_insert<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.insert(key, value);
}

impl AuthCache {
    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::Acquire))
    }

    /// Forget everything (called after every committed write).
    pub fn invalidate(&self) {
        let old = {
            let mut maps = self.maps.write();
            self.generation.fetch_add(1, Ordering::AcqRel);
            std::mem::take(&mut *maps)
        };
        // Freeing up to a few hundred thousand entries happens after the lock is released, so
        // look-ups are not held up by it.
        drop(old);
    }

    /// Stops using the cache (the invalidations of other writers can no longer be heard):
    /// empties it, and until [`AuthCache::resume`] nothing is served from it or stored in it.
    pub fn suspend(&self) {
        self.live.store(false, Ordering::Release);
        self.invalidate();
    }

    /// Uses the cache again (once invalidations are heard again): empties it first, since
    /// writes made meanwhile were not heard.
    pub fn resume(&self) {
        self.invalidate();
        self.live.store(true, Ordering::Release);
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    fn store(&self, generation: Generation, f: impl FnOnce(&mut Maps)) {
        if !self.is_live() {
            return;
        }
        let mut maps = self.maps.write();
        // Checked under the write lock that `invalidate` also takes: no write committed since
        // the look-up began, so its answer is still true.
        if self.generation.load(Ordering::Acquire) == generation.0 {
            f(&mut maps);
        }
    }

    /// Everything the authenticate path may find, under one read lock: the token's control
    /// plane, and (when the request named a realm and a secret) the realm's policy and the key.
    pub fn lookup(&self, token: &SecretHash, key: Option<(&Uuid, &SecretHash)>) -> Snapshot {
        if !self.is_live() {
            return Snapshot {
                control_plane: None,
                realm: None,
                key: None,
            };
        }
        let maps = self.maps.read();
        Snapshot {
            control_plane: maps.tokens.get(token).copied(),
            realm: key.and_then(|(realm, _)| maps.realms.get(realm).cloned()),
            key: key.and_then(|(realm, hash)| maps.keys.get(&(*realm, *hash)).cloned()),
        }
    }

    pub fn token(&self, hash: &SecretHash) -> Option<Uuid> {
        if !self.is_live() {
            return None;
        }
        self.maps.read().tokens.get(hash).copied()
    }
    pub fn store_token(&self, generation: Generation, hash: SecretHash, control_plane: Uuid) {
        self.store(generation, |m| {
            bounded_insert(&mut m.tokens, hash, control_plane)
        });
    }

    pub fn is_admin(&self, hash: &SecretHash) -> bool {
        if !self.is_live() {
            return false;
        }
        self.maps.read().admin.contains(hash)
    }
    pub fn store_admin(&self, generation: Generation, hash: SecretHash) {
        self.store(generation, |m| {
            if m.admin.len() >= MAX_ENTRIES {
                m.admin.clear();
            }
            m.admin.insert(hash);
        });
    }

    /// `Some(None)`: known not to exist. `None`: not cached.
    pub fn realm(&self, id: &Uuid) -> Option<Option<Arc<RealmPolicy>>> {
        if !self.is_live() {
            return None;
        }
        self.maps.read().realms.get(id).cloned()
    }
    pub fn store_realm(&self, generation: Generation, id: Uuid, policy: Option<Arc<RealmPolicy>>) {
        self.store(generation, |m| bounded_insert(&mut m.realms, id, policy));
    }

    pub fn key(&self, realm: &Uuid, hash: &SecretHash) -> Option<KeyAnswer> {
        if !self.is_live() {
            return None;
        }
        self.maps.read().keys.get(&(*realm, *hash)).cloned()
    }
    pub fn store_key(
        &self,
        generation: Generation,
        realm: Uuid,
        hash: SecretHash,
        answer: KeyAnswer,
    ) {
        self.store(generation, |m| {
            bounded_insert(&mut m.keys, (realm, hash), answer)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspended_cache_serves_and_keeps_nothing() {
        let cache = AuthCache::default();
        let realm = Uuid::new_v4();
        let now = cache.generation();
        cache.store_key(now, realm, [1; 32], KeyAnswer::NotFound);
        cache.suspend();
        assert!(cache.key(&realm, &[1; 32]).is_none());
        let during = cache.generation();
        cache.store_key(during, realm, [2; 32], KeyAnswer::NotFound);
        assert!(cache.key(&realm, &[2; 32]).is_none());
        cache.resume();
        // An answer read while suspended is not stored after the resume either.
        cache.store_key(during, realm, [2; 32], KeyAnswer::NotFound);
        assert!(cache.key(&realm, &[2; 32]).is_none());
        let after = cache.generation();
        cache.store_key(after, realm, [2; 32], KeyAnswer::NotFound);
        assert!(cache.key(&realm, &[2; 32]).is_some());
    }

    #[test]
    fn an_answer_read_before_a_write_is_not_stored_after_it() {
        let cache = AuthCache::default();
        let realm = Uuid::new_v4();
        let before = cache.generation();
        cache.invalidate();
        cache.store_key(before, realm, [1; 32], KeyAnswer::NotFound);
        assert!(cache.key(&realm, &[1; 32]).is_none());
        let now = cache.generation();
        cache.store_key(now, realm, [1; 32], KeyAnswer::NotFound);
        assert!(matches!(
            cache.key(&realm, &[1; 32]),
            Some(KeyAnswer::NotFound)
        ));
        cache.invalidate();
        assert!(cache.key(&realm, &[1; 32]).is_none());
    }
}
