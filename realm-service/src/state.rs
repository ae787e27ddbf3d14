//! Shared state of the service: the database, the authenticate cache and the metrics.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, Transaction};

use crate::cache::AuthCache;
use crate::db::Db;
use crate::error::{ApiError, Error};
use crate::metrics::Metrics;
use crate::{clock, secrets};

/// Name under which the `REALM_ADMIN_TOKEN` given at start is stored (hashed). It is replaced at
/// every start, so a token that is no longer configured stops working.
pub const ENV_ADMIN_TOKEN_NAME: &str = "env:REALM_ADMIN_TOKEN";

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    cache: AuthCache,
    metrics: Metrics,
}

impl AppState {
    /// Opens and migrates the database and registers `admin_token` (blocking).
    pub fn open(database: &Path, admin_token: Option<&str>) -> Result<AppState, Error> {
        let db = Db::open(database)?;
        let hash = admin_token.map(secrets::hash);
        db.write(|tx| {
            tx.execute(
                "DELETE FROM admin_tokens WHERE name = ?1",
                [ENV_ADMIN_TOKEN_NAME],
            )?;
            if let Some(hash) = hash {
                tx.execute(
                    "INSERT INTO admin_tokens (id, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (token_hash) DO NOTHING",
                    rusqlite::params![
                        uuid::Uuid::new_v4().to_string(),
                        ENV_ADMIN_TOKEN_NAME,
                        &hash[..],
                        clock::now()
                    ],
                )?;
            }
            Ok(())
        })
        .map_err(|e| Error::Task(e.detail))?;
        Ok(AppState {
            inner: Arc::new(Inner {
                db,
                cache: AuthCache::default(),
                metrics: Metrics::default(),
            }),
        })
    }

    pub(crate) fn cache(&self) -> &AuthCache {
        &self.inner.cache
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Runs a read on a blocking thread.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
    {
        let state = self.clone();
        tokio::task::spawn_blocking(move || state.inner.db.read(f))
            .await
            .map_err(ApiError::internal)?
    }

    /// Runs a write transaction on a blocking thread; once it has committed, the authenticate
    /// cache is invalidated (every write path, so none can forget).
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T, ApiError> + Send + 'static,
    {
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            let value = state.inner.db.write(f)?;
            state.inner.cache.invalidate();
            Ok(value)
        })
        .await
        .map_err(ApiError::internal)?
    }
}

/// Mints an admin token named `name` in the database at `database` and returns it (the only
/// time it is visible). Used by `realm-service token create`.
pub fn create_admin_token(database: &Path, name: &str) -> Result<String, Error> {
    let db = Db::open(database)?;
    let token = secrets::generate(secrets::ADMIN_TOKEN_PREFIX)
        .map_err(|e| Error::Task(format!("random source: {e}")))?;
    let hash = secrets::hash(&token);
    let name = name.to_string();
    db.write(|tx| {
        tx.execute(
            "INSERT INTO admin_tokens (id, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![
                uuid::Uuid::new_v4().to_string(),
                name,
                &hash[..],
                clock::now()
            ],
        )?;
        Ok(())
    })
    .map_err(|e| Error::Task(e.detail))?;
    Ok(token)
}
