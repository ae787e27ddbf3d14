//! Several `realm-service` processes (the built binary) on one PostgreSQL database: revocations
//! through one replica hold on the others within a second, a replica without its invalidation
//! listener answers from the database, a PostgreSQL outage is 503 and then heals by itself, and
//! a replica killed during concurrent writes loses none that were acknowledged.

mod common;

const STORE: common::StoreKind = common::StoreKind::Postgres;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::serve::{token_command, ServiceProcess, BIN};
use common::{id, pg, Answer, DataPlaneRealm, HttpClient, ADMIN};
use serde_json::json;

/// How long a revocation may take to reach every replica.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

fn replicas(url: &str, n: usize) -> Vec<ServiceProcess> {
    (0..n)
        .map(|_| ServiceProcess::serve(url, Some(ADMIN)))
        .collect()
}

/// A control plane with a data-plane token, a realm allowing it, a consumer and a key.
struct World {
    cp: String,
    token: String,
    token_id: String,
    realm: String,
    consumer: String,
    key: String,
    secret: String,
}

async fn world(http: &HttpClient) -> World {
    let DataPlaneRealm {
        cp,
        token,
        token_id,
        realm,
    } = http.data_plane_realm(ADMIN, "r").await;
    let consumer = id(&http
        .create(
            &format!("/v1/realms/{realm}/consumers"),
            ADMIN,
            json!({"username": "u"}),
        )
        .await);
    let key = http
        .create(
            &format!("/v1/realms/{realm}/consumers/{consumer}/keys"),
            ADMIN,
            json!({"type": "new"}),
        )
        .await;
    World {
        cp,
        token,
        token_id,
        realm,
        consumer,
        key: id(&key),
        secret: key["secret"].as_str().expect("secret").to_string(),
    }
}

impl World {
    fn key_path(&self) -> String {
        format!(
            "/v1/realms/{}/consumers/{}/keys/{}",
            self.realm, self.consumer, self.key
        )
    }
}

/// Deletes the world's key (revoking it) through `http`.
async fn delete_key(http: &HttpClient, w: &World) {
    http.call("DELETE", &w.key_path(), Some(ADMIN), None)
        .await
        .ok(204);
}

/// The world's data plane looking up the world's key.
async fn look_up(http: &HttpClient, w: &World) -> Answer {
    http.call(
        "POST",
        &format!("/{}/v0/authenticate", w.realm),
        Some(&w.token),
        Some(json!({"secret": w.secret})),
    )
    .await
}

/// The status of [`look_up`].
async fn authenticate(http: &HttpClient, w: &World) -> u16 {
    look_up(http, w).await.status.as_u16()
}

