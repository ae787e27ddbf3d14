//! What both stores share: the columns they select, how a row becomes a model object (through
//! [`Columns`], a row of either database read by column index), and the objects a write returns
//! without reading them back.

use std::fmt::Display;

use uuid::Uuid;

use super::{KeyRecord, Missing, NewKey, StoreError, StoreResult};
use crate::clock;
use crate::model::{Consumer, ControlPlane, DataPlaneToken, Key, KeyType, Realm};
use crate::secrets::{self, SecretHash};

/// A row of either store, read by column index. Timestamps are Unix seconds; lists of strings
/// are JSON text; the realm's allowed control planes are whatever the store's realm select
/// gives (an array on PostgreSQL, comma-separated text on SQLite).
pub(crate) trait Columns {
    fn uuid(&self, i: usize) -> StoreResult<Uuid>;
    fn text(&self, i: usize) -> StoreResult<String>;
    fn opt_text(&self, i: usize) -> StoreResult<Option<String>>;
    fn int(&self, i: usize) -> StoreResult<i64>;
    fn opt_int(&self, i: usize) -> StoreResult<Option<i64>>;
    fn flag(&self, i: usize) -> StoreResult<bool>;
    fn bytes(&self, i: usize) -> StoreResult<Vec<u8>>;
    fn uuids(&self, i: usize) -> StoreResult<Vec<Uuid>>;

    /// A list of strings stored as JSON text.
    fn strings(&self, i: usize) -> StoreResult<Vec<String>> {
        serde_json::from_str(&self.text(i)?).map_err(|e| column(i, e))
    }

    /// A timestamp, as the API shows it.
    fn time(&self, i: usize) -> StoreResult<String> {
        Ok(clock::rfc3339(self.int(i)?))
    }
}

/// A column that cannot be read as the model needs.
pub(crate) fn column(i: usize, e: impl Display) -> StoreError {
    StoreError::Internal(format!("column {i}: {e}"))
}

/// A list of strings as the stores keep it (JSON text).
pub(crate) fn to_json(values: &[String]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_string())
}

/// A delete that touched `n` rows: none means the row did not exist.
pub(crate) fn deleted(n: u64, missing: Missing) -> StoreResult<()> {
    if n == 0 {
        Err(StoreError::NotFound(missing))
    } else {
        Ok(())
    }
}

// Each select starts with `seq` (the paging cursor) and is followed by a `WHERE`.

pub(crate) const CP_SELECT: &str =
    "SELECT seq, id, name, created_at, updated_at FROM control_planes";

pub(crate) fn control_plane(r: &impl Columns) -> StoreResult<ControlPlane> {
    Ok(ControlPlane {
        id: r.uuid(1)?,
        name: r.text(2)?,
        created_at: r.time(3)?,
        updated_at: r.time(4)?,
    })
}

pub(crate) fn new_control_plane(id: Uuid, name: String, now: i64) -> ControlPlane {
    ControlPlane {
        id,
        name,
        created_at: clock::rfc3339(now),
        updated_at: clock::rfc3339(now),
    }
}

pub(crate) const DP_TOKEN_SELECT: &str =
    "SELECT seq, id, name, control_plane_id, created_at FROM data_plane_tokens";

pub(crate) fn data_plane_token(r: &impl Columns) -> StoreResult<DataPlaneToken> {
    Ok(DataPlaneToken {
        id: r.uuid(1)?,
        name: r.opt_text(2)?,
        control_plane_id: r.uuid(3)?,
        created_at: r.time(4)?,
    })
}

pub(crate) fn new_data_plane_token(
    id: Uuid,
    name: Option<String>,
    control_plane: Uuid,
    now: i64,
) -> DataPlaneToken {
    DataPlaneToken {
        id,
        name,
        control_plane_id: control_plane,
        created_at: clock::rfc3339(now),
    }
}

