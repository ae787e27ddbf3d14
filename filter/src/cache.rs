//! The per-worker cache of realm answers.
//!
//! Found consumers and misses live in two maps with their own size bounds, so a flood of random
//! keys (misses) cannot evict good entries. Entries are keyed by (realm, SHA-256 of the key): no
//! plaintext key is kept. When a map is full the oldest entry goes (first in, first out).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use crate::identity::Identity;
use crate::sha256::Digest;

/// (realm, key digest). The realm is a per-worker number given to each realm id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheKey {
    pub realm: u32,
    pub digest: Digest,
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The digest is already uniformly distributed: its first 8 bytes are a good hash.
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.digest[..8]);
        state.write_u64(u64::from_le_bytes(head) ^ u64::from(self.realm));
    }
}

/// A hasher that passes `write_u64` through (for [`CacheKey`]), FNV-1a for anything else.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type DigestMap<V> = HashMap<CacheKey, V, BuildHasherDefault<DigestHasher>>;

/// A map with a size bound; the oldest insertion is evicted first.
struct Bounded<V> {
    map: DigestMap<(V, u64)>,
    order: VecDeque<(CacheKey, u64)>,
    next_seq: u64,
    max: usize,
}

impl<V> Bounded<V> {
    fn new(max: usize) -> Self {
        Self {
            map: DigestMap::default(),
            order: VecDeque::new(),
            next_seq: 0,
            max,
        }
    }

    fn get(&self, key: &CacheKey) -> Option<&V> {
        self.map.get(key).map(|(v, _)| v)
    }

    fn remove(&mut self, key: &CacheKey) {
        // The queue entry goes stale and is skipped when it reaches the front.
        self.map.remove(key);
    }

