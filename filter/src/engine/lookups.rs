//! Realm look-ups in flight: one authenticate call at a time per (realm, region, key), shared by
//! every request that needs it, whichever worker it runs on.
//!
//! A request that misses the cache either *joins* the look-up under way for its [`LookupKey`] or
//! *starts* one ([`Lookups::begin`]); the worker that started it makes the call. When the answer
//! comes, that worker [takes](Lookups::take) the look-up and gets its [`Waiter`]s: the ones of its
//! own thread it continues itself, the others it [posts](Waiter::post) to their worker's
//! [`Mailbox`] and wakes them through their [`Waker`]. A look-up past its deadline is dead: the next
//! request for its key replaces it, and the tick [expires](Lookups::expire) it.
//!
//! The map is split in shards, each behind its own mutex, so that workers on other threads
//! rarely wait for each other; only a cache miss touches it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cache::{CacheKey, DigestHasher};
use crate::config::RealmRef;
use crate::realm::RealmAnswer;

/// What a look-up is for: the cache entry it fills, and the route of its call (cluster and
/// authority). The same realm under two regions has one cache entry per key but two routes: a
/// request never joins a call made to another region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupKey {
    pub cache: CacheKey,
    pub route: u32,
}

impl Hash for LookupKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.cache.hash(state);
        state.write_u32(self.route);
    }
}

type LookupMap<V> = HashMap<LookupKey, V, BuildHasherDefault<DigestHasher>>;

/// Wakes a request whose answer was posted to its worker's mailbox from another thread. The
/// native adapter schedules the request's filter on its own worker thread (Envoy's scheduler);
/// single-threaded hosts need none.
pub trait Waker: Send + Sync {
    fn wake(&self);
}

/// An answer for a request of another worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub ctx: u32,
    pub key: LookupKey,
    pub answer: Arc<RealmAnswer>,
}

/// Answers posted to one worker by the others.
#[derive(Debug, Default)]
pub struct Mailbox(Mutex<Vec<Delivery>>);

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Vec<Delivery>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn post(&self, delivery: Delivery) {
        self.lock().push(delivery);
    }

    pub fn take_all(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.lock())
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// A request waiting for a look-up.
#[derive(Clone)]
pub struct Waiter {
    /// The worker the request runs on ([`crate::engine::Worker::home`]).
    pub home: u32,
    /// The request's context id in that worker.
    pub ctx: u32,
    pub mailbox: Arc<Mailbox>,
    pub waker: Option<Arc<dyn Waker>>,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("home", &self.home)
            .field("ctx", &self.ctx)
            .finish()
    }
}

impl Waiter {
    /// Posts the answer to the waiter's worker and wakes it.
    pub fn post(&self, key: LookupKey, answer: &Arc<RealmAnswer>) {
        self.mailbox.post(Delivery {
            ctx: self.ctx,
            key,
            answer: answer.clone(),
        });
        if let Some(waker) = &self.waker {
            waker.wake();
        }
    }
}

struct Lookup {
    id: u64,
    deadline_ms: u64,
    realm: Arc<RealmRef>,
    waiters: Vec<Waiter>,
}

/// What [`Lookups::begin`] decided.
#[derive(Debug)]
pub enum Begin {
    /// The request waits for the look-up under way.
    Joined,
    /// The request's worker must make the call, for the look-up `id`. `replaced` holds the
    /// waiters of a dead look-up (past its deadline) this one replaces: they are to be answered
    /// "unavailable".
    Start { id: u64, replaced: Option<Expired> },
}

/// A look-up given up (past its deadline): its waiters are to be answered "unavailable".
#[derive(Debug)]
pub struct Expired {
    pub key: LookupKey,
    pub realm: Arc<RealmRef>,
    pub waiters: Vec<Waiter>,
}

/// The look-ups in flight (see the module documentation).
pub struct Lookups {
    shards: Box<[Mutex<LookupMap<Lookup>>]>,
    next_id: AtomicU64,
    count: AtomicUsize,
}