/// The realm select, given each store's SQL for its list of allowed control planes (column 9).
macro_rules! realm_select {
    ($allowed:literal) => {
        concat!(
            "SELECT seq, id, name, ttl, negative_ttl, consumer_groups,
            allow_all_control_planes, created_at, updated_at, ",
            $allowed,
            " FROM realms"
        )
    };
}
pub(crate) use realm_select;

pub(crate) fn realm(r: &impl Columns) -> StoreResult<Realm> {
    Ok(Realm {
        id: r.uuid(1)?,
        name: r.text(2)?,
        ttl: r.int(3)?,
        negative_ttl: r.int(4)?,
        consumer_groups: r.strings(5)?,
        allow_all_control_planes: r.flag(6)?,
        created_at: r.time(7)?,
        updated_at: r.time(8)?,
        allowed_control_planes: r.uuids(9)?,
    })
}

pub(crate) const CONSUMER_SELECT: &str =
    "SELECT seq, id, username, custom_id, type, tags, consumer_groups,
    created_at, updated_at FROM consumers";

pub(crate) fn consumer(r: &impl Columns) -> StoreResult<Consumer> {
    Ok(Consumer {
        id: r.uuid(1)?,
        username: r.text(2)?,
        custom_id: r.opt_text(3)?,
        kind: r.opt_text(4)?,
        tags: r.strings(5)?,
        consumer_groups: r.strings(6)?,
        created_at: r.time(7)?,
        updated_at: r.time(8)?,
    })
}

pub(crate) const KEY_SELECT: &str =
    "SELECT seq, id, type, tags, created_at, updated_at, expires_at FROM keys";

pub(crate) fn key(r: &impl Columns) -> StoreResult<Key> {
    Ok(Key {
        id: r.uuid(1)?,
        kind: KeyType::parse(&r.text(2)?),
        tags: r.strings(3)?,
        created_at: r.time(4)?,
        updated_at: r.time(5)?,
        expires_at: r.opt_int(6)?.map(clock::rfc3339),
    })
}

/// The key a create returns: `expires_at` is `now + ttl`.
pub(crate) fn new_key(id: Uuid, new: NewKey, now: i64, expires_at: Option<i64>) -> Key {
    Key {
        id,
        kind: new.kind,
        tags: new.tags,
        created_at: clock::rfc3339(now),
        updated_at: clock::rfc3339(now),
        expires_at: expires_at.map(clock::rfc3339),
    }
}

/// The columns of a [`KeyRecord`]: `keys k JOIN consumers c`, then a `WHERE` on the realm and
/// the secret's hash.
pub(crate) const KEY_RECORD_SELECT: &str =
    "SELECT k.id, k.created_at, k.tags, k.expires_at, k.secret_hash,
            c.id, c.username, c.custom_id, c.type, c.tags, c.consumer_groups, k.type
     FROM keys k JOIN consumers c ON c.id = k.consumer_id";

/// The key of a [`KEY_RECORD_SELECT`] row, if its stored hash is `hash` (compared in constant
/// time, whatever the index matched).
pub(crate) fn key_record(r: &impl Columns, hash: &SecretHash) -> StoreResult<Option<KeyRecord>> {
    if !secrets::hashes_equal(&r.bytes(4)?, hash) {
        return Ok(None);
    }
    Ok(Some(KeyRecord {
        key_id: r.uuid(0)?,
        key_type: KeyType::parse(&r.text(11)?),
        key_created_at: r.int(1)?,
        key_tags: r.strings(2)?,
        expires_at: r.opt_int(3)?,
        consumer_id: r.uuid(5)?,
        username: r.text(6)?,
        custom_id: r.opt_text(7)?,
        kind: r.opt_text(8)?,
        tags: r.strings(9)?,
        consumer_groups: r.strings(10)?,
    }))
}

/// A `(value, stored hash)` row's value, if the stored hash is `hash`.
pub(crate) fn if_hash_matches<T>(row: Option<(T, Vec<u8>)>, hash: &SecretHash) -> Option<T> {
    row.filter(|(_, stored)| secrets::hashes_equal(stored, hash))
        .map(|(value, _)| value)
}
