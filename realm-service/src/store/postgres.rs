//! The PostgreSQL store: any number of stateless replicas on one database.
//!
//! - A pool of connections (deadpool-postgres over tokio-postgres). Every operation has a time
//!   bound ([`OPERATION_TIMEOUT`]; getting a connection, [`POOL_TIMEOUT`]): while the database
//!   cannot be reached, an operation fails with [`StoreError::Unavailable`] (503) instead of
//!   hanging, and the pool reconnects by itself once the database is back.
//! - Migrations run at start under a session advisory lock, so whichever replica starts first
//!   runs them and the others wait, then find nothing to do. A schema newer than the binary is
//!   refused.
//! - Every write runs `pg_notify('keyrealm_invalidate', ...)` inside its transaction: the
//!   notification is delivered, to every replica's listener, only if and when the write commits.
//!   [`PgStore::listen`] keeps one connection listening; while it is down, the replica's cache is
//!   suspended (every look-up reads the database) and it resumes once the listener is back.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    ClientWrapper, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, GenericClient, NoTls, Row};
use uuid::Uuid;

use super::rows::{
    column, consumer, control_plane, data_plane_token, deleted, if_hash_matches, key, key_record,
    new_control_plane, new_data_plane_token, new_key, realm, realm_select, to_json, Columns,
    CONSUMER_SELECT, CP_SELECT, DP_TOKEN_SELECT, KEY_RECORD_SELECT, KEY_SELECT,
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

/// The channel every write notifies and every replica listens on.
pub const CHANNEL: &str = "keyrealm_invalidate";

/// The `application_name` of the listening connection (operators can find it in
/// `pg_stat_activity`).
pub const LISTENER_APPLICATION_NAME: &str = "realm-service-listener";

/// The longest any one store operation may take before it is answered 503.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a request waits for a pooled connection (or for a new one to connect).
pub const POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the listener checks that its connection still answers.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Connections per replica.
const POOL_SIZE: usize = 16;

/// Key of the session advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x6b65_7972_6561_6c6d; // "keyrealm"

/// Schema migrations, applied in order; `keyrealm_schema.version` records how many ran.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE admin_tokens (
    seq BIGSERIAL PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    name TEXT NOT NULL,
    token_hash BYTEA NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE INDEX admin_tokens_by_name ON admin_tokens(name);
CREATE TABLE control_planes (
    seq BIGSERIAL PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE data_plane_tokens (
    seq BIGSERIAL PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    control_plane_id UUID NOT NULL REFERENCES control_planes(id) ON DELETE CASCADE,
    name TEXT,
    token_hash BYTEA NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE INDEX data_plane_tokens_by_cp ON data_plane_tokens(control_plane_id, seq);
CREATE TABLE realms (
    seq BIGSERIAL PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    name TEXT NOT NULL,
    ttl BIGINT NOT NULL,
    negative_ttl BIGINT NOT NULL,
    consumer_groups TEXT NOT NULL,
    allow_all_control_planes BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE realm_control_planes (
    realm_id UUID NOT NULL REFERENCES realms(id) ON DELETE CASCADE,
    control_plane_id UUID NOT NULL REFERENCES control_planes(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    PRIMARY KEY (realm_id, control_plane_id)
);
CREATE INDEX realm_control_planes_by_cp ON realm_control_planes(control_plane_id);
CREATE TABLE consumers (
    seq BIGSERIAL PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    realm_id UUID NOT NULL REFERENCES realms(id) ON DELETE CASCADE,
    username TEXT NOT NULL,
    custom_id TEXT,
    type TEXT,
    tags TEXT NOT NULL,
    consumer_groups TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT consumers_username_unique UNIQUE (realm_id, username)
);
CREATE INDEX consumers_by_realm ON consumers(realm_id, seq);
CREATE INDEX consumers_by_custom_id ON consumers(realm_id, custom_id);
CREATE TABLE keys (
    seq BIGSERIAL PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    consumer_id UUID NOT NULL REFERENCES consumers(id) ON DELETE CASCADE,
    realm_id UUID NOT NULL REFERENCES realms(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    secret_hash BYTEA NOT NULL,
    tags TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    -- The authenticate look-up: one indexed probe by (realm, sha256(secret)); also what makes a
    -- secret unique within its realm.
    CONSTRAINT keys_secret_unique UNIQUE (realm_id, secret_hash)
);
CREATE INDEX keys_by_consumer ON keys(consumer_id, seq);
"#];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The URL with its password replaced by `***` (for logs and errors).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The PostgreSQL store.
pub struct PgStore {
    /// This replica's id: the payload of its notifications, which its own listener ignores
    /// (its own writes empty its cache as they commit).
    replica: String,
    pool: Pool,
    config: tokio_postgres::Config,
    cache: Arc<AuthCache>,
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            // Connection exceptions, shutdown, too many connections, read-only standby: the
            // database is not available to us now (retry later), not a bug.
            if code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
                || code == "25006"
            {
                StoreError::Unavailable(db.to_string())
            } else {
                StoreError::Internal(db.to_string())
            }
        }
        // I/O, a closed connection, a timeout: the database cannot be reached.
        None => StoreError::Unavailable(e.to_string()),
    }
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// The unique constraint a failed statement broke, if that is why it failed.
fn unique_violation(e: &tokio_postgres::Error) -> Option<String> {
    let db = e.as_db_error()?;
    (db.code() == &SqlState::UNIQUE_VIOLATION).then(|| db.constraint().unwrap_or("").to_string())
}

fn is_foreign_key_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION)
}

/// A write's outcome: a unique violation is `conflict` and a foreign-key violation is
/// `missing`, where given; any other failure is the database's.
fn constrained(
    result: Result<u64, tokio_postgres::Error>,
    conflict: Option<Conflict>,
    missing: Option<Missing>,
) -> StoreResult<u64> {
    match (result, conflict, missing) {
        (Err(e), Some(conflict), _) if unique_violation(&e).is_some() => {
            Err(StoreError::Conflict(conflict))
        }
        (Err(e), _, Some(missing)) if is_foreign_key_violation(&e) => {
            Err(StoreError::NotFound(missing))
        }
        (result, ..) => result.map_err(pg),
    }
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> StoreResult<T> {
    row.try_get(index).map_err(|e| column(index, e))
}

impl Columns for Row {
    fn uuid(&self, i: usize) -> StoreResult<Uuid> {
        get(self, i)
    }
    fn text(&self, i: usize) -> StoreResult<String> {
        get(self, i)
    }
    fn opt_text(&self, i: usize) -> StoreResult<Option<String>> {
        get(self, i)
    }
    fn int(&self, i: usize) -> StoreResult<i64> {
        get(self, i)
    }
    fn opt_int(&self, i: usize) -> StoreResult<Option<i64>> {
        get(self, i)
    }
    fn flag(&self, i: usize) -> StoreResult<bool> {
        get(self, i)
    }
    fn bytes(&self, i: usize) -> StoreResult<Vec<u8>> {
        get(self, i)
    }
    /// A `uuid[]`.
    fn uuids(&self, i: usize) -> StoreResult<Vec<Uuid>> {
        get(self, i)
    }
}

/// Bounds an operation in time: past [`OPERATION_TIMEOUT`] it is abandoned (its connection is
/// dropped, which rolls back an open transaction) and answered 503.
async fn timed<T>(operation: impl std::future::Future<Output = StoreResult<T>>) -> StoreResult<T> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer from the database within {} s",
            OPERATION_TIMEOUT.as_secs()
        ))),
    }
}

