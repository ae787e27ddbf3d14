//! SQLite storage: one writer connection, a small pool of readers, schema migrations.
//!
//! WAL journal with `synchronous=FULL`: a write is on disk when its transaction commits, and the
//! API answers only after that, so an acknowledged write survives `kill -9` (and power loss).
//! Readers never block the writer, and the authenticate path only ever reads.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::error::{ApiError, Error};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[r#"
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

/// The database: a writer behind a mutex and a pool of read-only connections.
pub struct Db {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

/// How much of the database file each connection maps into memory.
const MMAP_BYTES: i64 = 1 << 30;

/// How many idle reader connections are kept.
const MAX_IDLE_READERS: usize = 16;

impl Db {
    /// Opens (creating if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Db, Error> {
        let wrap = |source| Error::Database {
            path: path.display().to_string(),
            source,
        };
        let mut writer = open_connection(path, false).map_err(wrap)?;
        migrate(&mut writer).map_err(wrap)?;
        Ok(Db {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Runs `f` on a reader connection (blocking; call from a blocking thread).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
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
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Transaction) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
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

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let done: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
        tracing::info!(migration = index + 1, "database migrated");
    }
    Ok(())
}

/// The store is reachable (for `GET /health`).
pub fn ping(conn: &Connection) -> Result<(), ApiError> {
    conn.query_row("SELECT 1", [], |_| Ok(()))?;
    Ok(())
}