    fn insert(&mut self, key: CacheKey, value: V) {
        if self.max == 0 {
            return;
        }
        if !self.map.contains_key(&key) {
            while self.map.len() >= self.max {
                match self.order.pop_front() {
                    Some((old, seq)) => {
                        if self.map.get(&old).map(|(_, s)| *s) == Some(seq) {
                            self.map.remove(&old);
                        }
                    }
                    None => break,
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.map.insert(key, (value, seq));
        self.order.push_back((key, seq));
        // Re-inserted and removed keys leave dead queue entries: compact now and then.
        if self.order.len() > self.max.saturating_mul(2).max(64) {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).map(|(_, cur)| cur == s).unwrap_or(false));
        }
    }

    fn set_max(&mut self, max: usize) {
        self.max = max;
        while self.map.len() > self.max {
            match self.order.pop_front() {
                Some((old, seq)) => {
                    if self.map.get(&old).map(|(_, s)| *s) == Some(seq) {
                        self.map.remove(&old);
                    }
                }
                None => break,
            }
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

#[derive(Debug, Clone)]
struct FoundEntry {
    identity: Arc<Identity>,
    /// Fresh until then (ms since the epoch): ttl, capped by the credential's expiry.
    fresh_until_ms: u64,
    /// The credential's own expiry: never served beyond it, not even stale.
    expires_at_ms: Option<u64>,
}

/// What the cache knows about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    Found(Arc<Identity>),
    NotFound,
    Miss,
}

pub struct CredentialCache {
    found: Bounded<FoundEntry>,
    not_found: Bounded<u64>,
}

impl CredentialCache {
    pub fn new(max_found: usize, max_not_found: usize) -> Self {
        Self {
            found: Bounded::new(max_found),
            not_found: Bounded::new(max_not_found),
        }
    }

    pub fn set_limits(&mut self, max_found: usize, max_not_found: usize) {
        self.found.set_max(max_found);
        self.not_found.set_max(max_not_found);
    }

    pub fn lookup(&self, key: &CacheKey, now_ms: u64) -> Cached {
        if let Some(entry) = self.found.get(key) {
            if now_ms < entry.fresh_until_ms {
                return Cached::Found(entry.identity.clone());
            }
        }
        if let Some(until) = self.not_found.get(key) {
            if now_ms < *until {
                return Cached::NotFound;
            }
        }
        Cached::Miss
    }

    /// A found entry past its ttl by at most `stale_ms`, and not past the credential's expiry.
    pub fn stale(&self, key: &CacheKey, now_ms: u64, stale_ms: u64) -> Option<Arc<Identity>> {
        let entry = self.found.get(key)?;
        let within_stale = now_ms < entry.fresh_until_ms.saturating_add(stale_ms);
        let not_expired = entry.expires_at_ms.map(|e| now_ms < e).unwrap_or(true);
        (within_stale && not_expired).then(|| entry.identity.clone())
    }

    pub fn insert_found(
        &mut self,
        key: CacheKey,
        identity: Arc<Identity>,
        ttl_ms: u64,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) {
        self.not_found.remove(&key);
        let mut fresh_until_ms = now_ms.saturating_add(ttl_ms);
        if let Some(e) = expires_at_ms {
            fresh_until_ms = fresh_until_ms.min(e);
        }
        if fresh_until_ms <= now_ms {
            self.found.remove(&key);
            return;
        }
        self.found.insert(
            key,
            FoundEntry {
                identity,
                fresh_until_ms,
                expires_at_ms,
            },
        );
    }

    /// A miss. Any found entry for the key goes: a deleted key is never served stale.
    pub fn insert_not_found(&mut self, key: CacheKey, negative_ttl_ms: u64, now_ms: u64) {
        self.found.remove(&key);
        if negative_ttl_ms == 0 {
            self.not_found.remove(&key);
            return;
        }
        self.not_found
            .insert(key, now_ms.saturating_add(negative_ttl_ms));
    }

    pub fn len_found(&self) -> usize {
        self.found.len()
    }

    pub fn len_not_found(&self) -> usize {
        self.not_found.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256::sha256;

    fn key(realm: u32, k: &str) -> CacheKey {
        CacheKey {
            realm,
            digest: sha256(k.as_bytes()),
        }
    }

    fn ident(id: &str) -> Arc<Identity> {
        Arc::new(Identity {
            consumer_id: id.into(),
            username: None,
            custom_id: None,
            credential_id: Some("c".into()),
            groups: None,
        })
    }

    #[test]
    fn found_entries_live_for_their_ttl_capped_by_expiry() {
        let mut c = CredentialCache::new(10, 10);
        c.insert_found(key(1, "a"), ident("A"), 60_000, None, 1_000);
        assert_eq!(c.lookup(&key(1, "a"), 60_999), Cached::Found(ident("A")));
        assert_eq!(c.lookup(&key(1, "a"), 61_000), Cached::Miss);
        // Another realm, same key: not the same entry.
        assert_eq!(c.lookup(&key(2, "a"), 2_000), Cached::Miss);

        c.insert_found(key(1, "b"), ident("B"), 60_000, Some(5_000), 1_000);
        assert_eq!(c.lookup(&key(1, "b"), 4_999), Cached::Found(ident("B")));
        assert_eq!(c.lookup(&key(1, "b"), 5_000), Cached::Miss);
        // Never stale beyond the credential's expiry.
        assert_eq!(c.stale(&key(1, "b"), 5_000, 1_000_000), None);
    }

    #[test]
    fn stale_entries_serve_only_within_the_window() {
        let mut c = CredentialCache::new(10, 10);
        c.insert_found(key(1, "a"), ident("A"), 1_000, None, 0);
        assert_eq!(c.lookup(&key(1, "a"), 1_500), Cached::Miss);
        assert_eq!(c.stale(&key(1, "a"), 1_500, 1_000), Some(ident("A")));
        assert_eq!(c.stale(&key(1, "a"), 2_000, 1_000), None);
    }

    #[test]
    fn misses_and_hits_have_separate_bounds() {
        let mut c = CredentialCache::new(2, 3);
        c.insert_found(key(1, "good1"), ident("1"), 60_000, None, 0);
        c.insert_found(key(1, "good2"), ident("2"), 60_000, None, 0);
        for i in 0..100 {
            c.insert_not_found(key(1, &format!("random{i}")), 60_000, 0);
        }
        assert_eq!(c.len_not_found(), 3);
        assert_eq!(c.len_found(), 2);
        assert_eq!(c.lookup(&key(1, "good1"), 1), Cached::Found(ident("1")));
        assert_eq!(c.lookup(&key(1, "random99"), 1), Cached::NotFound);
        assert_eq!(c.lookup(&key(1, "random0"), 1), Cached::Miss);
        // The oldest found entry goes first.
        c.insert_found(key(1, "good3"), ident("3"), 60_000, None, 0);
        assert_eq!(c.lookup(&key(1, "good1"), 1), Cached::Miss);
        assert_eq!(c.lookup(&key(1, "good2"), 1), Cached::Found(ident("2")));
        assert_eq!(c.lookup(&key(1, "good3"), 1), Cached::Found(ident("3")));
    }

    #[test]
    fn reinserting_does_not_grow_past_the_bound() {
        let mut c = CredentialCache::new(2, 2);
        for i in 0..1000u64 {
            c.insert_found(key(1, &format!("k{}", i % 3)), ident("x"), 60_000, None, i);
        }
        assert!(c.len_found() <= 2);
        assert!(c.found.order.len() <= 64);
    }

    #[test]
    fn a_miss_removes_a_found_entry() {
        let mut c = CredentialCache::new(2, 2);
        c.insert_found(key(1, "a"), ident("A"), 1_000, None, 0);
        c.insert_not_found(key(1, "a"), 60_000, 500);
        assert_eq!(c.lookup(&key(1, "a"), 600), Cached::NotFound);
        assert_eq!(c.stale(&key(1, "a"), 1_200, 100_000), None);
        // A zero-sized map caches nothing.
        let mut none = CredentialCache::new(0, 0);
        none.insert_found(key(1, "a"), ident("A"), 1_000, None, 0);
        assert_eq!(none.lookup(&key(1, "a"), 1), Cached::Miss);
    }
}
