//! The storage seam: every operation the handlers need, and the two stores that implement them.
//!
//! Handlers call [`Store`] and never see SQL (there is none outside this module). [`Store`] is an
//! enum over the two implementations, so a handler cannot know (or care) which one it has:
//!
//! - [`sqlite`]: the embedded default for one process (one writer, a pool of readers, WAL);
//! - [`postgres`]: any number of stateless replicas on one PostgreSQL database (a pool of
//!   connections; every write publishes an invalidation with `NOTIFY` inside its transaction).
//!
//! What the two share lives in `rows`: the columns each select reads, how a row of either
//! database becomes a model object (one mapping per object, over a small `Columns` trait), and
//! the objects a create returns.
//!
//! Failures are typed ([`StoreError`]): not found (naming what), conflict (naming the unique
//! constraint), invalid reference, unavailable (the database cannot be reached: 503) and
//! internal.

pub mod postgres;
mod rows;
pub mod sqlite;

use std::sync::Arc;

use uuid::Uuid;

use crate::error::{ApiError, InvalidParameter};
use crate::model::{Consumer, ControlPlane, DataPlaneToken, Key, KeyType, Realm};
use crate::pagination::PageRequest;
use crate::secrets::SecretHash;

/// One page of rows, each with its cursor position, and whether more exist beyond it.
pub type Rows<T> = (Vec<(i64, T)>, bool);

/// What does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    Realm(Uuid),
    Consumer { realm: Uuid, id: Uuid },
    Key { consumer: Uuid, id: Uuid },
    ControlPlane(Uuid),
    DataPlaneToken { control_plane: Uuid, id: Uuid },
}

/// Which uniqueness rule a write broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// `consumers (realm_id, username)`.
    Username { username: String, realm: Uuid },
    /// `keys (realm_id, secret_hash)` on create.
    Secret { realm: Uuid },
    /// `keys (realm_id, secret_hash)` when a consumer's keys move to another realm.
    MovedKey { consumer: Uuid, realm: Uuid },
}

/// A failed store operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("not found: {0:?}")]
    NotFound(Missing),
    #[error("conflict: {0:?}")]
    Conflict(Conflict),
    /// References to rows that do not exist: (field, what it names).
    #[error("invalid reference: {0:?}")]
    InvalidReference(Vec<(String, Missing)>),
    /// A realm delete without `force` while consumers are left.
    #[error("the realm still has {0} consumer(s)")]
    RealmNotEmpty(i64),
    /// The database cannot be reached (or did not answer in time).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl Missing {
    fn detail(&self) -> String {
        match self {
            Missing::Realm(id) => format!("realm {id} not found"),
            Missing::Consumer { realm, id } => format!("consumer {id} not found in realm {realm}"),
            Missing::Key { consumer, id } => format!("key {id} not found for consumer {consumer}"),
            Missing::ControlPlane(id) => format!("control plane {id} not found"),
            Missing::DataPlaneToken { control_plane, id } => {
                format!("data-plane token {id} not found in control plane {control_plane}")
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(missing) => ApiError::not_found(missing.detail()),
            StoreError::Conflict(Conflict::Username { username, realm }) => ApiError::conflict(
                format!("a consumer with username '{username}' already exists in realm {realm}"),
            ),
            StoreError::Conflict(Conflict::Secret { realm }) => {
                ApiError::conflict(format!("this secret already exists in realm {realm}"))
            }
            StoreError::Conflict(Conflict::MovedKey { consumer, realm }) => ApiError::conflict(
                format!("a key of consumer {consumer} already exists in realm {realm}"),
            ),
            StoreError::InvalidReference(refs) => ApiError::invalid(
                refs.into_iter()
                    .map(|(field, missing)| {
                        let reason = match missing {
                            Missing::ControlPlane(cp) => {
                                format!("control plane {cp} does not exist")
                            }
                            other => other.detail(),
                        };
                        InvalidParameter::new(field, "exists", reason)
                    })
                    .collect(),
            ),
            StoreError::RealmNotEmpty(n) => ApiError::invalid_field(
                "force",
                "force",
                format!(
                    "the realm still has {n} consumer(s); delete them first or pass force=true"
                ),
            ),
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                ApiError::unavailable()
            }
            StoreError::Internal(cause) => ApiError::internal(cause),
        }
    }
}

/// A realm to create (defaults already applied, lists deduplicated).
#[derive(Debug, Clone)]
pub struct NewRealm {
    pub name: String,
    pub ttl: i64,
    pub negative_ttl: i64,
    pub consumer_groups: Vec<String>,
    pub allow_all_control_planes: bool,
    pub allowed_control_planes: Vec<Uuid>,
}

/// The fields a realm PATCH gives (lists deduplicated).
#[derive(Debug, Clone, Default)]
pub struct RealmChanges {
    pub name: Option<String>,
    pub ttl: Option<i64>,
    pub negative_ttl: Option<i64>,
    pub consumer_groups: Option<Vec<String>>,
    pub allow_all_control_planes: Option<bool>,
    pub allowed_control_planes: Option<Vec<Uuid>>,
}

#[derive(Debug, Clone)]
pub struct NewConsumer {
    pub username: String,
    pub custom_id: Option<String>,
    pub kind: Option<String>,
    pub tags: Vec<String>,
    pub consumer_groups: Vec<String>,
}

/// The fields a consumer PATCH gives; `Some(None)` clears `custom_id` / `type`.
#[derive(Debug, Clone, Default)]
pub struct ConsumerChanges {
    pub username: Option<String>,
    pub custom_id: Option<Option<String>>,
    pub kind: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
    pub consumer_groups: Option<Vec<String>>,
}

