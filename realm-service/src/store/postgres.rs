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

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, GenericClient, NoTls, Row};
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

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> StoreResult<T> {
    row.try_get(index)
        .map_err(|e| StoreError::Internal(format!("column {index}: {e}")))
}

fn strings(row: &Row, index: usize) -> StoreResult<Vec<String>> {
    let text: String = get(row, index)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Internal(format!("column {index}: {e}")))
}

fn to_json(values: &[String]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_string())
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

// ---- row shapes ----

const CP_SELECT: &str = "SELECT seq, id, name, created_at, updated_at FROM control_planes";

fn control_plane(row: &Row) -> StoreResult<ControlPlane> {
    Ok(ControlPlane {
        id: get(row, 1)?,
        name: get(row, 2)?,
        created_at: clock::rfc3339(get(row, 3)?),
        updated_at: clock::rfc3339(get(row, 4)?),
    })
}

fn data_plane_token(row: &Row) -> StoreResult<DataPlaneToken> {
    Ok(DataPlaneToken {
        id: get(row, 1)?,
        name: get(row, 2)?,
        control_plane_id: get(row, 3)?,
        created_at: clock::rfc3339(get(row, 4)?),
    })
}

const REALM_SELECT: &str = "SELECT seq, id, name, ttl, negative_ttl, consumer_groups,
    allow_all_control_planes, created_at, updated_at,
    ARRAY(SELECT control_plane_id FROM realm_control_planes
          WHERE realm_id = realms.id ORDER BY position)
    FROM realms";

fn realm(row: &Row) -> StoreResult<Realm> {
    Ok(Realm {
        id: get(row, 1)?,
        name: get(row, 2)?,
        ttl: get(row, 3)?,
        negative_ttl: get(row, 4)?,
        consumer_groups: strings(row, 5)?,
        allow_all_control_planes: get(row, 6)?,
        created_at: clock::rfc3339(get(row, 7)?),
        updated_at: clock::rfc3339(get(row, 8)?),
        allowed_control_planes: get(row, 9)?,
    })
}

const CONSUMER_SELECT: &str = "SELECT seq, id, username, custom_id, type, tags, consumer_groups,
    created_at, updated_at FROM consumers";

fn consumer(row: &Row) -> StoreResult<Consumer> {
    Ok(Consumer {
        id: get(row, 1)?,
        username: get(row, 2)?,
        custom_id: get(row, 3)?,
        kind: get(row, 4)?,
        tags: strings(row, 5)?,
        consumer_groups: strings(row, 6)?,
        created_at: clock::rfc3339(get(row, 7)?),
        updated_at: clock::rfc3339(get(row, 8)?),
    })
}

const KEY_SELECT: &str = "SELECT seq, id, type, tags, created_at, updated_at, expires_at FROM keys";

fn key(row: &Row) -> StoreResult<Key> {
    let kind: String = get(row, 2)?;
    Ok(Key {
        id: get(row, 1)?,
        kind: KeyType::parse(&kind),
        tags: strings(row, 3)?,
        created_at: clock::rfc3339(get(row, 4)?),
        updated_at: clock::rfc3339(get(row, 5)?),
        expires_at: get::<Option<i64>>(row, 6)?.map(clock::rfc3339),
    })
}

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