/// Runs `select` (which must select `seq` first and end in a WHERE clause) for one page.
async fn fetch<T>(
    client: &impl GenericClient,
    select: &str,
    mut params: Vec<Box<dyn ToSql + Sync + Send>>,
    page: &PageRequest,
    map: impl Fn(&Row) -> StoreResult<T>,
) -> StoreResult<Rows<T>> {
    let n = params.len();
    let sql = match page.before {
        Some(before) => {
            params.push(Box::new(before));
            format!(
                "{select} AND seq < ${} ORDER BY seq DESC LIMIT ${}",
                n + 1,
                n + 2
            )
        }
        None => {
            params.push(Box::new(page.after.unwrap_or(0)));
            format!(
                "{select} AND seq > ${} ORDER BY seq ASC LIMIT ${}",
                n + 1,
                n + 2
            )
        }
    };
    params.push(Box::new(i64::from(page.size) + 1));
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(&sql, &refs).await.map_err(pg)?;
    let rows = rows
        .iter()
        .map(|row| Ok((get::<i64>(row, 0)?, map(row)?)))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(crate::pagination::finish(rows, page))
}

/// The allowed control planes of `realms` in order, as a `uuid[]` (column 9).
const REALM_SELECT: &str = realm_select!(
    "ARRAY(SELECT control_plane_id FROM realm_control_planes
          WHERE realm_id = realms.id ORDER BY position)"
);

// ---- shared steps ----

