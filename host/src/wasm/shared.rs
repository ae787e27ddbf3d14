//! Process-wide state that proxy-wasm shares between instances: shared data (key/value with
//! compare-and-swap, per VM id, like Envoy) and shared queues (per VM id, announcing new items to
//! the worker of the context that registered the queue last).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::Status;

/// Shared key/value data with CAS, at most `limit` bytes of keys and values in all.
pub struct SharedData {
    inner: Mutex<SharedDataInner>,
    limit: usize,
}

#[derive(Default)]
struct SharedDataInner {
    entries: HashMap<(String, String), (Vec<u8>, u32)>,
    next_cas: u32,
    bytes: usize,
}

impl Default for SharedData {
    fn default() -> Self {
        SharedData::new(crate::limits::Limits::default().shared_data_bytes)
    }
}

impl SharedData {
    pub fn new(limit: usize) -> Self {
        SharedData {
            inner: Mutex::default(),
            limit,
        }
    }

    /// Bytes of keys and values stored.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// The value and its CAS, if the key exists.
    pub fn get(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .entries
            .get(&(vm_id.to_string(), key.to_string()))
            .cloned()
    }

    /// Stores a value; a non-zero `cas` must match the current one (Envoy's rules). A value
    /// that would take the stored bytes past the limit is refused with `InternalFailure`.
    pub fn set(&self, vm_id: &str, key: &str, value: Vec<u8>, cas: u32) -> Status {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let k = (vm_id.to_string(), key.to_string());
        let key_bytes = vm_id.len() + key.len();
        let old = match inner.entries.get(&k) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Status::CasMismatch;
                }
                key_bytes + entry.0.len()
            }
            None => 0,
        };
        let new_total = inner.bytes - old + key_bytes + value.len();
        if new_total > self.limit {
            return Status::InternalFailure;
        }
        inner.next_cas = inner.next_cas.wrapping_add(1);
        if inner.next_cas == 0 {
            inner.next_cas = 1;
        }
        let next = inner.next_cas;
        inner.bytes = new_total;
        inner.entries.insert(k, (value, next));
        Status::Ok
    }
}

/// Who hears about items put on a queue: the context that registered it last, on its worker
/// (Envoy's rule), as `(context id, queue id)` sent to that worker.
#[derive(Clone)]
pub struct QueueOwner {
    pub notify: tokio::sync::mpsc::UnboundedSender<(u32, u32)>,
    pub context_id: u32,
}

/// Shared queues, per VM id. Each enqueue tells the queue's owner (`on_queue_ready`). At most
/// `max_items` wait in one queue, and `max_bytes` (names and items) in all.
pub struct SharedQueues {
    inner: Mutex<QueuesInner>,
    max_items: usize,
    max_bytes: usize,
}

impl Default for SharedQueues {
    fn default() -> Self {
        let l = crate::limits::Limits::default();
        SharedQueues::new(l.queue_items, l.queue_bytes)
    }
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Vec<u8>>,
    owner: Option<QueueOwner>,
}

#[derive(Default)]
struct QueuesInner {
    by_name: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    next_id: u32,
    bytes: usize,
}

impl SharedQueues {
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        SharedQueues {
            inner: Mutex::default(),
            max_items,
            max_bytes,
        }
    }

    /// Registers (or finds) a queue; `InternalFailure` when a new one would pass the byte limit.
    pub fn register(&self, vm_id: &str, name: &str) -> Result<u32, Status> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (vm_id.to_string(), name.to_string());
        if let Some(id) = inner.by_name.get(&key) {
            return Ok(*id);
        }
        let bytes = inner.bytes + vm_id.len() + name.len();
        if bytes > self.max_bytes {
            return Err(Status::InternalFailure);
        }
        inner.bytes = bytes;
        inner.next_id += 1;
        let id = inner.next_id;
        inner.by_name.insert(key, id);
        inner.queues.insert(id, Queue::default());
        Ok(id)
    }

    /// Makes `owner` the one told about new items (the last registration wins, as in Envoy);
    /// items already waiting are announced to it at once.
    pub fn set_owner(&self, id: u32, owner: QueueOwner) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = inner.queues.get_mut(&id) {
            if !q.items.is_empty() {
                let _ = owner.notify.send((owner.context_id, id));
            }
            q.owner = Some(owner);
        }
    }

    pub fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .by_name
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
    }

    /// Puts an item on a queue; `InternalFailure` when the queue is full or the bytes of all
    /// queues would pass the limit.
    pub fn enqueue(&self, id: u32, value: Vec<u8>) -> Status {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        let bytes = inner.bytes + value.len();
        match inner.queues.get_mut(&id) {
            Some(q) => {
                if q.items.len() >= self.max_items || bytes > self.max_bytes {
                    return Status::InternalFailure;
                }
                inner.bytes = bytes;
                q.items.push_back(value);
                if let Some(owner) = &q.owner {
                    // A worker that is gone has nobody left to tell.
                    let _ = owner.notify.send((owner.context_id, id));
                }
                Status::Ok
            }
            None => Status::NotFound,
        }
    }

    pub fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        let item = match inner.queues.get_mut(&id) {
            Some(q) => q.items.pop_front().ok_or(Status::Empty)?,
            None => return Err(Status::NotFound),
        };
        inner.bytes -= item.len();
        Ok(item)
    }
}
