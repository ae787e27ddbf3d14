//! Benchmark: authenticate look-up latency with a cold in-process cache, for databases holding
//! different numbers of keys (default 1,000 and 1,000,000), plus the database size. The keys are
//! loaded straight into SQLite (through the service's own schema), then the service is started
//! in-process and asked over HTTP, one request at a time on a keep-alive connection, for keys
//! it has never seen (each a cache miss: one indexed SQLite probe).
//!
//! With `--postgres URL` (a URL of an existing database, used to create one database per size),
//! the same runs on PostgreSQL: the keys are generated inside PostgreSQL (`generate_series`,
//! `sha256`) and the service runs on the new database.
//!
//! `cargo run --release -p realm-service --example lookup_latency -- [--keys 1000,1000000] [--lookups 2000] [--dir DIR] [--postgres URL]`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use realm_service::{spawn, ServiceConfig};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The tests' HTTP client (every call has a timeout).
#[path = "../tests/common/http.rs"]
mod http;
use http::HttpClient;

const ADMIN: &str = "bench-admin-token-0123456789abcdefghij";
const CONSUMERS: usize = 1000;

/// Loads `keys` keys (secrets `bench-key-<i>`) spread over [`CONSUMERS`] consumers of `realm`.
fn load_keys(database: &Path, realm: &str, keys: usize) -> rusqlite::Result<()> {
    let mut conn = rusqlite::Connection::open(database)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let tx = conn.transaction()?;
    let mut consumers = Vec::with_capacity(CONSUMERS);
    {
        let mut insert = tx.prepare(
            "INSERT INTO consumers (id, realm_id, username, custom_id, type, tags, consumer_groups,
                created_at, updated_at) VALUES (?1, ?2, ?3, NULL, NULL, '[]', '[]', 0, 0)",
        )?;
        for i in 0..CONSUMERS {
            let id = uuid::Uuid::new_v4().to_string();
            insert.execute(rusqlite::params![id, realm, format!("bench-{i}")])?;
            consumers.push(id);
        }
        let mut insert = tx.prepare(
            "INSERT INTO keys (id, consumer_id, realm_id, type, secret_hash, tags, created_at,
                updated_at, expires_at) VALUES (?1, ?2, ?3, 'legacy', ?4, '[]', 0, 0, NULL)",
        )?;
        for i in 0..keys {
            let hash = Sha256::digest(format!("bench-key-{i}").as_bytes());
            insert.execute(rusqlite::params![
                uuid::Uuid::new_v4().to_string(),
                consumers[i % CONSUMERS],
                realm,
                &hash[..]
            ])?;
        }
    }
    tx.commit()?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(label: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    format!(
        "{label}: n={} mean={:.0}us p50={:.0}us p99={:.0}us max={:.0}us",
        samples.len(),
        mean.as_secs_f64() * 1e6,
        percentile(&samples, 0.50).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples.last().map(|d| d.as_secs_f64() * 1e6).unwrap_or(0.0),
    )
}

/// A small deterministic generator: enough to pick keys spread over the whole table.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound
    }
}

/// Creates database `name` through the server of `admin_url`; returns its URL.
async fn create_pg_database(admin_url: &str, name: &str) -> String {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        client.batch_execute(&sql).await.expect("create database");
    }
    let base = admin_url
        .rsplit_once('/')
        .map(|(base, _)| base)
        .unwrap_or(admin_url);
    format!("{base}/{name}")
}

/// Loads the same keys as [`load_keys`], generated inside PostgreSQL; returns the database size.
async fn load_pg_keys(url: &str, realm: &str, keys: usize) -> u64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    let realm: uuid::Uuid = realm.parse().expect("realm id");
    client
        .execute(
            "INSERT INTO consumers (id, realm_id, username, custom_id, type, tags, consumer_groups,
                created_at, updated_at)
             SELECT gen_random_uuid(), $1, 'bench-' || i, NULL, NULL, '[]', '[]', 0, 0
             FROM generate_series(0, $2::bigint - 1) AS i",
            &[&realm, &(CONSUMERS as i64)],
        )
        .await
        .expect("load consumers");
    client
        .execute(
            "INSERT INTO keys (id, consumer_id, realm_id, type, secret_hash, tags, created_at,
                updated_at, expires_at)
             SELECT gen_random_uuid(), c.id, $1, 'legacy',
                    sha256(convert_to('bench-key-' || i, 'UTF8')), '[]', 0, 0, NULL
             FROM generate_series(0, $2::bigint - 1) AS i
             JOIN (SELECT id, row_number() OVER (ORDER BY seq) - 1 AS n
                   FROM consumers WHERE realm_id = $1) c ON c.n = i % $3::bigint",
            &[&realm, &(keys as i64), &(CONSUMERS as i64)],
        )
        .await
        .expect("load keys");
    client.batch_execute("ANALYZE").await.expect("analyze");
    let row = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .expect("size");
    row.get::<_, i64>(0) as u64
}

