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
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, Row, Transaction, TransactionBehavior};
use uuid::Uuid;

use super::rows::if_hash_matches;
use super::rows::{
    column, consumer, control_plane, data_plane_token, deleted, key, key_record, new_control_plane,
    new_data_plane_token, new_key, realm, realm_select, to_json, Columns, CONSUMER_SELECT,
    CP_SELECT, DP_TOKEN_SELECT, KEY_RECORD_SELECT, KEY_SELECT,
};
use super::{
    Conflict, ConsumerChanges, ConsumerFilter, KeyRecord, Missing, NewConsumer, NewKey, NewRealm,
    RealmChanges, Rows, StoreError, StoreResult,
};
use crate::cache::AuthCache;
use crate::clock;
use crate::error::Error;
use crate::model::{Consumer, ControlPlane, DataPlaneToken, Key, Realm};
use crate::pagination::PageRequest;
use crate::secrets::SecretHash;

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
    conn.busy_timeout(BUSY_TIMEOUT)?;
    set_wal_mode(&conn)?;
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

/// How long a connection waits for another one's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Switches the file to WAL. Two processes converting a new file at once both hold a shared lock
/// and both want the exclusive one: SQLite answers one of them `SQLITE_BUSY` at once, without its
/// busy handler (waiting would deadlock), so the loser waits here and tries again; by then the
/// file is in WAL and the pragma only reads it.
fn set_wal_mode(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
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

impl Columns for Row<'_> {
    fn uuid(&self, i: usize) -> StoreResult<Uuid> {
        Uuid::parse_str(&self.text(i)?).map_err(|e| column(i, e))
    }
    fn text(&self, i: usize) -> StoreResult<String> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> StoreResult<Option<String>> {
        Ok(self.get(i)?)
    }
    fn int(&self, i: usize) -> StoreResult<i64> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> StoreResult<Option<i64>> {
        Ok(self.get(i)?)
    }
    fn flag(&self, i: usize) -> StoreResult<bool> {
        Ok(self.int(i)? != 0)
    }
    fn bytes(&self, i: usize) -> StoreResult<Vec<u8>> {
        Ok(self.get(i)?)
    }
    /// `group_concat` text: ids separated by commas (NULL for none).
    fn uuids(&self, i: usize) -> StoreResult<Vec<Uuid>> {
        let text: Option<String> = self.get(i)?;
        text.as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| Uuid::parse_str(s).map_err(|e| column(i, e)))
            .collect()
    }
}

/// The first row `sql` selects, mapped; `None` when there is none.
fn query_opt<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnOnce(&Row) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    match rows.next()? {
        Some(row) => map(row).map(Some),
        None => Ok(None),
    }
}

/// Does `sql` (`SELECT 1 ... WHERE ...`) find a row?
fn exists(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> StoreResult<bool> {
    Ok(query_opt(conn, sql, params, |_| Ok(()))?.is_some())
}

/// Is this a UNIQUE constraint failure?
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// A write's outcome, a UNIQUE failure being `conflict`.
fn unique_or(result: rusqlite::Result<usize>, conflict: Conflict) -> StoreResult<usize> {
    match result {
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(conflict)),
        other => Ok(other?),
    }
}

/// Runs `select` (which must select `seq` first and end in a WHERE clause) for one page.
fn fetch<T>(
    conn: &Connection,
    select: &str,
    mut params: Vec<Value>,
    page: &PageRequest,
    map: impl Fn(&Row) -> StoreResult<T>,
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
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut found = Vec::new();
    while let Some(row) = rows.next()? {
        found.push((row.int(0)?, map(row)?));
    }
    Ok(crate::pagination::finish(found, page))
}

fn control_plane_exists(conn: &Connection, id: &Uuid) -> StoreResult<bool> {
    exists(
        conn,
        "SELECT 1 FROM control_planes WHERE id = ?1",
        [id.to_string()],
    )
}

/// The allowed control planes of `realms` in order, as one comma-separated text (column 9).
const REALM_SELECT: &str = realm_select!(
    "(SELECT group_concat(control_plane_id, ',' ORDER BY position)
       FROM realm_control_planes WHERE realm_id = realms.id)"
);

fn load_realm(conn: &Connection, id: &Uuid) -> StoreResult<Option<Realm>> {
    query_opt(
        conn,
        &format!("{REALM_SELECT} WHERE id = ?1"),
        [id.to_string()],
        |r| realm(r),
    )
}