/// Polls `check` until it is true; returns how long that took (panics past `bound` + margin is
/// left to the caller's assertion).
async fn time_until(bound: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() <= bound {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_revocation_through_one_replica_holds_on_the_others_within_a_second() {
    let url = pg::shared().create_database().await;
    let replicas = replicas(&url, 3);
    let clients: Vec<HttpClient> = replicas.iter().map(ServiceProcess::client).collect();
    let other_realm = id(&clients[0]
        .create("/v1/realms", ADMIN, json!({"name": "elsewhere"}))
        .await);

    let kinds = [
        "key deleted",
        "consumer deleted",
        "consumer moved",
        "realm patched",
        "realm deleted",
        "data-plane token revoked",
        "control plane deleted",
    ];
    for (round, kind) in kinds.iter().enumerate() {
        let writer = round % 3;
        let w = world(&clients[writer]).await;
        // Every replica has the answer cached (looked up twice).
        for http in &clients {
            assert_eq!(authenticate(http, &w).await, 201, "{kind}");
            assert_eq!(authenticate(http, &w).await, 201, "{kind}");
        }
        let http = &clients[writer];
        let (method, path, body, refused) = match *kind {
            "key deleted" => ("DELETE", w.key_path(), None, 404),
            "consumer deleted" => (
                "DELETE",
                format!("/v1/realms/{}/consumers/{}", w.realm, w.consumer),
                None,
                404,
            ),
            "consumer moved" => (
                "POST",
                format!("/v1/realms/{}/consumers/{}/move", w.realm, w.consumer),
                Some(json!({"target_realm_id": other_realm})),
                404,
            ),
            "realm patched" => (
                "PATCH",
                format!("/v1/realms/{}", w.realm),
                Some(json!({"allowed_control_planes": []})),
                403,
            ),
            "realm deleted" => (
                "DELETE",
                format!("/v1/realms/{}?force=true", w.realm),
                None,
                404,
            ),
            "data-plane token revoked" => (
                "DELETE",
                format!(
                    "/v2/control-planes/{}/data-plane-tokens/{}",
                    w.cp, w.token_id
                ),
                None,
                401,
            ),
            _ => ("DELETE", format!("/v2/control-planes/{}", w.cp), None, 401),
        };
        let answer = http.call(method, &path, Some(ADMIN), body).await;
        assert!(answer.status.is_success(), "{kind}: {}", answer.text);
        for (i, other) in clients.iter().enumerate().filter(|(i, _)| *i != writer) {
            let took = time_until(REVOCATION_BOUND, async || {
                authenticate(other, &w).await == refused
            })
            .await;
            assert!(
                took.is_some(),
                "{kind} through replica {writer}: replica {i} still answered otherwise after {REVOCATION_BOUND:?}"
            );
        }
    }

    // An admin token minted with `token create` works on every replica; `token revoke` stops it
    // on every replica.
    let minted = token_command("create", "ci", &url)
        .output()
        .expect("token create");
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    for http in &clients {
        http.call("GET", "/v1/realms", Some(&token), None)
            .await
            .ok(200);
    }
    let revoked = token_command("revoke", "ci", &url)
        .output()
        .expect("token revoke");
    assert!(revoked.status.success(), "{revoked:?}");
    for http in &clients {
        let took = time_until(REVOCATION_BOUND, async || {
            http.call("GET", "/v1/realms", Some(&token), None)
                .await
                .status
                .as_u16()
                == 401
        })
        .await;
        assert!(took.is_some(), "a revoked admin token still works");
    }
    // Revoking a name that has no token is an error.
    let again = token_command("revoke", "ci", &url)
        .output()
        .expect("token revoke");
    assert!(!again.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_tokens_of_replicas_do_not_revoke_each_other_or_minted_tokens() {
    let url = pg::shared().create_database().await;
    let first_token = "first-replica-admin-token-0123456789abc";
    let second_token = "second-replica-admin-token-0123456789ab";
    let first = ServiceProcess::serve(&url, Some(first_token));
    let minted = token_command("create", "ops", &url)
        .output()
        .expect("token create");
    assert!(minted.status.success(), "{minted:?}");
    let minted = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    let second = ServiceProcess::serve(&url, Some(second_token));
    first
        .client()
        .call("GET", "/v1/realms", Some(first_token), None)
        .await
        .ok(200);
    second
        .client()
        .call("GET", "/v1/realms", Some(second_token), None)
        .await
        .ok(200);
    for replica in [&first, &second] {
        replica
            .client()
            .call("GET", "/v1/realms", Some(&minted), None)
            .await
            .ok(200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_its_listener_answers_from_the_database() {
    let url = pg::shared().create_database().await;
    let replicas = replicas(&url, 2);
    let (writer, reader) = (replicas[0].client(), replicas[1].client());
    let killing = Arc::new(AtomicBool::new(true));
    // Terminate every listener connection of this database, again and again.
    let killer = {
        let killing = killing.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let admin = pg::connect(&url).await;
            while killing.load(Ordering::SeqCst) {
                let _ = admin
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE application_name = $1 AND datname = current_database()",
                        &[&realm_service::store::postgres::LISTENER_APPLICATION_NAME],
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        let w = world(&writer).await;
        assert_eq!(authenticate(&reader, &w).await, 201);
        assert_eq!(authenticate(&reader, &w).await, 201);
        delete_key(&writer, &w).await;
        // No stale answer, not even once: the reader cannot hear invalidations now.
        assert_eq!(authenticate(&reader, &w).await, 404);
    }
    killing.store(false, Ordering::SeqCst);
    killer.await.expect("killer");

    // Once the listener is back, the reader caches again and still hears revocations.
    let w = world(&writer).await;
    let hits = async || {
        let text = reader.call("GET", "/metrics", None, None).await.text;
        common::metric_value(
            &text,
            "realm_service_authenticate_cache_total{result=\"hit\"}",
        )
    };
    let cached = time_until(Duration::from_secs(10), async || {
        let before = hits().await;
        authenticate(&reader, &w).await;
        hits().await > before
    })
    .await;
    assert!(cached.is_some(), "the reader never used its cache again");
    writer
        .call(
            "DELETE",
            &format!("/v1/realms/{}/consumers/{}", w.realm, w.consumer),
            Some(ADMIN),
            None,
        )
        .await
        .ok(204);
    let took = time_until(REVOCATION_BOUND, async || {
        authenticate(&reader, &w).await == 404
    })
    .await;
    assert!(took.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgresql_is_down_every_answer_is_503_and_replicas_recover_by_themselves() {
    let cluster = pg::Cluster::start();
    let url = cluster.create_database().await;
    let replicas = replicas(&url, 2);
    let clients: Vec<HttpClient> = replicas.iter().map(ServiceProcess::client).collect();
    let w = world(&clients[0]).await;
    for http in &clients {
        assert_eq!(authenticate(http, &w).await, 201);
        assert_eq!(authenticate(http, &w).await, 201);
    }

    cluster.stop_server();
    for http in &clients {
        // Every call has a client timeout (20 s): an answer at all means no hang.
        http.call("GET", "/health", None, None).await.problem(503);
        look_up(http, &w).await.problem(503);
        http.call("GET", "/v1/realms", Some(ADMIN), None)
            .await
            .problem(503);
        http.call(
            "POST",
            "/v1/realms",
            Some(ADMIN),
            Some(json!({"name": "during the outage"})),
        )
        .await
        .problem(503);
    }

    cluster.start_server();
    for http in &clients {
        let healthy = time_until(Duration::from_secs(30), async || {
            http.call("GET", "/health", None, None)
                .await
                .status
                .as_u16()
                == 200
        })
        .await;
        assert!(healthy.is_some(), "a replica did not recover");
        assert_eq!(authenticate(http, &w).await, 201);
        http.create("/v1/realms", ADMIN, json!({"name": "after"}))
            .await;
    }
    // And revocations reach the other replica again (its listener is back).
    delete_key(&clients[0], &w).await;
    let took = time_until(Duration::from_secs(5), async || {
        authenticate(&clients[1], &w).await == 404
    })
    .await;
    assert!(took.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_during_200_concurrent_writes_loses_no_acknowledged_write() {
    let url = pg::shared().create_database().await;
    let mut replicas = replicas(&url, 3);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let realm = id(&HttpClient::new(addrs[0])
        .create("/v1/realms", ADMIN, json!({"name": "busy"}))
        .await);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let addr = addrs[i % 3];
            let realm = realm.clone();
            tokio::spawn(async move {
                let http = HttpClient::new(addr);
                let answer = http
                    .try_call(
                        "POST",
                        &format!("/v1/realms/{realm}/consumers"),
                        Some(ADMIN),
                        Some(json!({"username": format!("user-{i}")})),
                    )
                    .await;
                match answer {
                    Ok(a) if a.status.as_u16() == 201 => Some(id(&a.json())),
                    _ => None,
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    replicas[1].kill_9();
    let mut acknowledged = Vec::new();
    for task in tasks {
        if let Some(id) = task.await.expect("write task") {
            acknowledged.push(id);
        }
    }
    assert!(
        acknowledged.len() >= 100,
        "only {} writes answered 201",
        acknowledged.len()
    );
    let listed = HttpClient::new(addrs[0])
        .call(
            "GET",
            &format!("/v1/realms/{realm}/consumers?page[size]=1000"),
            Some(ADMIN),
            None,
        )
        .await
        .ok(200);
    let stored: std::collections::HashSet<String> = listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(id)
        .collect();
    for id in &acknowledged {
        assert!(
            stored.contains(id),
            "consumer {id} was answered 201 but is gone"
        );
    }
}

#[tokio::test]
async fn first_starts_race_safely_and_a_newer_schema_is_refused() {
    let url = pg::shared().create_database().await;
    // Five processes migrate a new database at once: the advisory lock lets one do it.
    let children: Vec<Child> = (0..5)
        .map(|i| {
            token_command("create", &format!("t{i}"), &url)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("token create")
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().expect("wait");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let client = pg::connect(&url).await;
    client
        .execute("UPDATE keyrealm_schema SET version = version + 1", &[])
        .await
        .expect("bump the schema version");
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &url])
        .env_remove("REALM_DATABASE")
        .env("REALM_ADMIN_TOKEN", ADMIN)
        .stdin(Stdio::null())
        .output()
        .expect("serve");
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("newer than this binary"), "{log}");
}