async fn run(dir: &Path, keys: usize, lookups: usize, postgres: Option<&str>) {
    let database = dir.join(format!("lookup-{keys}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
    }
    let pg_url = match postgres {
        Some(admin) => Some(create_pg_database(admin, &format!("lookup_{keys}")).await),
        None => None,
    };
    let mut config = match &pg_url {
        Some(url) => ServiceConfig::new(url.as_str()),
        None => ServiceConfig::new(database.clone()),
    };
    config.admin_token = Some(ADMIN.to_string());
    let service = spawn(config).await.expect("spawn");
    let http = HttpClient::new(service.local_addr());

    let setup = http.data_plane_realm(ADMIN, "bench").await;
    let (token, realm) = (setup.token, setup.realm);

    let started = Instant::now();
    let size = match &pg_url {
        Some(url) => load_pg_keys(url, &realm, keys).await,
        None => {
            let db = database.clone();
            let realm_for_load = realm.clone();
            tokio::task::spawn_blocking(move || load_keys(&db, &realm_for_load, keys))
                .await
                .expect("load task")
                .expect("load keys");
            file_size(&database) + file_size(&PathBuf::from(format!("{}-wal", database.display())))
        }
    };
    let load_time = started.elapsed();

    let path = format!("/{realm}/v0/authenticate");
    let mut rng = Lcg(keys as u64);
    let mut picked = std::collections::HashSet::new();
    while picked.len() < lookups.min(keys) {
        picked.insert(rng.next(keys));
    }
    let picked: Vec<usize> = picked.into_iter().collect();
    // One warm-up call so the connection and the realm policy are in place.
    let lookup = async |body: Value| {
        let answer = http.call("POST", &path, Some(&token), Some(body)).await;
        answer.status.as_u16()
    };
    lookup(json!({"secret": "warm-up"})).await;

    // Interleaved per key, so that load from elsewhere on the machine hits all three alike:
    // a key never looked up (cold: one SQLite probe), a key that does not exist (cold), and the
    // first key again (now warm: answered from the cache).
    let mut cold = Vec::with_capacity(picked.len());
    let mut cold_miss = Vec::with_capacity(picked.len());
    let mut warm = Vec::with_capacity(picked.len());
    for (n, i) in picked.iter().enumerate() {
        let found = json!({"secret": format!("bench-key-{i}")});
        let t = Instant::now();
        let status = lookup(found.clone()).await;
        cold.push(t.elapsed());
        assert_eq!(status, 201, "bench-key-{i} not found");
        let t = Instant::now();
        let status = lookup(json!({"secret": format!("absent-{n}")})).await;
        cold_miss.push(t.elapsed());
        assert_eq!(status, 404);
        let t = Instant::now();
        let status = lookup(found).await;
        warm.push(t.elapsed());
        assert_eq!(status, 201);
    }
    println!(
        "store={} keys={keys} db_size={:.1}MiB load={:.1}s",
        if pg_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        size as f64 / (1024.0 * 1024.0),
        load_time.as_secs_f64()
    );
    println!("  {}", summary("cold found    ", cold));
    println!("  {}", summary("cold not found", cold_miss));
    println!("  {}", summary("warm found    ", warm));
    service.shutdown().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
    }
}

#[tokio::main]
async fn main() {
    let mut keys = vec![1000usize, 1_000_000];
    let mut lookups = 2000usize;
    let mut dir = std::env::temp_dir();
    let mut postgres: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        match arg.as_str() {
            "--keys" => {
                keys = value
                    .split(',')
                    .map(|k| k.trim().parse().expect("--keys: comma-separated numbers"))
                    .collect()
            }
            "--lookups" => lookups = value.parse().expect("--lookups: a number"),
            "--dir" => dir = PathBuf::from(value),
            "--postgres" => postgres = Some(value),
            other => panic!("unknown argument {other}"),
        }
    }
    for n in keys {
        run(&dir, n, lookups, postgres.as_deref()).await;
    }
}