async fn control_plane_exists(c: &impl GenericClient, id: &Uuid) -> StoreResult<bool> {
    Ok(
        c.query_opt("SELECT 1 FROM control_planes WHERE id = $1", &[id])
            .await
            .map_err(pg)?
            .is_some(),
    )
}

async fn load_realm(c: &impl GenericClient, id: &Uuid) -> StoreResult<Option<Realm>> {
    c.query_opt(&format!("{REALM_SELECT} WHERE id = $1"), &[id])
        .await
        .map_err(pg)?
        .map(|row| realm(&row))
        .transpose()
}

/// How [`require_realm`] locks the realm's row until the transaction ends.
#[derive(Clone, Copy)]
enum RealmLock {
    None,
    /// `FOR KEY SHARE`: a concurrent delete of the realm waits for this transaction (and this
    /// one waits for a delete under way, then finds the realm gone).
    KeyShare,
    /// `FOR UPDATE`: a concurrent insert referencing the realm waits, then sees the outcome.
    Update,
}

/// The realm must exist, its row locked as `lock` says.
async fn require_realm(c: &impl GenericClient, id: &Uuid, lock: RealmLock) -> StoreResult<()> {
    let sql = match lock {
        RealmLock::None => "SELECT 1 FROM realms WHERE id = $1",
        RealmLock::KeyShare => "SELECT 1 FROM realms WHERE id = $1 FOR KEY SHARE",
        RealmLock::Update => "SELECT 1 FROM realms WHERE id = $1 FOR UPDATE",
    };
    match c.query_opt(sql, &[id]).await.map_err(pg)? {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(Missing::Realm(*id))),
    }
}

async fn load_consumer(
    c: &impl GenericClient,
    realm: &Uuid,
    id: &Uuid,
    lock: bool,
) -> StoreResult<Consumer> {
    let sql = format!(
        "{CONSUMER_SELECT} WHERE id = $1 AND realm_id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    match c.query_opt(&sql, &[id, realm]).await.map_err(pg)? {
        Some(row) => consumer(&row),
        None => Err(StoreError::NotFound(Missing::Consumer {
            realm: *realm,
            id: *id,
        })),
    }
}

async fn require_consumer(c: &impl GenericClient, realm: &Uuid, id: &Uuid) -> StoreResult<()> {
    match c
        .query_opt(
            "SELECT 1 FROM consumers WHERE id = $1 AND realm_id = $2",
            &[id, realm],
        )
        .await
        .map_err(pg)?
    {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(Missing::Consumer {
            realm: *realm,
            id: *id,
        })),
    }
}

async fn set_allowed(c: &impl GenericClient, realm: &Uuid, allowed: &[Uuid]) -> StoreResult<()> {
    let mut missing = Vec::new();
    for (i, cp) in allowed.iter().enumerate() {
        // Locked against a concurrent delete of the control plane until this commits.
        let found = c
            .query_opt(
                "SELECT 1 FROM control_planes WHERE id = $1 FOR KEY SHARE",
                &[cp],
            )
            .await
            .map_err(pg)?;
        if found.is_none() {
            missing.push((
                format!("allowed_control_planes[{i}]"),
                Missing::ControlPlane(*cp),
            ));
        }
    }
    if !missing.is_empty() {
        return Err(StoreError::InvalidReference(missing));
    }
    c.execute(
        "DELETE FROM realm_control_planes WHERE realm_id = $1",
        &[realm],
    )
    .await
    .map_err(pg)?;
    for (position, cp) in allowed.iter().enumerate() {
        c.execute(
            "INSERT INTO realm_control_planes (realm_id, control_plane_id, position) VALUES ($1, $2, $3)",
            &[realm, cp, &(position as i32)],
        )
        .await
        .map_err(pg)?;
    }
    Ok(())
}