fn require_realm(conn: &Connection, id: &Uuid) -> StoreResult<()> {
    if exists(conn, "SELECT 1 FROM realms WHERE id = ?1", [id.to_string()])? {
        Ok(())
    } else {
        Err(StoreError::NotFound(Missing::Realm(*id)))
    }
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

fn load_consumer(conn: &Connection, realm: &Uuid, id: &Uuid) -> StoreResult<Consumer> {
    query_opt(
        conn,
        &format!("{CONSUMER_SELECT} WHERE id = ?1 AND realm_id = ?2"),
        [id.to_string(), realm.to_string()],
        |r| consumer(r),
    )?
    .ok_or(StoreError::NotFound(Missing::Consumer {
        realm: *realm,
        id: *id,
    }))
}

fn require_consumer(conn: &Connection, realm: &Uuid, id: &Uuid) -> StoreResult<()> {
    if exists(
        conn,
        "SELECT 1 FROM consumers WHERE id = ?1 AND realm_id = ?2",
        [id.to_string(), realm.to_string()],
    )? {
        Ok(())
    } else {
        Err(StoreError::NotFound(Missing::Consumer {
            realm: *realm,
            id: *id,
        }))
    }
}

/// The key with this secret in this realm (expired or not), with its consumer.
fn find_key_record(
    conn: &Connection,
    realm: &Uuid,
    hash: &SecretHash,
) -> StoreResult<Option<KeyRecord>> {
    Ok(query_opt(
        conn,
        &format!("{KEY_RECORD_SELECT} WHERE k.realm_id = ?1 AND k.secret_hash = ?2"),
        rusqlite::params![realm.to_string(), &hash[..]],
        |r| key_record(r, hash),
    )?
    .flatten())
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
            Ok(new_control_plane(id, name, now))
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
                |r| control_plane(r),
            )
        })
        .await
    }

    pub async fn get_control_plane(self: &Arc<Self>, id: Uuid) -> StoreResult<ControlPlane> {
        self.read(move |conn| {
            query_opt(
                conn,
                &format!("{CP_SELECT} WHERE id = ?1"),
                [id.to_string()],
                |r| control_plane(r),
            )?
            .ok_or(StoreError::NotFound(Missing::ControlPlane(id)))
        })
        .await
    }

    pub async fn delete_control_plane(self: &Arc<Self>, id: Uuid) -> StoreResult<()> {
        self.write(move |tx| {
            let n = tx.execute("DELETE FROM control_planes WHERE id = ?1", [id.to_string()])?;
            deleted(n as u64, Missing::ControlPlane(id))
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
            Ok(new_data_plane_token(id, name, control_plane, now))
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
                &format!("{DP_TOKEN_SELECT} WHERE control_plane_id = ?1"),
                vec![control_plane.to_string().into()],
                &page,
                |r| data_plane_token(r),
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
            deleted(n as u64, Missing::DataPlaneToken { control_plane, id })
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
                |r| realm(r),
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
            unique_or(
                inserted,
                Conflict::Username {
                    username: new.username,
                    realm,
                },
            )?;
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
            fetch(conn, &sql, params, &page, |r| consumer(r))
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
            unique_or(result, Conflict::Username { username, realm })?;
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
            deleted(n as u64, Missing::Consumer { realm, id })
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
            unique_or(
                moved,
                Conflict::Username {
                    username: current.username,
                    realm: target,
                },
            )?;
            let keys = tx.execute(
                "UPDATE keys SET realm_id = ?2 WHERE consumer_id = ?1",
                [id.to_string(), target.to_string()],
            );
            unique_or(
                keys,
                Conflict::MovedKey {
                    consumer: id,
                    realm: target,
                },
            )?;
            Ok(())
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
            unique_or(inserted, Conflict::Secret { realm })?;
            Ok(new_key(id, new, now, expires_at))
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
                |r| key(r),
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
            query_opt(
                conn,
                &format!("{KEY_SELECT} WHERE id = ?1 AND consumer_id = ?2"),
                [id.to_string(), consumer.to_string()],
                |r| key(r),
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
            deleted(n as u64, Missing::Key { consumer, id })
        })
        .await
    }

    pub async fn control_plane_of_token(
        self: &Arc<Self>,
        hash: SecretHash,
    ) -> StoreResult<Option<Uuid>> {
        self.read(move |conn| {
            let row = query_opt(
                conn,
                "SELECT control_plane_id, token_hash FROM data_plane_tokens WHERE token_hash = ?1",
                [&hash[..]],
                |r| Ok((r.uuid(0)?, r.bytes(1)?)),
            )?;
            Ok(if_hash_matches(row, &hash))
        })
        .await
    }

    pub async fn key_by_secret(
        self: &Arc<Self>,
        realm: Uuid,
        hash: SecretHash,
    ) -> StoreResult<Option<KeyRecord>> {
        self.read(move |conn| find_key_record(conn, &realm, &hash))
            .await
    }

    pub async fn check_key(
        self: &Arc<Self>,
        realm: Uuid,
        hash: SecretHash,
    ) -> StoreResult<Option<KeyRecord>> {
        self.read(move |conn| {
            require_realm(conn, &realm)?;
            find_key_record(conn, &realm, &hash)
        })
        .await
    }

    pub async fn is_admin_token(self: &Arc<Self>, hash: SecretHash) -> StoreResult<bool> {
        self.read(move |conn| {
            let row = query_opt(
                conn,
                "SELECT 1, token_hash FROM admin_tokens WHERE token_hash = ?1",
                [&hash[..]],
                |r| Ok(((), r.bytes(1)?)),
            )?;
            Ok(if_hash_matches(row, &hash).is_some())
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
