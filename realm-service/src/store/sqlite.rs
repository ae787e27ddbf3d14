//! The SQLite store: one process, one writer connection, a small pool of readers.
//!
//! WAL journal with `synchronous=FULL`: a write is on disk when its transaction commits, and the
//! API answers only after that, so an acknowledged write survives `kill -9` (and power loss).
//! Readers never block the writer, and the authenticate path only ever reads.
//!
//! One process serves a file: [`SqliteStore::open`] for serving takes an exclusive lock on
//! `<file>.lock` and fails at once if another process holds it (several replicas need
//! PostgreSQL). Migrations run inside an immediate transaction that re-reads the schema version,
//! so two processes opening a new file at once cannot both run them; a file whose schema is newer
//! than this binary is refused.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, Row, Transaction, TransactionBehavior};
use uuid::Uuid;

use super::{
    Conflict, ConsumerChanges, ConsumerFilter, KeyRecord, Missing, NewConsumer, NewKey, NewRealm,
    RealmChanges, Rows, StoreError, StoreResult, KEY_RECORD_SELECT,
};
use crate::cache::AuthCache;
use crate::clock;
use crate::error::Error;
use crate::model::{Consumer, ControlPlane, DataPlaneToken, Key, KeyType, Realm};
use crate::pagination::PageRequest;
use crate::secrets::{self, SecretHash};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
pub(crate) const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE admin_tokens (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE control_planes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE data_plane_tokens (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    control_plane_id TEXT NOT NULL REFERENCES control_planes(id) ON DELETE CASCADE,
    name TEXT,
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE INDEX data_plane_tokens_by_cp ON data_plane_tokens(control_plane_id, seq);
CREATE TABLE realms (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    ttl INTEGER NOT NULL,
    negative_ttl INTEGER NOT NULL,
    consumer_groups TEXT NOT NULL,
    allow_all_control_planes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE realm_control_planes (
    realm_id TEXT NOT NULL REFERENCES realms(id) ON DELETE CASCADE,
    control_plane_id TEXT NOT NULL REFERENCES control_planes(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    PRIMARY KEY (realm_id, control_plane_id)
);
CREATE INDEX realm_control_planes_by_cp ON realm_control_planes(control_plane_id);
CREATE TABLE consumers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    realm_id TEXT NOT NULL REFERENCES realms(id) ON DELETE CASCADE,
    username TEXT NOT NULL,
    custom_id TEXT,
    type TEXT,
    tags TEXT NOT NULL,
    consumer_groups TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (realm_id, username)
);
CREATE INDEX consumers_by_realm ON consumers(realm_id, seq);
CREATE INDEX consumers_by_custom_id ON consumers(realm_id, custom_id);
CREATE TABLE keys (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    consumer_id TEXT NOT NULL REFERENCES consumers(id) ON DELETE CASCADE,
    realm_id TEXT NOT NULL REFERENCES realms(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    tags TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER
);
-- The authenticate look-up: one indexed probe by (realm, sha256(secret)); also what makes a
-- secret unique within its realm.
CREATE UNIQUE INDEX keys_by_secret ON keys(realm_id, secret_hash);
CREATE INDEX keys_by_consumer ON keys(consumer_id, seq);
"#];

/// How much of the database file each connection maps into memory.
const MMAP_BYTES: i64 = 1 << 30;

/// How many idle reader connections are kept.
const MAX_IDLE_READERS: usize = 16;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Internal(e.to_string())
    }
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// The open `<file>.lock` this process holds while it serves the file.
    _lock: Option<File>,
    /// Emptied after every committed write.
    cache: Arc<AuthCache>,
}

/// The lock file next to the database.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database (blocking). With `serve`, takes the
    /// file's single-process lock first.
    pub fn open(path: &Path, serve: bool, cache: Arc<AuthCache>) -> Result<SqliteStore, Error> {
        let database = path.display().to_string();
        let wrap = |e: rusqlite::Error| Error::Database {
            database: database.clone(),
            reason: e.to_string(),
        };
        let lock = if serve {
            let lock_file = lock_path(path);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_file)
                .map_err(|e| Error::Database {
                    database: database.clone(),
                    reason: format!("cannot open the lock file {}: {e}", lock_file.display()),
                })?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::Database {
                        database: database.clone(),
                        reason: "another realm-service process is serving this SQLite file; one \
                                 process owns a SQLite database: to run several replicas, use \
                                 PostgreSQL (--database postgres://USER@HOST:PORT/DBNAME)"
                            .to_string(),
                    })
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::Database {
                        database: database.clone(),
                        reason: format!("cannot lock {}: {e}", lock_file.display()),
                    })
                }
            }
            Some(file)
        } else {
            None
        };
        let mut writer = open_connection(path, false).map_err(wrap)?;
        migrate(&mut writer).map_err(|e| match e {
            MigrateError::Sql(e) => wrap(e),
            MigrateError::Newer(found) => Error::Database {
                database: database.clone(),
                reason: format!(
                    "its schema version {found} is newer than this binary's {}; run a newer realm-service",
                    MIGRATIONS.len()
                ),
            },
        })?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            _lock: lock,
            cache,
        })
    }

    /// Runs `f` on a reader connection (blocking).
    fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_connection(&self.path, true)?,
        };
        let result = f(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// Runs `f` in an immediate transaction on the writer and commits (blocking).
    fn write_blocking<T>(&self, f: impl FnOnce(&Transaction) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        // After the commit: a look-up that read the old row cannot store it any more.
        self.cache.invalidate();
        Ok(value)
    }

    async fn read<T, F>(self: &Arc<Self>, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_blocking(f))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    async fn write<T, F>(self: &Arc<Self>, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> StoreResult<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write_blocking(f))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}