/// Runs the listener until its connection fails: LISTEN, resume the cache, then invalidate on
/// every notification and check the connection every [`HEARTBEAT`].
async fn listen_once(
    config: &tokio_postgres::Config,
    cache: &AuthCache,
    replica: &str,
) -> Result<(), String> {
    let mut config = config.clone();
    config.application_name(LISTENER_APPLICATION_NAME);
    let (client, mut connection) = tokio::time::timeout(POOL_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    // The connection is driven here: notifications arrive as its messages.
    let invalidations = async {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if n.payload() != replica {
                        cache.invalidate();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.to_string(),
                None => return "connection closed".to_string(),
            }
        }
    };
    let watch = async {
        let listening = tokio::time::timeout(
            POOL_TIMEOUT,
            client.batch_execute(&format!("LISTEN {CHANNEL}")),
        )
        .await;
        match listening {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "LISTEN timed out".to_string(),
        }
        // From here on every committed write is heard; what was written before is dropped.
        cache.resume();
        tracing::info!("listening for invalidations");
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            // Measured on the wall clock (not tokio's, which tests may pause): a connection
            // that does not answer within two heartbeats is taken for dead.
            let sent = std::time::Instant::now();
            let query = client.simple_query("");
            tokio::pin!(query);
            loop {
                tokio::select! {
                    answer = &mut query => match answer {
                        Ok(_) => break,
                        Err(e) => return e.to_string(),
                    },
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {
                        if sent.elapsed() > 2 * HEARTBEAT {
                            return "heartbeat timed out".to_string();
                        }
                    }
                }
            }
        }
    };
    let reason = tokio::select! {
        reason = invalidations => reason,
        reason = watch => reason,
    };
    Err(reason)
}

/// The key with this secret in this realm (expired or not), with its consumer.
async fn find_key_record(
    c: &ClientWrapper,
    realm: &Uuid,
    hash: &SecretHash,
) -> StoreResult<Option<KeyRecord>> {
    let statement = c
        .prepare_cached(&format!(
            "{KEY_RECORD_SELECT} WHERE k.realm_id = $1 AND k.secret_hash = $2"
        ))
        .await
        .map_err(pg)?;
    match c
        .query_opt(&statement, &[realm, &&hash[..]])
        .await
        .map_err(pg)?
    {
        Some(row) => key_record(&row, hash),
        None => Ok(None),
    }
}

impl PgStore {
    /// Connects (within [`POOL_TIMEOUT`]), migrates under the advisory lock, and returns the
    /// store with its cache suspended until [`PgStore::listen`] has connected.
    pub async fn connect(url: &str, cache: Arc<AuthCache>) -> Result<PgStore, Error> {
        let describe = redact(url);
        let fail = |reason: String| Error::Database {
            database: describe.clone(),
            reason,
        };
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("--database: not a PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("realm-service");
        }
        migrate(&config).await.map_err(fail)?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        cache.suspend();
        Ok(PgStore {
            replica: Uuid::new_v4().to_string(),
            pool,
            config,
            cache,
        })
    }