/// The realm must exist; with `lock`, its row is locked until the transaction ends (a
/// concurrent insert referencing it waits, then sees the outcome).
async fn require_realm(c: &impl GenericClient, id: &Uuid, lock: bool) -> StoreResult<()> {
    let sql = if lock {
        "SELECT 1 FROM realms WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT 1 FROM realms WHERE id = $1"
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
async fn key_record(
    c: &deadpool_postgres::Client,
    realm: &Uuid,
    hash: &SecretHash,
) -> StoreResult<Option<KeyRecord>> {
    let statement = c
        .prepare_cached(&format!(
            "{KEY_RECORD_SELECT} WHERE k.realm_id = $1 AND k.secret_hash = $2"
        ))
        .await
        .map_err(pg)?;
    let Some(r) = c
        .query_opt(&statement, &[realm, &&hash[..]])
        .await
        .map_err(pg)?
    else {
        return Ok(None);
    };
    let stored: Vec<u8> = get(&r, 4)?;
    if !secrets::hashes_equal(&stored, hash) {
        return Ok(None);
    }
    Ok(Some(KeyRecord {
        key_id: get(&r, 0)?,
        key_type: KeyType::parse(get(&r, 11)?),
        key_created_at: get(&r, 1)?,
        key_tags: strings(&r, 2)?,
        expires_at: get(&r, 3)?,
        consumer_id: get(&r, 5)?,
        username: get(&r, 6)?,
        custom_id: get(&r, 7)?,
        kind: get(&r, 8)?,
        tags: strings(&r, 9)?,
        consumer_groups: strings(&r, 10)?,
    }))
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

    pub async fn ping(self: &Arc<Self>) -> StoreResult<()> {
        timed(async {
            let client = self.client().await?;
            client.simple_query("SELECT 1").await.map_err(pg)?;
            Ok(())
        })
        .await
    }

    pub async fn create_control_plane(self: &Arc<Self>, name: String) -> StoreResult<ControlPlane> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let now = clock::now();
            let id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO control_planes (id, name, created_at, updated_at) VALUES ($1, $2, $3, $3)",
                &[&id, &name, &now],
            )
            .await
            .map_err(pg)?;
            self.commit(tx).await?;
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
        timed(async {
            let client = self.client().await?;
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
        timed(async {
            let client = self.client().await?;
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
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let n = tx
                .execute("DELETE FROM control_planes WHERE id = $1", &[&id])
                .await
                .map_err(pg)?;
            if n == 0 {
                return Err(StoreError::NotFound(Missing::ControlPlane(id)));
            }
            self.commit(tx).await
        })
        .await
    }

    pub async fn create_data_plane_token(
        self: &Arc<Self>,
        control_plane: Uuid,
        name: Option<String>,
        hash: SecretHash,
    ) -> StoreResult<DataPlaneToken> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let now = clock::now();
            let id = Uuid::new_v4();
            let inserted = tx
                .execute(
                    "INSERT INTO data_plane_tokens (id, control_plane_id, name, token_hash, created_at)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&id, &control_plane, &name, &&hash[..], &now],
                )
                .await;
            match inserted {
                Err(e) if is_foreign_key_violation(&e) => {
                    return Err(StoreError::NotFound(Missing::ControlPlane(control_plane)))
                }
                other => other.map_err(pg)?,
            };
            self.commit(tx).await?;
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
        timed(async {
            let client = self.client().await?;
            if !control_plane_exists(&**client, &control_plane).await? {
                return Err(StoreError::NotFound(Missing::ControlPlane(control_plane)));
            }
            fetch(
                &**client,
                "SELECT seq, id, name, control_plane_id, created_at FROM data_plane_tokens
                 WHERE control_plane_id = $1",
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
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let n = tx
                .execute(
                    "DELETE FROM data_plane_tokens WHERE id = $1 AND control_plane_id = $2",
                    &[&id, &control_plane],
                )
                .await
                .map_err(pg)?;
            if n == 0 {
                return Err(StoreError::NotFound(Missing::DataPlaneToken {
                    control_plane,
                    id,
                }));
            }
            self.commit(tx).await
        })
        .await
    }

    pub async fn create_realm(self: &Arc<Self>, new: NewRealm) -> StoreResult<Realm> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
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
            set_allowed(&*tx, &id, &new.allowed_control_planes).await?;
            let created = load_realm(&*tx, &id)
                .await?
                .ok_or(StoreError::NotFound(Missing::Realm(id)))?;
            self.commit(tx).await?;
            Ok(created)
        })
        .await
    }

    pub async fn list_realms(self: &Arc<Self>, page: PageRequest) -> StoreResult<Rows<Realm>> {
        timed(async {
            let client = self.client().await?;
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
        timed(async {
            let client = self.client().await?;
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
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            require_realm(&*tx, &id, true).await?;
            let current = load_realm(&*tx, &id)
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
                set_allowed(&*tx, &id, &allowed).await?;
            }
            let updated = load_realm(&*tx, &id)
                .await?
                .ok_or(StoreError::NotFound(Missing::Realm(id)))?;
            self.commit(tx).await?;
            Ok(updated)
        })
        .await
    }

    pub async fn delete_realm(self: &Arc<Self>, id: Uuid, force: bool) -> StoreResult<()> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            // Locked first: a consumer insert (which takes a key-share lock on the realm row
            // for its foreign key) either committed before, and is counted, or waits and then
            // finds the realm gone.
            require_realm(&*tx, &id, true).await?;
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
            self.commit(tx).await
        })
        .await
    }

    pub async fn create_consumer(
        self: &Arc<Self>,
        realm: Uuid,
        new: NewConsumer,
    ) -> StoreResult<Consumer> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            require_realm(&*tx, &realm, false).await?;
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
            match inserted {
                Err(e) if unique_violation(&e).is_some() => {
                    return Err(StoreError::Conflict(Conflict::Username {
                        username: new.username,
                        realm,
                    }))
                }
                Err(e) if is_foreign_key_violation(&e) => {
                    return Err(StoreError::NotFound(Missing::Realm(realm)))
                }
                other => other.map_err(pg)?,
            };
            let created = load_consumer(&*tx, &realm, &id, false).await?;
            self.commit(tx).await?;
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
        timed(async {
            let client = self.client().await?;
            require_realm(&**client, &realm, false).await?;
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
        timed(async {
            let client = self.client().await?;
            load_consumer(&**client, &realm, &id, false).await
        })
        .await
    }

    pub async fn update_consumer(
        self: &Arc<Self>,
        realm: Uuid,
        id: Uuid,
        changes: ConsumerChanges,
    ) -> StoreResult<Consumer> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let current = load_consumer(&*tx, &realm, &id, true).await?;
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
            match result {
                Err(e) if unique_violation(&e).is_some() => {
                    return Err(StoreError::Conflict(Conflict::Username { username, realm }))
                }
                other => other.map_err(pg)?,
            };
            let updated = load_consumer(&*tx, &realm, &id, false).await?;
            self.commit(tx).await?;
            Ok(updated)
        })
        .await
    }

    pub async fn delete_consumer(self: &Arc<Self>, realm: Uuid, id: Uuid) -> StoreResult<()> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let n = tx
                .execute(
                    "DELETE FROM consumers WHERE id = $1 AND realm_id = $2",
                    &[&id, &realm],
                )
                .await
                .map_err(pg)?;
            if n == 0 {
                return Err(StoreError::NotFound(Missing::Consumer { realm, id }));
            }
            self.commit(tx).await
        })
        .await
    }

    pub async fn move_consumer(
        self: &Arc<Self>,
        realm: Uuid,
        id: Uuid,
        target: Uuid,
    ) -> StoreResult<()> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let current = load_consumer(&*tx, &realm, &id, true).await?;
            if target == realm {
                return Ok(());
            }
            require_realm(&*tx, &target, false).await?;
            let moved = tx
                .execute(
                    "UPDATE consumers SET realm_id = $2, updated_at = $3 WHERE id = $1",
                    &[&id, &target, &clock::now()],
                )
                .await;
            match moved {
                Err(e) if unique_violation(&e).is_some() => {
                    return Err(StoreError::Conflict(Conflict::Username {
                        username: current.username,
                        realm: target,
                    }))
                }
                Err(e) if is_foreign_key_violation(&e) => {
                    return Err(StoreError::NotFound(Missing::Realm(target)))
                }
                other => other.map_err(pg)?,
            };
            let keys = tx
                .execute(
                    "UPDATE keys SET realm_id = $2 WHERE consumer_id = $1",
                    &[&id, &target],
                )
                .await;
            match keys {
                Err(e) if unique_violation(&e).is_some() => {
                    return Err(StoreError::Conflict(Conflict::MovedKey {
                        consumer: id,
                        realm: target,
                    }))
                }
                other => other.map_err(pg)?,
            };
            self.commit(tx).await
        })
        .await
    }

    pub async fn create_key(
        self: &Arc<Self>,
        realm: Uuid,
        consumer: Uuid,
        new: NewKey,
    ) -> StoreResult<Key> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            require_consumer(&*tx, &realm, &consumer).await?;
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
            match inserted {
                Err(e) if unique_violation(&e).is_some() => {
                    return Err(StoreError::Conflict(Conflict::Secret { realm }))
                }
                // The consumer (or its realm) was deleted, or moved, meanwhile.
                Err(e) if is_foreign_key_violation(&e) => {
                    return Err(StoreError::NotFound(Missing::Consumer {
                        realm,
                        id: consumer,
                    }))
                }
                other => other.map_err(pg)?,
            };
            self.commit(tx).await?;
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
        timed(async {
            let client = self.client().await?;
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
        timed(async {
            let client = self.client().await?;
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
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            require_consumer(&*tx, &realm, &consumer).await?;
            let n = tx
                .execute(
                    "DELETE FROM keys WHERE id = $1 AND consumer_id = $2",
                    &[&id, &consumer],
                )
                .await
                .map_err(pg)?;
            if n == 0 {
                return Err(StoreError::NotFound(Missing::Key { consumer, id }));
            }
            self.commit(tx).await
        })
        .await
    }

    pub async fn control_plane_of_token(
        self: &Arc<Self>,
        hash: SecretHash,
    ) -> StoreResult<Option<Uuid>> {
        timed(async {
            let client = self.client().await?;
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
            match row {
                Some(row) => {
                    let stored: Vec<u8> = get(&row, 1)?;
                    Ok(secrets::hashes_equal(&stored, &hash)
                        .then(|| get(&row, 0))
                        .transpose()?)
                }
                None => Ok(None),
            }
        })
        .await
    }

    pub async fn key_by_secret(
        self: &Arc<Self>,
        realm: Uuid,
        hash: SecretHash,
    ) -> StoreResult<Option<KeyRecord>> {
        timed(async {
            let client = self.client().await?;
            key_record(&client, &realm, &hash).await
        })
        .await
    }

    pub async fn check_key(
        self: &Arc<Self>,
        realm: Uuid,
        hash: SecretHash,
    ) -> StoreResult<Option<KeyRecord>> {
        timed(async {
            let client = self.client().await?;
            require_realm(&**client, &realm, false).await?;
            key_record(&client, &realm, &hash).await
        })
        .await
    }

    pub async fn is_admin_token(self: &Arc<Self>, hash: SecretHash) -> StoreResult<bool> {
        timed(async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT token_hash FROM admin_tokens WHERE token_hash = $1",
                    &[&&hash[..]],
                )
                .await
                .map_err(pg)?;
            match row {
                Some(row) => Ok(secrets::hashes_equal(&get::<Vec<u8>>(&row, 0)?, &hash)),
                None => Ok(false),
            }
        })
        .await
    }

    pub async fn create_admin_token(
        self: &Arc<Self>,
        name: String,
        hash: SecretHash,
    ) -> StoreResult<Uuid> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO admin_tokens (id, name, token_hash, created_at) VALUES ($1, $2, $3, $4)",
                &[&id, &name, &&hash[..], &clock::now()],
            )
            .await
            .map_err(pg)?;
            self.commit(tx).await?;
            Ok(id)
        })
        .await
    }

    pub async fn revoke_admin_tokens(self: &Arc<Self>, name: String) -> StoreResult<u64> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let n = tx
                .execute("DELETE FROM admin_tokens WHERE name = $1", &[&name])
                .await
                .map_err(pg)?;
            self.commit(tx).await?;
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