impl Lookups {
    pub fn new(shards: usize) -> Lookups {
        Lookups {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(LookupMap::default()))
                .collect(),
            next_id: AtomicU64::new(1),
            count: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &LookupKey) -> MutexGuard<'_, LookupMap<Lookup>> {
        let i = usize::from(key.cache.digest[8]) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the live look-up for `key`, or starts one (replacing a dead one) due by
    /// `deadline_ms`.
    pub fn begin(
        &self,
        key: LookupKey,
        waiter: Waiter,
        realm: &Arc<RealmRef>,
        now_ms: u64,
        deadline_ms: u64,
    ) -> Begin {
        let mut shard = self.shard(&key);
        let replaced = match shard.get_mut(&key) {
            Some(lookup) if now_ms < lookup.deadline_ms => {
                lookup.waiters.push(waiter);
                return Begin::Joined;
            }
            Some(_) => shard.remove(&key).map(|dead| Expired {
                key,
                realm: dead.realm,
                waiters: dead.waiters,
            }),
            None => None,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        shard.insert(
            key,
            Lookup {
                id,
                deadline_ms,
                realm: realm.clone(),
                waiters: vec![waiter],
            },
        );
        if replaced.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        Begin::Start { id, replaced }
    }

    /// Ends look-up `id` (its answer came, or its call could not start) and returns its
    /// waiters; `None` if it is no longer under way (expired or replaced).
    pub fn take(&self, key: &LookupKey, id: u64) -> Option<Vec<Waiter>> {
        let mut shard = self.shard(key);
        if shard.get(key).map(|l| l.id) != Some(id) {
            return None;
        }
        let lookup = shard.remove(key)?;
        self.count.fetch_sub(1, Ordering::Relaxed);
        Some(lookup.waiters)
    }

    /// A waiter went away (its stream ended).
    pub fn leave(&self, key: &LookupKey, home: u32, ctx: u32) {
        if let Some(lookup) = self.shard(key).get_mut(key) {
            lookup.waiters.retain(|w| !(w.home == home && w.ctx == ctx));
        }
    }

    /// Whether look-up `id` is still under way, and whether anyone still waits for it.
    pub fn waiting(&self, key: &LookupKey, id: u64) -> Option<bool> {
        self.shard(key)
            .get(key)
            .filter(|l| l.id == id)
            .map(|l| !l.waiters.is_empty())
    }

    /// Look-up `id` was asked again: its new deadline. False if it is no longer under way.
    pub fn extend(&self, key: &LookupKey, id: u64, deadline_ms: u64) -> bool {
        match self.shard(key).get_mut(key) {
            Some(l) if l.id == id => {
                l.deadline_ms = deadline_ms;
                true
            }
            _ => false,
        }
    }

    /// Removes and returns the look-ups past their deadline.
    pub fn expire(&self, now_ms: u64) -> Vec<Expired> {
        let mut expired = Vec::new();
        if self.is_empty() {
            return expired;
        }
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|key, lookup| {
                if now_ms < lookup.deadline_ms {
                    return true;
                }
                expired.push(Expired {
                    key: *key,
                    realm: lookup.realm.clone(),
                    waiters: std::mem::take(&mut lookup.waiters),
                });
                false
            });
        }
        self.count.fetch_sub(expired.len(), Ordering::Relaxed);
        expired
    }

    /// Look-ups under way.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256::sha256;
    use std::sync::atomic::AtomicU32;

    fn key(k: &str, route: u32) -> LookupKey {
        LookupKey {
            cache: CacheKey {
                realm: 0,
                digest: sha256(k.as_bytes()),
            },
            route,
        }
    }

    fn realm() -> Arc<RealmRef> {
        Arc::new(RealmRef {
            id: "r".into(),
            region: None,
            cluster: "c".into(),
            authority: "a".into(),
            path: "/r/v0/authenticate".into(),
        })
    }

    fn waiter(home: u32, ctx: u32, mailbox: &Arc<Mailbox>) -> Waiter {
        Waiter {
            home,
            ctx,
            mailbox: mailbox.clone(),
            waker: None,
        }
    }

    #[test]
    fn the_first_request_starts_the_others_join_and_take_gets_them_all() {
        let l = Lookups::new(4);
        let mb = Arc::new(Mailbox::default());
        let r = realm();
        let Begin::Start { id, replaced: None } =
            l.begin(key("a", 0), waiter(1, 10, &mb), &r, 0, 100)
        else {
            panic!("the first request starts the look-up")
        };
        assert!(matches!(
            l.begin(key("a", 0), waiter(2, 20, &mb), &r, 50, 150),
            Begin::Joined
        ));
        // Another route (region) or key: another look-up.
        assert!(matches!(
            l.begin(key("a", 1), waiter(1, 11, &mb), &r, 50, 150),
            Begin::Start { .. }
        ));
        assert!(matches!(
            l.begin(key("b", 0), waiter(1, 12, &mb), &r, 50, 150),
            Begin::Start { .. }
        ));
        assert_eq!(l.len(), 3);
        assert!(
            l.take(&key("a", 0), id + 100).is_none(),
            "another look-up's id"
        );
        let waiters = l.take(&key("a", 0), id).unwrap();
        assert_eq!(
            waiters.iter().map(|w| (w.home, w.ctx)).collect::<Vec<_>>(),
            vec![(1, 10), (2, 20)]
        );
        assert!(l.take(&key("a", 0), id).is_none(), "taken once");
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn a_dead_look_up_is_replaced_not_joined_and_expire_gives_it_up() {
        let l = Lookups::new(1);
        let mb = Arc::new(Mailbox::default());
        let r = realm();
        let Begin::Start { id: first, .. } = l.begin(key("a", 0), waiter(1, 10, &mb), &r, 0, 100)
        else {
            panic!()
        };
        let Begin::Start {
            id: second,
            replaced: Some(dead),
        } = l.begin(key("a", 0), waiter(1, 11, &mb), &r, 100, 200)
        else {
            panic!("a look-up past its deadline is not joined")
        };
        assert_ne!(first, second);
        assert_eq!(dead.waiters.len(), 1);
        assert_eq!(dead.waiters[0].ctx, 10);
        assert_eq!(l.len(), 1);
        assert!(l.take(&key("a", 0), first).is_none());
        assert!(l.expire(199).is_empty());
        assert!(l.extend(&key("a", 0), second, 300));
        assert!(l.expire(299).is_empty());
        let expired = l.expire(300);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].waiters[0].ctx, 11);
        assert!(l.is_empty());
    }

    #[test]
    fn waiters_leave_and_answers_are_posted_to_other_workers() {
        struct Count(AtomicU32);
        impl Waker for Count {
            fn wake(&self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let l = Lookups::new(2);
        let mb = Arc::new(Mailbox::default());
        let woken = Arc::new(Count(AtomicU32::new(0)));
        let r = realm();
        let Begin::Start { id, .. } = l.begin(key("a", 0), waiter(1, 10, &mb), &r, 0, 100) else {
            panic!()
        };
        let mut remote = waiter(2, 20, &mb);
        remote.waker = Some(woken.clone());
        l.begin(key("a", 0), remote, &r, 0, 100);
        l.leave(&key("a", 0), 1, 10);
        assert_eq!(l.waiting(&key("a", 0), id), Some(true));
        let waiters = l.take(&key("a", 0), id).unwrap();
        assert_eq!(waiters.len(), 1);
        let answer = Arc::new(RealmAnswer::NotFound { negative_ttl_ms: 0 });
        waiters[0].post(key("a", 0), &answer);
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        let mail = mb.take_all();
        assert_eq!(mail.len(), 1);
        assert_eq!(mail[0].ctx, 20);
        assert!(mb.is_empty());
    }

    #[test]
    fn look_ups_are_shared_between_threads() {
        let l = Arc::new(Lookups::new(8));
        let r = realm();
        let started = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let (l, r, started) = (l.clone(), r.clone(), started.clone());
                std::thread::spawn(move || {
                    let mb = Arc::new(Mailbox::default());
                    for ctx in 0..50 {
                        if let Begin::Start { .. } =
                            l.begin(key("same", 0), waiter(t, ctx, &mb), &r, 0, 1_000)
                        {
                            started.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            started.load(Ordering::Relaxed),
            1,
            "one call for 200 requests"
        );
        assert_eq!(l.expire(1_000)[0].waiters.len(), 200);
    }
}