fn open_connection(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Reads through a memory map: a look-up in a large database touches pages without a
    // read() per page (the kernel shares the mapping between connections).
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
    if read_only {
        conn.pragma_update(None, "query_only", "ON")?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

enum MigrateError {
    Sql(rusqlite::Error),
    Newer(i64),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sql(e)
    }
}

/// Applies the missing migrations, each in an immediate transaction that re-reads the version
/// (so a process that lost the race sees the other's work and skips it).
fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if done > MIGRATIONS.len() as i64 {
            return Err(MigrateError::Newer(done));
        }
        if done > index as i64 {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
        tracing::info!(migration = index + 1, "database migrated");
    }
    let done: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if done > MIGRATIONS.len() as i64 {
        return Err(MigrateError::Newer(done));
    }
    Ok(())
}

/// `Ok(None)` for no row.
fn optional<T>(result: rusqlite::Result<T>) -> rusqlite::Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A UUID stored as text.
fn uuid_at(row: &Row, index: usize) -> rusqlite::Result<Uuid> {
    let text: String = row.get(index)?;
    Uuid::parse_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A list of strings stored as JSON text.
fn strings_at(row: &Row, index: usize) -> rusqlite::Result<Vec<String>> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn to_json(values: &[String]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_string())
}

/// Is this a UNIQUE constraint failure?
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// Runs `select` (which must select `seq` first and end in a WHERE clause) for one page.
fn fetch<T>(
    conn: &Connection,
    select: &str,
    mut params: Vec<Value>,
    page: &PageRequest,
    map: impl Fn(&Row) -> rusqlite::Result<T>,
) -> StoreResult<Rows<T>> {
    let n = params.len();
    let sql = match page.before {
        Some(before) => {
            params.push(Value::Integer(before));
            format!(
                "{select} AND seq < ?{} ORDER BY seq DESC LIMIT ?{}",
                n + 1,
                n + 2
            )
        }
        None => {
            params.push(Value::Integer(page.after.unwrap_or(0)));
            format!(
                "{select} AND seq > ?{} ORDER BY seq ASC LIMIT ?{}",
                n + 1,
                n + 2
            )
        }
    };
    params.push(Value::Integer(i64::from(page.size) + 1));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows: Vec<(i64, T)> = stmt
        .query_map(rusqlite::params_from_iter(params), |row| {
            Ok((row.get::<_, i64>(0)?, map(row)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(crate::pagination::finish(rows, page))
}

// ---- control planes ----

const CP_SELECT: &str = "SELECT seq, id, name, created_at, updated_at FROM control_planes";

fn control_plane(row: &Row) -> rusqlite::Result<ControlPlane> {
    Ok(ControlPlane {
        id: uuid_at(row, 1)?,
        name: row.get(2)?,
        created_at: clock::rfc3339(row.get(3)?),
        updated_at: clock::rfc3339(row.get(4)?),
    })
}

fn control_plane_exists(conn: &Connection, id: &Uuid) -> StoreResult<bool> {
    Ok(optional(
        conn.prepare_cached("SELECT 1 FROM control_planes WHERE id = ?1")?
            .query_row([id.to_string()], |_| Ok(())),
    )?
    .is_some())
}

fn data_plane_token(row: &Row) -> rusqlite::Result<DataPlaneToken> {
    Ok(DataPlaneToken {
        id: uuid_at(row, 1)?,
        name: row.get(2)?,
        control_plane_id: uuid_at(row, 3)?,
        created_at: clock::rfc3339(row.get(4)?),
    })
}

// ---- realms ----

const REALM_SELECT: &str = "SELECT seq, id, name, ttl, negative_ttl, consumer_groups,
    allow_all_control_planes, created_at, updated_at,
    (SELECT group_concat(control_plane_id, ',' ORDER BY position)
       FROM realm_control_planes WHERE realm_id = realms.id)
    FROM realms";

fn realm(row: &Row) -> rusqlite::Result<Realm> {
    let allowed: Option<String> = row.get(9)?;
    let allowed_control_planes = allowed
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            Uuid::parse_str(s).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    9,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Realm {
        id: uuid_at(row, 1)?,
        name: row.get(2)?,
        ttl: row.get(3)?,
        negative_ttl: row.get(4)?,
        consumer_groups: strings_at(row, 5)?,
        allow_all_control_planes: row.get::<_, i64>(6)? != 0,
        created_at: clock::rfc3339(row.get(7)?),
        updated_at: clock::rfc3339(row.get(8)?),
        allowed_control_planes,
    })
}

fn load_realm(conn: &Connection, id: &Uuid) -> StoreResult<Option<Realm>> {
    Ok(optional(
        conn.prepare_cached(&format!("{REALM_SELECT} WHERE id = ?1"))?
            .query_row([id.to_string()], realm),
    )?)
}

fn require_realm(conn: &Connection, id: &Uuid) -> StoreResult<()> {
    let found = optional(
        conn.prepare_cached("SELECT 1 FROM realms WHERE id = ?1")?
            .query_row([id.to_string()], |_| Ok(())),
    )?;
    found.ok_or(StoreError::NotFound(Missing::Realm(*id)))
}

/// Replaces the realm's allowed control planes (deduplicated by the caller); each must exist.
fn set_allowed(conn: &Connection, realm: &Uuid, allowed: &[Uuid]) -> StoreResult<()> {
    let mut missing = Vec::new();
    for (i, cp) in allowed.iter().enumerate() {
        if !control_plane_exists(conn, cp)? {
            missing.push((
                format!("allowed_control_planes[{i}]"),
                Missing::ControlPlane(*cp),
            ));
        }
    }
    if !missing.is_empty() {
        return Err(StoreError::InvalidReference(missing));
    }
    conn.execute(
        "DELETE FROM realm_control_planes WHERE realm_id = ?1",
        [realm.to_string()],
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO realm_control_planes (realm_id, control_plane_id, position) VALUES (?1, ?2, ?3)",
    )?;
    for (position, cp) in allowed.iter().enumerate() {
        insert.execute(rusqlite::params![
            realm.to_string(),
            cp.to_string(),
            position as i64
        ])?;
    }
    Ok(())
}

// ---- consumers ----

const CONSUMER_SELECT: &str = "SELECT seq, id, username, custom_id, type, tags, consumer_groups,
    created_at, updated_at FROM consumers";

fn consumer(row: &Row) -> rusqlite::Result<Consumer> {
    Ok(Consumer {
        id: uuid_at(row, 1)?,
        username: row.get(2)?,
        custom_id: row.get(3)?,
        kind: row.get(4)?,
        tags: strings_at(row, 5)?,
        consumer_groups: strings_at(row, 6)?,
        created_at: clock::rfc3339(row.get(7)?),
        updated_at: clock::rfc3339(row.get(8)?),
    })
}

fn load_consumer(conn: &Connection, realm: &Uuid, id: &Uuid) -> StoreResult<Consumer> {
    optional(
        conn.prepare_cached(&format!(
            "{CONSUMER_SELECT} WHERE id = ?1 AND realm_id = ?2"
        ))?
        .query_row([id.to_string(), realm.to_string()], consumer),
    )?
    .ok_or(StoreError::NotFound(Missing::Consumer {
        realm: *realm,
        id: *id,
    }))
}

fn require_consumer(conn: &Connection, realm: &Uuid, id: &Uuid) -> StoreResult<()> {
    let found = optional(
        conn.prepare_cached("SELECT 1 FROM consumers WHERE id = ?1 AND realm_id = ?2")?
            .query_row([id.to_string(), realm.to_string()], |_| Ok(())),
    )?;
    found.ok_or(StoreError::NotFound(Missing::Consumer {
        realm: *realm,
        id: *id,
    }))
}

// ---- keys ----

const KEY_SELECT: &str = "SELECT seq, id, type, tags, created_at, updated_at, expires_at FROM keys";

fn key(row: &Row) -> rusqlite::Result<Key> {
    let kind: String = row.get(2)?;
    Ok(Key {
        id: uuid_at(row, 1)?,
        kind: KeyType::parse(&kind),
        tags: strings_at(row, 3)?,
        created_at: clock::rfc3339(row.get(4)?),
        updated_at: clock::rfc3339(row.get(5)?),
        expires_at: row.get::<_, Option<i64>>(6)?.map(clock::rfc3339),
    })
}

/// The key with this secret in this realm (expired or not), with its consumer.
fn key_record(
    conn: &Connection,
    realm: &Uuid,
    hash: &SecretHash,
) -> StoreResult<Option<KeyRecord>> {
    let row = optional(
        conn.prepare_cached(&format!(
            "{KEY_RECORD_SELECT} WHERE k.realm_id = ?1 AND k.secret_hash = ?2"
        ))?
        .query_row(rusqlite::params![realm.to_string(), &hash[..]], |r| {
            let stored: Vec<u8> = r.get(4)?;
            Ok((
                stored,
                KeyRecord {
                    key_id: uuid_at(r, 0)?,
                    key_type: KeyType::parse(&r.get::<_, String>(11)?),
                    key_created_at: r.get(1)?,
                    key_tags: strings_at(r, 2)?,
                    expires_at: r.get(3)?,
                    consumer_id: uuid_at(r, 5)?,
                    username: r.get(6)?,
                    custom_id: r.get(7)?,
                    kind: r.get(8)?,
                    tags: strings_at(r, 9)?,
                    consumer_groups: strings_at(r, 10)?,
                },
            ))
        }),
    )?;
    Ok(row
        .filter(|(stored, _)| secrets::hashes_equal(stored, hash))
        .map(|(_, record)| record))
}

impl SqliteStore {
    pub async fn ping(self: &Arc<Self>) -> StoreResult<()> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    pub async fn create_control_plane(self: &Arc<Self>, name: String) -> StoreResult<ControlPlane> {
        self.write(move |tx| {
            let now = clock::now();
            let id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO control_planes (id, name, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                rusqlite::params![id.to_string(), name, now],
            )?;
            Ok(ControlPlane {
                id,
                name,
                created_at: clock::rfc3339(now),
                updated_at: clock::rfc3339(now),
            })
        })
        .await
    }

    pub async fn list_control_planes(
        self: &Arc<Self>,
        page: PageRequest,
    ) -> StoreResult<Rows<ControlPlane>> {
        self.read(move |conn| {
            fetch(
                conn,
                &format!("{CP_SELECT} WHERE 1 = 1"),
                vec![],
                &page,
                control_plane,
            )
        })
        .await
    }

    pub async fn get_control_plane(self: &Arc<Self>, id: Uuid) -> StoreResult<ControlPlane> {
        self.read(move |conn| {
            optional(
                conn.prepare_cached(&format!("{CP_SELECT} WHERE id = ?1"))?
                    .query_row([id.to_string()], control_plane),
            )?
            .ok_or(StoreError::NotFound(Missing::ControlPlane(id)))
        })
        .await
    }

    pub async fn delete_control_plane(self: &Arc<Self>, id: Uuid) -> StoreResult<()> {
        self.write(move |tx| {
            let n = tx.execute("DELETE FROM control_planes WHERE id = ?1", [id.to_string()])?;
            if n == 0 {
                return Err(StoreError::NotFound(Missing::ControlPlane(id)));
            }
            Ok(())
        })
        .await
    }

    pub async fn create_data_plane_token(
        self: &Arc<Self>,
        control_plane: Uuid,
        name: Option<String>,
        hash: SecretHash,
    ) -> StoreResult<DataPlaneToken> {
        self.write(move |tx| {
            if !control_plane_exists(tx, &control_plane)? {
                return Err(StoreError::NotFound(Missing::ControlPlane(control_plane)));
            }
            let now = clock::now();
            let id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO data_plane_tokens (id, control_plane_id, name, token_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    id.to_string(),
                    control_plane.to_string(),
                    name,
                    &hash[..],
                    now
                ],
            )?;
            Ok(DataPlaneToken {
                id,
                name,
                control_plane_id: control_plane,
                created_at: clock::rfc3339(now),
            })
        })
        .await
    }

    pub async fn list_data_plane_tokens(
        self: &Arc<Self>,
        control_plane: Uuid,
        page: PageRequest,
    ) -> StoreResult<Rows<DataPlaneToken>> {
        self.read(move |conn| {
            if !control_plane_exists(conn, &control_plane)? {
                return Err(StoreError::NotFound(Missing::ControlPlane(control_plane)));
            }
            fetch(
                conn,
                "SELECT seq, id, name, control_plane_id, created_at FROM data_plane_tokens
                 WHERE control_plane_id = ?1",
                vec![control_plane.to_string().into()],
                &page,
                data_plane_token,
            )
        })
        .await
    }

    pub async fn delete_data_plane_token(
        self: &Arc<Self>,
        control_plane: Uuid,
        id: Uuid,
    ) -> StoreResult<()> {
        self.write(move |tx| {
            let n = tx.execute(
                "DELETE FROM data_plane_tokens WHERE id = ?1 AND control_plane_id = ?2",
                [id.to_string(), control_plane.to_string()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(Missing::DataPlaneToken {
                    control_plane,
                    id,
                }));
            }
            Ok(())
        })
        .await
    }

    pub async fn create_realm(self: &Arc<Self>, new: NewRealm) -> StoreResult<Realm> {
        self.write(move |tx| {
            let now = clock::now();
            let id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO realms (id, name, ttl, negative_ttl, consumer_groups,
                    allow_all_control_planes, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                rusqlite::params![
                    id.to_string(),
                    new.name,
                    new.ttl,
                    new.negative_ttl,
                    to_json(&new.consumer_groups),
                    new.allow_all_control_planes,
                    now
                ],
            )?;
            set_allowed(tx, &id, &new.allowed_control_planes)?;
            load_realm(tx, &id)?.ok_or(StoreError::NotFound(Missing::Realm(id)))
        })
        .await
    }

    pub async fn list_realms(self: &Arc<Self>, page: PageRequest) -> StoreResult<Rows<Realm>> {
        self.read(move |conn| {
            fetch(
                conn,
                &format!("{REALM_SELECT} WHERE 1 = 1"),
                vec![],
                &page,
                realm,
            )
        })
        .await
    }

    pub async fn find_realm(self: &Arc<Self>, id: Uuid) -> StoreResult<Option<Realm>> {
        self.read(move |conn| load_realm(conn, &id)).await
    }

    pub async fn update_realm(
        self: &Arc<Self>,
        id: Uuid,
        changes: RealmChanges,
    ) -> StoreResult<Realm> {
        self.write(move |tx| {
            let current = load_realm(tx, &id)?.ok_or(StoreError::NotFound(Missing::Realm(id)))?;
            tx.execute(
                "UPDATE realms SET name = ?2, ttl = ?3, negative_ttl = ?4, consumer_groups = ?5,
                    allow_all_control_planes = ?6, updated_at = ?7 WHERE id = ?1",
                rusqlite::params![
                    id.to_string(),
                    changes.name.unwrap_or(current.name),
                    changes.ttl.unwrap_or(current.ttl),
                    changes.negative_ttl.unwrap_or(current.negative_ttl),
                    to_json(&changes.consumer_groups.unwrap_or(current.consumer_groups)),
                    changes
                        .allow_all_control_planes
                        .unwrap_or(current.allow_all_control_planes),
                    clock::now()
                ],
            )?;
            if let Some(allowed) = changes.allowed_control_planes {
                set_allowed(tx, &id, &allowed)?;
            }
            load_realm(tx, &id)?.ok_or(StoreError::NotFound(Missing::Realm(id)))
        })
        .await
    }

    pub async fn delete_realm(self: &Arc<Self>, id: Uuid, force: bool) -> StoreResult<()> {
        self.write(move |tx| {
            require_realm(tx, &id)?;
            if !force {
                let consumers: i64 = tx.query_row(
                    "SELECT count(*) FROM consumers WHERE realm_id = ?1",
                    [id.to_string()],
                    |r| r.get(0),
                )?;
                if consumers > 0 {
                    return Err(StoreError::RealmNotEmpty(consumers));
                }
            }
            tx.execute("DELETE FROM realms WHERE id = ?1", [id.to_string()])?;
            Ok(())
        })
        .await
    }

    pub async fn create_consumer(
        self: &Arc<Self>,
        realm: Uuid,
        new: NewConsumer,
    ) -> StoreResult<Consumer> {
        self.write(move |tx| {
            require_realm(tx, &realm)?;
            let now = clock::now();
            let id = Uuid::new_v4();
            let inserted = tx.execute(
                "INSERT INTO consumers (id, realm_id, username, custom_id, type, tags,
                    consumer_groups, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                rusqlite::params![
                    id.to_string(),
                    realm.to_string(),
                    new.username,
                    new.custom_id,
                    new.kind,
                    to_json(&new.tags),
                    to_json(&new.consumer_groups),
                    now
                ],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(Conflict::Username {
                        username: new.username,
                        realm,
                    }))
                }
                other => other?,
            };
            load_consumer(tx, &realm, &id)
        })
        .await
    }

    pub async fn list_consumers(
        self: &Arc<Self>,
        realm: Uuid,
        filter: ConsumerFilter,
        page: PageRequest,
    ) -> StoreResult<Rows<Consumer>> {
        self.read(move |conn| {
            require_realm(conn, &realm)?;
            let mut sql = format!("{CONSUMER_SELECT} WHERE realm_id = ?1");
            let mut params: Vec<Value> = vec![realm.to_string().into()];
            if let Some(u) = filter.username {
                params.push(u.into());
                sql.push_str(&format!(" AND username = ?{}", params.len()));
            }
            if let Some(c) = filter.custom_id {
                params.push(c.into());
                sql.push_str(&format!(" AND custom_id = ?{}", params.len()));
            }
            fetch(conn, &sql, params, &page, consumer)
        })
        .await
    }

    pub async fn get_consumer(self: &Arc<Self>, realm: Uuid, id: Uuid) -> StoreResult<Consumer> {
        self.read(move |conn| load_consumer(conn, &realm, &id))
            .await
    }

    pub async fn update_consumer(
        self: &Arc<Self>,
        realm: Uuid,
        id: Uuid,
        changes: ConsumerChanges,
    ) -> StoreResult<Consumer> {
        self.write(move |tx| {
            let current = load_consumer(tx, &realm, &id)?;
            let username = changes.username.unwrap_or(current.username);
            let result = tx.execute(
                "UPDATE consumers SET username = ?2, custom_id = ?3, type = ?4, tags = ?5,
                    consumer_groups = ?6, updated_at = ?7 WHERE id = ?1",
                rusqlite::params![
                    id.to_string(),
                    username,
                    changes.custom_id.unwrap_or(current.custom_id),
                    changes.kind.unwrap_or(current.kind),
                    to_json(&changes.tags.unwrap_or(current.tags)),
                    to_json(&changes.consumer_groups.unwrap_or(current.consumer_groups)),
                    clock::now()
                ],
            );
            match result {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(Conflict::Username { username, realm }))
                }
                other => other?,
            };
            load_consumer(tx, &realm, &id)
        })
        .await
    }

    pub async fn delete_consumer(self: &Arc<Self>, realm: Uuid, id: Uuid) -> StoreResult<()> {
        self.write(move |tx| {
            let n = tx.execute(
                "DELETE FROM consumers WHERE id = ?1 AND realm_id = ?2",
                [id.to_string(), realm.to_string()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(Missing::Consumer { realm, id }));
            }
            Ok(())
        })
        .await
    }

    pub async fn move_consumer(
        self: &Arc<Self>,
        realm: Uuid,
        id: Uuid,
        target: Uuid,
    ) -> StoreResult<()> {
        self.write(move |tx| {
            let current = load_consumer(tx, &realm, &id)?;
            if target == realm {
                return Ok(());
            }
            require_realm(tx, &target)?;
            let moved = tx.execute(
                "UPDATE consumers SET realm_id = ?2, updated_at = ?3 WHERE id = ?1",
                rusqlite::params![id.to_string(), target.to_string(), clock::now()],
            );
            match moved {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(Conflict::Username {
                        username: current.username,
                        realm: target,
                    }))
                }
                other => other?,
            };
            let keys = tx.execute(
                "UPDATE keys SET realm_id = ?2 WHERE consumer_id = ?1",
                [id.to_string(), target.to_string()],
            );
            match keys {
                Err(e) if is_unique_violation(&e) => {
                    Err(StoreError::Conflict(Conflict::MovedKey {
                        consumer: id,
                        realm: target,
                    }))
                }
                other => other.map(|_| ()).map_err(StoreError::from),
            }
        })
        .await
    }

    pub async fn create_key(
        self: &Arc<Self>,
        realm: Uuid,
        consumer: Uuid,
        new: NewKey,
    ) -> StoreResult<Key> {
        self.write(move |tx| {
            require_consumer(tx, &realm, &consumer)?;
            let now = clock::now();
            let id = Uuid::new_v4();
            let expires_at = new.ttl.map(|t| now + t);
            let inserted = tx.execute(
                "INSERT INTO keys (id, consumer_id, realm_id, type, secret_hash, tags, created_at,
                    updated_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
                rusqlite::params![
                    id.to_string(),
                    consumer.to_string(),
                    realm.to_string(),
                    new.kind.as_str(),
                    &new.secret_hash[..],
                    to_json(&new.tags),
                    now,
                    expires_at
                ],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(Conflict::Secret { realm }))
                }
                other => other?,
            };
            Ok(Key {
                id,
                kind: new.kind,
                tags: new.tags,
                created_at: clock::rfc3339(now),
                updated_at: clock::rfc3339(now),
                expires_at: expires_at.map(clock::rfc3339),
            })
        })
        .await
    }

    pub async fn list_keys(
        self: &Arc<Self>,
        realm: Uuid,
        consumer: Uuid,
        page: PageRequest,
    ) -> StoreResult<Rows<Key>> {
        self.read(move |conn| {
            require_consumer(conn, &realm, &consumer)?;
            fetch(
                conn,
                &format!("{KEY_SELECT} WHERE consumer_id = ?1"),
                vec![consumer.to_string().into()],
                &page,
                key,
            )
        })
        .await
    }

    pub async fn get_key(
        self: &Arc<Self>,
        realm: Uuid,
        consumer: Uuid,
        id: Uuid,
    ) -> StoreResult<Key> {
        self.read(move |conn| {
            require_consumer(conn, &realm, &consumer)?;
            optional(
                conn.prepare_cached(&format!("{KEY_SELECT} WHERE id = ?1 AND consumer_id = ?2"))?
                    .query_row([id.to_string(), consumer.to_string()], key),
            )?
            .ok_or(StoreError::NotFound(Missing::Key { consumer, id }))
        })
        .await
    }

    pub async fn delete_key(
        self: &Arc<Self>,
        realm: Uuid,
        consumer: Uuid,
        id: Uuid,
    ) -> StoreResult<()> {
        self.write(move |tx| {
            require_consumer(tx, &realm, &consumer)?;
            let n = tx.execute(
                "DELETE FROM keys WHERE id = ?1 AND consumer_id = ?2",
                [id.to_string(), consumer.to_string()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(Missing::Key { consumer, id }));
            }
            Ok(())
        })
        .await
    }

    pub async fn control_plane_of_token(
        self: &Arc<Self>,
        hash: SecretHash,
    ) -> StoreResult<Option<Uuid>> {
        self.read(move |conn| {
            let row = optional(
                conn.prepare_cached(
                    "SELECT control_plane_id, token_hash FROM data_plane_tokens WHERE token_hash = ?1",
                )?
                .query_row([&hash[..]], |r| {
                    Ok((uuid_at(r, 0)?, r.get::<_, Vec<u8>>(1)?))
                }),
            )?;
            Ok(row
                .filter(|(_, stored)| secrets::hashes_equal(stored, &hash))
                .map(|(cp, _)| cp))
        })
        .await
    }

    pub async fn key_by_secret(
        self: &Arc<Self>,
        realm: Uuid,
        hash: SecretHash,
    ) -> StoreResult<Option<KeyRecord>> {
        self.read(move |conn| key_record(conn, &realm, &hash)).await
    }

    pub async fn check_key(
        self: &Arc<Self>,
        realm: Uuid,
        hash: SecretHash,
    ) -> StoreResult<Option<KeyRecord>> {
        self.read(move |conn| {
            require_realm(conn, &realm)?;
            key_record(conn, &realm, &hash)
        })
        .await
    }

    pub async fn is_admin_token(self: &Arc<Self>, hash: SecretHash) -> StoreResult<bool> {
        self.read(move |conn| {
            let stored: Option<Vec<u8>> = optional(
                conn.prepare_cached("SELECT token_hash FROM admin_tokens WHERE token_hash = ?1")?
                    .query_row([&hash[..]], |r| r.get(0)),
            )?;
            Ok(stored.is_some_and(|s| secrets::hashes_equal(&s, &hash)))
        })
        .await
    }

    pub async fn create_admin_token(
        self: &Arc<Self>,
        name: String,
        hash: SecretHash,
    ) -> StoreResult<Uuid> {
        self.write(move |tx| {
            let id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO admin_tokens (id, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![id.to_string(), name, &hash[..], clock::now()],
            )?;
            Ok(id)
        })
        .await
    }

    pub async fn revoke_admin_tokens(self: &Arc<Self>, name: String) -> StoreResult<u64> {
        self.write(move |tx| {
            let n = tx.execute("DELETE FROM admin_tokens WHERE name = ?1", [name])?;
            Ok(n as u64)
        })
        .await
    }
}
