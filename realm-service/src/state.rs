//! Shared state of the service: the store, the authenticate cache and the metrics.

use std::path::Path;
use std::sync::Arc;

use crate::cache::AuthCache;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::secrets::{self, SecretHash};
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Database, Store};

/// The shortest `REALM_ADMIN_TOKEN` accepted (a bootstrap token is a password to the whole API).
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    cache: Arc<AuthCache>,
    metrics: Metrics,
    /// The hash of the admin token this process was started with (`REALM_ADMIN_TOKEN`). Held in
    /// memory only: it is never written to the database, so starting one replica never revokes
    /// another replica's token or one minted with `token create`.
    bootstrap: Option<SecretHash>,
    /// Background tasks (the PostgreSQL listener), stopped with the state.
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Refuses a bootstrap admin token shorter than [`MIN_ADMIN_TOKEN_CHARS`].
pub fn check_admin_token(token: &str) -> Result<(), Error> {
    let n = token.chars().count();
    if n < MIN_ADMIN_TOKEN_CHARS {
        return Err(Error::Config(format!(
            "REALM_ADMIN_TOKEN (admin_token) is {n} characters; it must be at least \
             {MIN_ADMIN_TOKEN_CHARS} (generate one, e.g. `openssl rand -base64 32`)"
        )));
    }
    Ok(())
}

impl AppState {
    /// Opens and migrates a SQLite database and accepts `admin_token` (blocking). The file is
    /// locked to this process while the state lives.
    pub fn open(database: &Path, admin_token: Option<&str>) -> Result<AppState, Error> {
        let bootstrap = bootstrap(admin_token)?;
        let cache = Arc::new(AuthCache::default());
        let store = SqliteStore::open(database, true, cache.clone())?;
        Ok(AppState::new(
            Store::Sqlite(Arc::new(store)),
            cache,
            bootstrap,
            Vec::new(),
        ))
    }

    /// Opens the database (SQLite file or PostgreSQL URL), migrates it, and on PostgreSQL starts
    /// listening for other replicas' invalidations.
    pub async fn connect(
        database: &Database,
        admin_token: Option<&str>,
    ) -> Result<AppState, Error> {
        match database {
            Database::Sqlite(path) => {
                let path = path.clone();
                let token = admin_token.map(str::to_string);
                tokio::task::spawn_blocking(move || AppState::open(&path, token.as_deref()))
                    .await
                    .map_err(|e| Error::Task(e.to_string()))?
            }
            Database::Postgres(url) => {
                let bootstrap = bootstrap(admin_token)?;
                let cache = Arc::new(AuthCache::default());
                let store = Arc::new(PgStore::connect(url, cache.clone()).await?);
                let listener = store.listen().abort_handle();
                Ok(AppState::new(
                    Store::Postgres(store),
                    cache,
                    bootstrap,
                    vec![listener],
                ))
            }
        }
    }

    fn new(
        store: Store,
        cache: Arc<AuthCache>,
        bootstrap: Option<SecretHash>,
        tasks: Vec<tokio::task::AbortHandle>,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                store,
                cache,
                metrics: Metrics::default(),
                bootstrap,
                tasks,
            }),
        }
    }

    /// The store (handlers call its operations; they never see SQL).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn cache(&self) -> &AuthCache {
        &self.inner.cache
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Is the authenticate cache in use? Always on SQLite; on PostgreSQL once the invalidation
    /// listener is connected (until then, and whenever it is down, look-ups read the database).
    pub fn listening(&self) -> bool {
        self.inner.cache.is_live()
    }

    /// Is this the hash of the token the process was started with?
    pub(crate) fn is_bootstrap_admin(&self, hash: &SecretHash) -> bool {
        self.inner
            .bootstrap
            .is_some_and(|b| secrets::hashes_equal(&b, hash))
    }
}

fn bootstrap(admin_token: Option<&str>) -> Result<Option<SecretHash>, Error> {
    match admin_token {
        Some(token) => {
            check_admin_token(token)?;
            Ok(Some(secrets::hash(token)))
        }
        None => Ok(None),
    }
}

/// Opens a store for a one-off command (no single-process lock, no listener).
async fn open_for_command(database: &Database) -> Result<Store, Error> {
    let cache = Arc::new(AuthCache::default());
    Ok(match database {
        Database::Sqlite(path) => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path, false, cache))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
            Store::Sqlite(Arc::new(store))
        }
        Database::Postgres(url) => Store::Postgres(Arc::new(PgStore::connect(url, cache).await?)),
    })
}

fn storage(database: &Database) -> impl Fn(crate::store::StoreError) -> Error + '_ {
    move |e| Error::Database {
        database: database.describe(),
        reason: e.to_string(),
    }
}

/// Mints an admin token named `name` and returns it (the only time it is visible). Used by
/// `realm-service token create`. On PostgreSQL every replica accepts it at once.
pub async fn create_admin_token(database: &Database, name: &str) -> Result<String, Error> {
    let store = open_for_command(database).await?;
    let token = secrets::generate(secrets::ADMIN_TOKEN_PREFIX)
        .map_err(|e| Error::Task(format!("random source: {e}")))?;
    store
        .create_admin_token(name.to_string(), secrets::hash(&token))
        .await
        .map_err(storage(database))?;
    Ok(token)
}

/// Revokes every admin token named `name`; returns how many there were. Used by
/// `realm-service token revoke`. On PostgreSQL every replica refuses them within a second.
pub async fn revoke_admin_token(database: &Database, name: &str) -> Result<u64, Error> {
    let store = open_for_command(database).await?;
    store
        .revoke_admin_tokens(name.to_string())
        .await
        .map_err(storage(database))
}