    /// Keeps a connection listening for invalidations, reconnecting (with a short back-off)
    /// whenever it fails; the cache is suspended while it is down.
    pub fn listen(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let config = self.config.clone();
        let cache = self.cache.clone();
        let replica = self.replica.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                let started = std::time::Instant::now();
                if let Err(reason) = listen_once(&config, &cache, &replica).await {
                    cache.suspend();
                    tracing::warn!(
                        reason,
                        "invalidation listener disconnected; answering from the database until it is back"
                    );
                }
                if started.elapsed() > Duration::from_secs(5) {
                    backoff = Duration::from_millis(50);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        })
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Client> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Publishes the invalidation and commits; then empties this replica's own cache.
    async fn commit(&self, tx: deadpool_postgres::Transaction<'_>) -> StoreResult<()> {
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.replica])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        self.cache.invalidate();
        Ok(())
    }

    /// Runs `f` on a pooled connection, within [`OPERATION_TIMEOUT`].
    async fn read<T>(
        &self,
        f: impl AsyncFnOnce(&ClientWrapper) -> StoreResult<T>,
    ) -> StoreResult<T> {
        timed(async {
            let client = self.client().await?;
            f(&client).await
        })
        .await
    }

    /// Runs `f` in a transaction and commits it ([`PgStore::commit`]), within
    /// [`OPERATION_TIMEOUT`]; an error rolls it back.
    async fn write<T>(
        &self,
        f: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let value = f(&tx).await?;
            self.commit(tx).await?;
            Ok(value)
        })
        .await
    }

    pub async fn ping(self: &Arc<Self>) -> StoreResult<()> {
        self.read(async |client| {
            client.simple_query("SELECT 1").await.map_err(pg)?;
            Ok(())
        })
        .await
    }

    pub async fn create_control_plane(self: &Arc<Self>, name: String) -> StoreResult<ControlPlane> {
        self.write(async |tx| {
            let now = clock::now();
            let id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO control_planes (id, name, created_at, updated_at) VALUES ($1, $2, $3, $3)",
                &[&id, &name, &now],
            )
            .await
            .map_err(pg)?;
            Ok(new_control_plane(id, name, now))
        })
        .await
    }

    pub async fn list_control_planes(
        self: &Arc<Self>,
        page: PageRequest,
    ) -> StoreResult<Rows<ControlPlane>> {
        self.read(async |client| {
            fetch(
                &**client,
                &format!("{CP_SELECT} WHERE 1 = 1"),
                vec![],
                &page,
                control_plane,
            )
            .await
        })
        .await
    }

    pub async fn get_control_plane(self: &Arc<Self>, id: Uuid) -> StoreResult<ControlPlane> {
        self.read(async |client| {
            match client
                .query_opt(&format!("{CP_SELECT} WHERE id = $1"), &[&id])
                .await
                .map_err(pg)?
            {
                Some(row) => control_plane(&row),
                None => Err(StoreError::NotFound(Missing::ControlPlane(id))),
            }
        })
        .await
    }

    pub async fn delete_control_plane(self: &Arc<Self>, id: Uuid) -> StoreResult<()> {
        self.write(async |tx| {
            let n = tx
                .execute("DELETE FROM control_planes WHERE id = $1", &[&id])
                .await
                .map_err(pg)?;
            deleted(n, Missing::ControlPlane(id))
        })
        .await
    }

    pub async fn create_data_plane_token(
        self: &Arc<Self>,
        control_plane: Uuid,
        name: Option<String>,
        hash: SecretHash,
    ) -> StoreResult<DataPlaneToken> {
        self.write(async |tx| {
            let now = clock::now();
            let id = Uuid::new_v4();
            let inserted = tx
                .execute(
                    "INSERT INTO data_plane_tokens (id, control_plane_id, name, token_hash, created_at)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&id, &control_plane, &name, &&hash[..], &now],
                )
                .await;
            constrained(inserted, None, Some(Missing::ControlPlane(control_plane)))?;
            Ok(new_data_plane_token(id, name, control_plane, now))
        })
        .await
    }

    pub async fn list_data_plane_tokens(
        self: &Arc<Self>,
        control_plane: Uuid,
        page: PageRequest,
    ) -> StoreResult<Rows<DataPlaneToken>> {
        self.read(async |client| {
            if !control_plane_exists(&**client, &control_plane).await? {
                return Err(StoreError::NotFound(Missing::ControlPlane(control_plane)));
            }
            fetch(
                &**client,
                &format!("{DP_TOKEN_SELECT} WHERE control_plane_id = $1"),
                vec![Box::new(control_plane)],
                &page,
                data_plane_token,
            )
            .await
        })
        .await
    }

    pub async fn delete_data_plane_token(
        self: &Arc<Self>,
        control_plane: Uuid,
        id: Uuid,
    ) -> StoreResult<()> {
        self.write(async |tx| {
            let n = tx
                .execute(
                    "DELETE FROM data_plane_tokens WHERE id = $1 AND control_plane_id = $2",
                    &[&id, &control_plane],
                )
                .await
                .map_err(pg)?;
            deleted(n, Missing::DataPlaneToken { control_plane, id })
        })
        .await
    }

    pub async fn create_realm(self: &Arc<Self>, new: NewRealm) -> StoreResult<Realm> {
        self.write(async |tx| {
            let now = clock::now();
            let id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO realms (id, name, ttl, negative_ttl, consumer_groups,
                    allow_all_control_planes, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                &[
                    &id,
                    &new.name,
                    &new.ttl,
                    &new.negative_ttl,
                    &to_json(&new.consumer_groups),
                    &new.allow_all_control_planes,
                    &now,
                ],
            )
            .await
            .map_err(pg)?;
            set_allowed(&**tx, &id, &new.allowed_control_planes).await?;
            let created = load_realm(&**tx, &id)
                .await?
                .ok_or(StoreError::NotFound(Missing::Realm(id)))?;
            Ok(created)
        })
        .await
    }

    pub async fn list_realms(self: &Arc<Self>, page: PageRequest) -> StoreResult<Rows<Realm>> {
        self.read(async |client| {
            fetch(
                &**client,
                &format!("{REALM_SELECT} WHERE 1 = 1"),
                vec![],
                &page,
                realm,
            )
            .await
        })
        .await
    }

    pub async fn find_realm(self: &Arc<Self>, id: Uuid) -> StoreResult<Option<Realm>> {
        self.read(async |client| {
            let statement = client
                .prepare_cached(&format!("{REALM_SELECT} WHERE id = $1"))
                .await
                .map_err(pg)?;
            client
                .query_opt(&statement, &[&id])
                .await
                .map_err(pg)?
                .map(|row| realm(&row))
                .transpose()
        })
        .await
    }

    pub async fn update_realm(
        self: &Arc<Self>,
        id: Uuid,
        changes: RealmChanges,
    ) -> StoreResult<Realm> {
        self.write(async |tx| {
            require_realm(&**tx, &id, RealmLock::Update).await?;
            let current = load_realm(&**tx, &id)
                .await?
                .ok_or(StoreError::NotFound(Missing::Realm(id)))?;
            tx.execute(
                "UPDATE realms SET name = $2, ttl = $3, negative_ttl = $4, consumer_groups = $5,
                    allow_all_control_planes = $6, updated_at = $7 WHERE id = $1",
                &[
                    &id,
                    &changes.name.unwrap_or(current.name),
                    &changes.ttl.unwrap_or(current.ttl),
                    &changes.negative_ttl.unwrap_or(current.negative_ttl),
                    &to_json(&changes.consumer_groups.unwrap_or(current.consumer_groups)),
                    &changes
                        .allow_all_control_planes
                        .unwrap_or(current.allow_all_control_planes),
                    &clock::now(),
                ],
            )
            .await
            .map_err(pg)?;
            if let Some(allowed) = changes.allowed_control_planes {
                set_allowed(&**tx, &id, &allowed).await?;
            }
            let updated = load_realm(&**tx, &id)
                .await?
                .ok_or(StoreError::NotFound(Missing::Realm(id)))?;
            Ok(updated)
        })
        .await
    }

    pub async fn delete_realm(self: &Arc<Self>, id: Uuid, force: bool) -> StoreResult<()> {
        self.write(async |tx| {
            // Locked first: a consumer insert (which takes a key-share lock on the realm row
            // for its foreign key) either committed before, and is counted, or waits and then
            // finds the realm gone.
            require_realm(&**tx, &id, RealmLock::Update).await?;
            if !force {
                let row = tx
                    .query_one("SELECT count(*) FROM consumers WHERE realm_id = $1", &[&id])
                    .await
                    .map_err(pg)?;
                let consumers: i64 = get(&row, 0)?;
                if consumers > 0 {
                    return Err(StoreError::RealmNotEmpty(consumers));
                }
            }
            tx.execute("DELETE FROM realms WHERE id = $1", &[&id])
                .await
                .map_err(pg)?;
            Ok(())
        })
        .await
    }

    pub async fn create_consumer(
        self: &Arc<Self>,
        realm: Uuid,
        new: NewConsumer,
    ) -> StoreResult<Consumer> {
        self.write(async |tx| {
            require_realm(&**tx, &realm, RealmLock::None).await?;
            let now = clock::now();
            let id = Uuid::new_v4();
            let inserted = tx
                .execute(
                    "INSERT INTO consumers (id, realm_id, username, custom_id, type, tags,
                        consumer_groups, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
                    &[
                        &id,
                        &realm,
                        &new.username,
                        &new.custom_id,
                        &new.kind,
                        &to_json(&new.tags),
                        &to_json(&new.consumer_groups),
                        &now,
                    ],
                )
                .await;
            constrained(
                inserted,
                Some(Conflict::Username {
                    username: new.username,
                    realm,
                }),
                Some(Missing::Realm(realm)),
            )?;
            let created = load_consumer(&**tx, &realm, &id, false).await?;
            Ok(created)
        })
        .await
    }

    pub async fn list_consumers(
        self: &Arc<Self>,
        realm: Uuid,
        filter: ConsumerFilter,
        page: PageRequest,
    ) -> StoreResult<Rows<Consumer>> {
        self.read(async |client| {
            require_realm(&**client, &realm, RealmLock::None).await?;
            let mut sql = format!("{CONSUMER_SELECT} WHERE realm_id = $1");
            let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(realm)];
            if let Some(u) = filter.username {
                params.push(Box::new(u));
                sql.push_str(&format!(" AND username = ${}", params.len()));
            }
            if let Some(c) = filter.custom_id {
                params.push(Box::new(c));
                sql.push_str(&format!(" AND custom_id = ${}", params.len()));
            }
            fetch(&**client, &sql, params, &page, consumer).await
        })
        .await
    }

    pub async fn get_consumer(self: &Arc<Self>, realm: Uuid, id: Uuid) -> StoreResult<Consumer> {
        self.read(async |client| load_consumer(&**client, &realm, &id, false).await)
            .await
    }

    pub async fn update_consumer(
        self: &Arc<Self>,
        realm: Uuid,
        id: Uuid,
        changes: ConsumerChanges,
    ) -> StoreResult<Consumer> {
        self.write(async |tx| {
            let current = load_consumer(&**tx, &realm, &id, true).await?;
            let username = changes.username.unwrap_or(current.username);
            let result = tx
                .execute(
                    "UPDATE consumers SET username = $2, custom_id = $3, type = $4, tags = $5,
                        consumer_groups = $6, updated_at = $7 WHERE id = $1",
                    &[
                        &id,
                        &username,
                        &changes.custom_id.unwrap_or(current.custom_id),
                        &changes.kind.unwrap_or(current.kind),
                        &to_json(&changes.tags.unwrap_or(current.tags)),
                        &to_json(&changes.consumer_groups.unwrap_or(current.consumer_groups)),
                        &clock::now(),
                    ],
                )
                .await;
            constrained(result, Some(Conflict::Username { username, realm }), None)?;
            let updated = load_consumer(&**tx, &realm, &id, false).await?;
            Ok(updated)
        })
        .await
    }

    pub async fn delete_consumer(self: &Arc<Self>, realm: Uuid, id: Uuid) -> StoreResult<()> {
        self.write(async |tx| {
            let n = tx
                .execute(
                    "DELETE FROM consumers WHERE id = $1 AND realm_id = $2",
                    &[&id, &realm],
                )
                .await
                .map_err(pg)?;
            deleted(n, Missing::Consumer { realm, id })
        })
        .await
    }

    pub async fn move_consumer(
        self: &Arc<Self>,
        realm: Uuid,
        id: Uuid,
        target: Uuid,
    ) -> StoreResult<()> {
        self.write(async |tx| {
            let current = load_consumer(&**tx, &realm, &id, true).await?;
            if target == realm {
                return Ok(());
            }
            require_realm(&**tx, &target, RealmLock::None).await?;
            let moved = tx
                .execute(
                    "UPDATE consumers SET realm_id = $2, updated_at = $3 WHERE id = $1",
                    &[&id, &target, &clock::now()],
                )
                .await;
            constrained(
                moved,
                Some(Conflict::Username {
                    username: current.username,
                    realm: target,
                }),
                Some(Missing::Realm(target)),
            )?;
            let keys = tx
                .execute(
                    "UPDATE keys SET realm_id = $2 WHERE consumer_id = $1",
                    &[&id, &target],
                )
                .await;
            constrained(
                keys,
                Some(Conflict::MovedKey {
                    consumer: id,
                    realm: target,
                }),
                None,
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
        self.write(async |tx| {
            // The realm first: a force delete of it under way is waited for (and then this is a
            // 404), and one that comes later waits for this key; locking the consumer's row (by
            // the insert's foreign key) before the realm's could deadlock with that delete.
            require_realm(&**tx, &realm, RealmLock::KeyShare).await?;
            require_consumer(&**tx, &realm, &consumer).await?;
            let now = clock::now();
            let id = Uuid::new_v4();
            let expires_at = new.ttl.map(|t| now + t);
            let inserted = tx
                .execute(
                    "INSERT INTO keys (id, consumer_id, realm_id, type, secret_hash, tags,
                        created_at, updated_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
                    &[
                        &id,
                        &consumer,
                        &realm,
                        &new.kind.as_str(),
                        &&new.secret_hash[..],
                        &to_json(&new.tags),
                        &now,
                        &expires_at,
                    ],
                )
                .await;
            // A foreign-key failure: the consumer (or its realm) was deleted, or moved, meanwhile.
            constrained(
                inserted,
                Some(Conflict::Secret { realm }),
                Some(Missing::Consumer {
                    realm,
                    id: consumer,
                }),
            )?;
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
        self.read(async |client| {
            require_consumer(&**client, &realm, &consumer).await?;
            fetch(
                &**client,
                &format!("{KEY_SELECT} WHERE consumer_id = $1"),
                vec![Box::new(consumer)],
                &page,
                key,
            )
            .await
        })
        .await
    }

    pub async fn get_key(
        self: &Arc<Self>,
        realm: Uuid,
        consumer: Uuid,
        id: Uuid,
    ) -> StoreResult<Key> {
        self.read(async |client| {
            require_consumer(&**client, &realm, &consumer).await?;
            match client
                .query_opt(
                    &format!("{KEY_SELECT} WHERE id = $1 AND consumer_id = $2"),
                    &[&id, &consumer],
                )
                .await
                .map_err(pg)?
            {
                Some(row) => key(&row),
                None => Err(StoreError::NotFound(Missing::Key { consumer, id })),
            }
        })
        .await
    }

    pub async fn delete_key(
        self: &Arc<Self>,
        realm: Uuid,
        consumer: Uuid,
        id: Uuid,
    ) -> StoreResult<()> {
        self.write(async |tx| {
            require_consumer(&**tx, &realm, &consumer).await?;
            let n = tx
                .execute(
                    "DELETE FROM keys WHERE id = $1 AND consumer_id = $2",
                    &[&id, &consumer],
                )
                .await
                .map_err(pg)?;
            deleted(n, Missing::Key { consumer, id })
        })
        .await
    }

    pub async fn control_plane_of_token(
        self: &Arc<Self>,
        hash: SecretHash,
    ) -> StoreResult<Option<Uuid>> {
        self.read(async |client| {
            let statement = client
                .prepare_cached(
                    "SELECT control_plane_id, token_hash FROM data_plane_tokens WHERE token_hash = $1",
                )
                .await
                .map_err(pg)?;
            let row = client
                .query_opt(&statement, &[&&hash[..]])
                .await
                .map_err(pg)?;
            let row = match row {
                Some(row) => Some((row.uuid(0)?, row.bytes(1)?)),
                None => None,
            };
            Ok(if_hash_matches(row, &hash))
        })
        .await
    }

    pub async fn key_by_secret(
        self: &Arc<Self>,
        realm: Uuid,
        hash: SecretHash,
    ) -> StoreResult<Option<KeyRecord>> {
        self.read(async |client| find_key_record(client, &realm, &hash).await)
            .await
    }

    pub async fn check_key(
        self: &Arc<Self>,
        realm: Uuid,
        hash: SecretHash,
    ) -> StoreResult<Option<KeyRecord>> {
        self.read(async |client| {
            require_realm(&**client, &realm, RealmLock::None).await?;
            find_key_record(client, &realm, &hash).await
        })
        .await
    }

    pub async fn is_admin_token(self: &Arc<Self>, hash: SecretHash) -> StoreResult<bool> {
        self.read(async |client| {
            let row = client
                .query_opt(
                    "SELECT token_hash FROM admin_tokens WHERE token_hash = $1",
                    &[&&hash[..]],
                )
                .await
                .map_err(pg)?;
            let row = match row {
                Some(row) => Some(((), row.bytes(0)?)),
                None => None,
            };
            Ok(if_hash_matches(row, &hash).is_some())
        })
        .await
    }

    pub async fn create_admin_token(
        self: &Arc<Self>,
        name: String,
        hash: SecretHash,
    ) -> StoreResult<Uuid> {
        self.write(async |tx| {
            let id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO admin_tokens (id, name, token_hash, created_at) VALUES ($1, $2, $3, $4)",
                &[&id, &name, &&hash[..], &clock::now()],
            )
            .await
            .map_err(pg)?;
            Ok(id)
        })
        .await
    }

    pub async fn revoke_admin_tokens(self: &Arc<Self>, name: String) -> StoreResult<u64> {
        self.write(async |tx| {
            let n = tx
                .execute("DELETE FROM admin_tokens WHERE name = $1", &[&name])
                .await
                .map_err(pg)?;
            Ok(n)
        })
        .await
    }
}

/// Applies the missing migrations on a dedicated connection, holding the advisory lock.
async fn migrate(config: &tokio_postgres::Config) -> Result<(), String> {
    let (mut client, connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let result = async {
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| e.to_string())?;
        let migrated = async {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS keyrealm_schema (version INTEGER NOT NULL)",
                )
                .await?;
            let tx = client.transaction().await?;
            let row = tx
                .query_opt("SELECT version FROM keyrealm_schema", &[])
                .await?;
            let done: i32 = match row {
                Some(row) => row.try_get(0)?,
                None => {
                    tx.execute("INSERT INTO keyrealm_schema (version) VALUES (0)", &[])
                        .await?;
                    0
                }
            };
            if done > SCHEMA_VERSION {
                return Ok(Err(format!(
                    "its schema version {done} is newer than this binary's {SCHEMA_VERSION}; run a newer realm-service"
                )));
            }
            for (index, sql) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
                tx.batch_execute(sql).await?;
                tracing::info!(migration = index + 1, "database migrated");
            }
            tx.execute(
                "UPDATE keyrealm_schema SET version = $1",
                &[&SCHEMA_VERSION.max(done)],
            )
            .await?;
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(Ok(()))
        }
        .await;
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        migrated.map_err(|e| e.to_string())?
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}