/// Exact-match filters of the consumer list.
#[derive(Debug, Clone, Default)]
pub struct ConsumerFilter {
    pub username: Option<String>,
    pub custom_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub kind: KeyType,
    pub secret_hash: SecretHash,
    pub tags: Vec<String>,
    /// Seconds until it expires.
    pub ttl: Option<i64>,
}

/// A key found by its secret, with its consumer: what the identity endpoint answers with.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub key_id: Uuid,
    pub key_type: KeyType,
    pub key_created_at: i64,
    pub key_tags: Vec<String>,
    pub expires_at: Option<i64>,
    pub consumer_id: Uuid,
    pub username: String,
    pub custom_id: Option<String>,
    pub kind: Option<String>,
    pub tags: Vec<String>,
    pub consumer_groups: Vec<String>,
}

/// Which database, from `--database`: a `postgres://` / `postgresql://` URL (libpq style), or
/// else a SQLite file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Database {
    pub fn parse(text: &str) -> Database {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Database::Postgres(text.to_string())
        } else {
            Database::Sqlite(text.into())
        }
    }

    /// How to name it in logs and errors (a PostgreSQL URL without its password).
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => postgres::redact(url),
        }
    }
}

impl From<std::path::PathBuf> for Database {
    fn from(path: std::path::PathBuf) -> Database {
        Database::Sqlite(path)
    }
}

impl From<&str> for Database {
    fn from(text: &str) -> Database {
        Database::parse(text)
    }
}

/// The store a service runs on. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(Arc<sqlite::SqliteStore>),
    Postgres(Arc<postgres::PgStore>),
}

macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident ( $($arg:ident : $ty:ty),* ) -> $out:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, $($arg: $ty),*) -> StoreResult<$out> {
            match self {
                Store::Sqlite(s) => s.$name($($arg),*).await,
                Store::Postgres(s) => s.$name($($arg),*).await,
            }
        }
    };
}

impl Store {
    dispatch!(
        /// The database answers.
        ping() -> ());

    dispatch!(create_control_plane(name: String) -> ControlPlane);
    dispatch!(list_control_planes(page: PageRequest) -> Rows<ControlPlane>);
    dispatch!(get_control_plane(id: Uuid) -> ControlPlane);
    dispatch!(
        /// Deletes its data-plane tokens and its place in every realm's allowed list too.
        delete_control_plane(id: Uuid) -> ());
    dispatch!(create_data_plane_token(control_plane: Uuid, name: Option<String>, hash: SecretHash) -> DataPlaneToken);
    dispatch!(list_data_plane_tokens(control_plane: Uuid, page: PageRequest) -> Rows<DataPlaneToken>);
    dispatch!(delete_data_plane_token(control_plane: Uuid, id: Uuid) -> ());

    dispatch!(create_realm(realm: NewRealm) -> Realm);
    dispatch!(list_realms(page: PageRequest) -> Rows<Realm>);
    dispatch!(
        /// `None` when it does not exist.
        find_realm(id: Uuid) -> Option<Realm>);
    dispatch!(update_realm(id: Uuid, changes: RealmChanges) -> Realm);
    dispatch!(
        /// Without `force`, a realm with consumers is refused ([`StoreError::RealmNotEmpty`]);
        /// a consumer created meanwhile either lands before (and the delete is refused) or
        /// finds the realm gone (404): never an orphan.
        delete_realm(id: Uuid, force: bool) -> ());

    dispatch!(create_consumer(realm: Uuid, consumer: NewConsumer) -> Consumer);
    dispatch!(list_consumers(realm: Uuid, filter: ConsumerFilter, page: PageRequest) -> Rows<Consumer>);
    dispatch!(get_consumer(realm: Uuid, id: Uuid) -> Consumer);
    dispatch!(update_consumer(realm: Uuid, id: Uuid, changes: ConsumerChanges) -> Consumer);
    dispatch!(delete_consumer(realm: Uuid, id: Uuid) -> ());
    dispatch!(
        /// Moves the consumer and its keys to `target`.
        move_consumer(realm: Uuid, id: Uuid, target: Uuid) -> ());

    dispatch!(create_key(realm: Uuid, consumer: Uuid, key: NewKey) -> Key);
    dispatch!(list_keys(realm: Uuid, consumer: Uuid, page: PageRequest) -> Rows<Key>);
    dispatch!(get_key(realm: Uuid, consumer: Uuid, id: Uuid) -> Key);
    dispatch!(delete_key(realm: Uuid, consumer: Uuid, id: Uuid) -> ());

    dispatch!(
        /// The control plane of a data-plane token.
        control_plane_of_token(hash: SecretHash) -> Option<Uuid>);
    dispatch!(
        /// The key with this secret in this realm, with its consumer.
        key_by_secret(realm: Uuid, hash: SecretHash) -> Option<KeyRecord>);
    dispatch!(
        /// An operator's check of a key (`check-key`): like [`Store::key_by_secret`] (expired
        /// keys included), but a realm that does not exist is [`StoreError::NotFound`].
        check_key(realm: Uuid, hash: SecretHash) -> Option<KeyRecord>);

    dispatch!(is_admin_token(hash: SecretHash) -> bool);
    dispatch!(
        /// Stores a new admin token's hash under `name`; returns its id.
        create_admin_token(name: String, hash: SecretHash) -> Uuid);
    dispatch!(
        /// Deletes every admin token named `name`; returns how many.
        revoke_admin_tokens(name: String) -> u64);
}
