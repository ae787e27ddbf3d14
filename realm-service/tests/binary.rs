//! Tests over real TCP against the built `realm-service` binary: the seed's calls, durability
//! across `kill -9`, no plaintext secrets on disk, `token create`, and the console's forms
//! leaving no secret in the log.

mod common;

const STORE: common::StoreKind = common::StoreKind::Sqlite;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::metric_value;
use common::serve::{serve_command, token_command, ServiceProcess};
use serde_json::json;
use sha2::Digest;

/// A string field of a JSON object.
fn text(object: &serde_json::Value, field: &str) -> String {
    object[field].as_str().expect(field).to_string()
}

fn db_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("realm.db")
}

#[tokio::test]
async fn the_seed_calls_work_over_tcp_against_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "seed-admin-token-0123456789abcdefghijk";
    let server = ServiceProcess::start(serve_command(db_in(&dir), Some(admin)), "debug");
    let http = server.client();
    assert_eq!(http.call("GET", "/health", None, None).await.status, 200);

    // The control plane whose data planes will call, and its data-plane token.
    let cp = text(
        &http
            .create("/v2/control-planes", admin, json!({"name": "quickstart"}))
            .await,
        "id",
    );
    let dp_tokens = format!("/v2/control-planes/{cp}/data-plane-tokens");
    let token = text(&http.create(&dp_tokens, admin, json!({})).await, "token");

    // Seed step 1: create a realm.
    let realm = http
        .create(
            "/v1/realms",
            admin,
            json!({"name": "prod", "allowed_control_planes": [cp]}),
        )
        .await;
    let realm_id = text(&realm, "id");
    // Step 2: the centrally-managed consumer.
    let consumers = format!("/v1/realms/{realm_id}/consumers");
    let consumer_id = text(
        &http
            .create(&consumers, admin, json!({"username": "Ariel"}))
            .await,
        "id",
    );
    // Step 3: a key.
    let keys = format!("{consumers}/{consumer_id}/keys");
    let key = http.create(&keys, admin, json!({"type": "new"})).await;
    let secret = text(&key, "secret");

    // What the data plane then asks.
    let authenticate = format!("/{realm_id}/v0/authenticate");
    let found = http
        .create(&authenticate, &token, json!({"secret": secret}))
        .await;
    assert_eq!(found["username"], "Ariel");
    assert_eq!(found["id"], consumer_id.as_str());
    assert_eq!(found["credential"]["id"], key["id"]);
    let missing = http
        .call(
            "POST",
            &authenticate,
            Some(&token),
            Some(json!({"secret": "another_key"})),
        )
        .await;
    assert_eq!(missing.problem(404)["negative_ttl"], 10);
    let metrics = http.call("GET", "/metrics", None, None).await.text;
    assert_eq!(
        metric_value(
            &metrics,
            "realm_service_authenticate_total{result=\"found\"}"
        ),
        1
    );
    assert_eq!(
        metric_value(
            &metrics,
            "realm_service_authenticate_total{result=\"not_found\"}"
        ),
        1
    );

    // Even at debug level, no secret or token reaches the log.
    let log = server.stop_and_read_log();
    assert!(log.contains("listening on"), "{log}");
    assert!(
        log.contains("request"),
        "debug request lines expected:\n{log}"
    );
    for secret in [
        "seed-admin-token-0123456789abcdefghijk",
        token.as_str(),
        secret.as_str(),
        "another_key",
    ] {
        assert!(!log.contains(secret), "the log holds a secret:\n{log}");
    }
}

/// The value of the console's hidden `csrf` field in a page.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no csrf field in:\n{page}"))
        .to_string()
}

/// `name=value` of the cookie `name` the answer sets.
fn cookie_set(answer: &common::Answer, name: &str) -> String {
    answer
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie set: {:?}", answer.headers))
        .to_string()
}

/// The text of the element with `id` (the console's shown-once secret).
fn element_text(page: &str, id: &str) -> String {
    page.split(&format!("id=\"{id}\""))
        .nth(1)
        .and_then(|rest| rest.split('>').nth(1))
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no #{id} in:\n{page}"))
        .to_string()
}

fn location(answer: &common::Answer) -> String {
    assert_eq!(answer.status, 303, "{}", answer.text);
    answer.headers["location"]
        .to_str()
        .expect("location")
        .to_string()
}

/// The console's forms over TCP, as a browser without JavaScript sends them: with the service
/// logging at debug (trace for its own crate), no admin token, key, data-plane token, session id
/// or CSRF token reaches the log.
#[tokio::test]
async fn the_console_logs_no_secret_token_or_session() {
    const ADMIN: &str = "console-admin-token-0123456789abcdefghij";
    const WRONG: &str = "wrong-admin-token-0123456789abcdefghijk";
    const LEGACY: &str = "legacy-secret-of-ariel-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let server = ServiceProcess::start(
        serve_command(db_in(&dir), Some(ADMIN)),
        "debug,realm_service=trace",
    );
    let http = server.client();

    let page = http.browse("/console/sign-in", None, None).await;
    let sign_in_csrf = csrf_of(&page.text);
    let sign_in_cookie = cookie_set(&page, "krc_sign_in");
    let refused = http
        .browse(
            "/console/sign-in",
            Some(&sign_in_cookie),
            Some(&[("token", WRONG), ("csrf", &sign_in_csrf)]),
        )
        .await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert!(
        refused.text.contains("unknown admin token"),
        "{}",
        refused.text
    );
    let signed_in = http
        .browse(
            "/console/sign-in",
            Some(&sign_in_cookie),
            Some(&[("token", ADMIN), ("csrf", &sign_in_csrf)]),
        )
        .await;
    assert_eq!(location(&signed_in), "/console/");
    let session = cookie_set(&signed_in, "krc_session");
    let cookie = Some(session.as_str());
    let csrf = csrf_of(&http.browse("/console/realms/new", cookie, None).await.text);
    let csrf = csrf.as_str();

    let realm = location(
        &http
            .browse(
                "/console/realms/new",
                cookie,
                Some(&[
                    ("name", "prod"),
                    ("allow_all_control_planes", "true"),
                    ("csrf", csrf),
                ]),
            )
            .await,
    );
    let consumer = location(
        &http
            .browse(
                &format!("{realm}/consumers/new"),
                cookie,
                Some(&[("username", "Ariel"), ("csrf", csrf)]),
            )
            .await,
    );
    let legacy = http
        .browse(
            &format!("{consumer}/keys"),
            cookie,
            Some(&[("type", "legacy"), ("secret", LEGACY), ("csrf", csrf)]),
        )
        .await;
    assert_eq!(legacy.status, 201, "{}", legacy.text);
    let created = http
        .browse(
            &format!("{consumer}/keys"),
            cookie,
            Some(&[("type", "new"), ("csrf", csrf)]),
        )
        .await;
    let secret = element_text(&created.text, "secret");
    assert!(secret.starts_with("krk_"), "{secret}");
    let realm_id = realm.rsplit('/').next().expect("realm id");
    for key in [secret.as_str(), LEGACY] {
        let checked = http
            .browse(
                "/console/check-key",
                cookie,
                Some(&[("realm", realm_id), ("secret", key), ("csrf", csrf)]),
            )
            .await;
        assert!(checked.text.contains("Valid key"), "{}", checked.text);
    }
    let cp = location(
        &http
            .browse(
                "/console/control-planes",
                cookie,
                Some(&[("name", "cp"), ("csrf", csrf)]),
            )
            .await,
    );
    let token_page = http
        .browse(
            &format!("{cp}/tokens"),
            cookie,
            Some(&[("name", "edge"), ("csrf", csrf)]),
        )
        .await;
    let token = element_text(&token_page.text, "secret");
    assert!(token.starts_with("krdp_"), "{token}");

    let log = server.stop_and_read_log();
    assert!(
        log.contains("/v1/realms/{realmId}/check-key"),
        "the console's API calls are logged at debug:\n{log}"
    );
    let session_id = session.trim_start_matches("krc_session=");
    for secret in [
        ADMIN,
        WRONG,
        LEGACY,
        &secret,
        &token,
        session_id,
        csrf,
        &sign_in_csrf,
    ] {
        assert!(!log.contains(secret), "the log holds {secret}:\n{log}");
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let database = db_in(&dir);
    let mut server = ServiceProcess::serve(&database, Some(common::ADMIN));
    let http = std::sync::Arc::new(server.client());
    let realm = text(
        &http
            .create("/v1/realms", common::ADMIN, json!({"name": "durable"}))
            .await,
        "id",
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let http = http.clone();
        let consumers = format!("/v1/realms/{realm}/consumers");
        tasks.spawn(async move {
            let body = json!({"username": format!("user-{i}")});
            text(&http.create(&consumers, common::ADMIN, body).await, "id")
        });
    }
    let mut acknowledged = std::collections::HashSet::new();
    while let Some(id) = tasks.join_next().await {
        acknowledged.insert(id.expect("create task"));
    }
    // Right after the last 201.
    server.kill_9();
    assert_eq!(acknowledged.len(), 200);

    let restarted = ServiceProcess::serve(&database, Some(common::ADMIN));
    let list = restarted
        .client()
        .call(
            "GET",
            &format!("/v1/realms/{realm}/consumers?page[size]=1000"),
            Some(common::ADMIN),
            None,
        )
        .await
        .ok(200);
    let stored: std::collections::HashSet<String> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored, acknowledged);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_database_and_its_wal_hold_no_plaintext_secret_or_token() {
    let dir = tempfile::tempdir().unwrap();
    let database = db_in(&dir);
    let admin = "kradm_plaintext-check-admin-token-0123456789";
    let mut server = ServiceProcess::serve(&database, Some(admin));
    let http = server.client();
    let setup = http.data_plane_realm(admin, "prod").await;
    let (dp_token, realm) = (setup.token, setup.realm);
    let consumers = format!("/v1/realms/{realm}/consumers");
    let consumer = text(
        &http
            .create(&consumers, admin, json!({"username": "a"}))
            .await,
        "id",
    );
    let keys = format!("{consumers}/{consumer}/keys");
    let generated = text(
        &http.create(&keys, admin, json!({"type": "new"})).await,
        "secret",
    );
    let legacy = "legacy-plaintext-secret-4567890";
    http.create(&keys, admin, json!({"type": "legacy", "secret": legacy}))
        .await;
    for secret in [generated.as_str(), legacy] {
        let authenticate = format!("/{realm}/v0/authenticate");
        http.create(&authenticate, &dp_token, json!({"secret": secret}))
            .await;
    }
    // kill -9 leaves the WAL as it is (no checkpoint at close).
    server.kill_9();

    let mut files = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", database.display()));
        if let Ok(bytes) = std::fs::read(&path) {
            files.push((path, bytes));
        }
    }
    assert!(files.len() >= 2, "expected the database and its WAL");
    for (path, bytes) in &files {
        for plaintext in [admin, dp_token.as_str(), generated.as_str(), legacy] {
            assert!(
                !contains(bytes, plaintext.as_bytes()),
                "{} holds a plaintext secret",
                path.display()
            );
        }
    }
    // What is stored is the SHA-256 (so the files searched are the ones that hold the keys).
    // The bootstrap admin token is not stored at all (held in memory by the process).
    for secret in [generated.as_str(), legacy, dp_token.as_str()] {
        let hash = sha2::Sha256::digest(secret.as_bytes());
        assert!(
            files.iter().any(|(_, bytes)| contains(bytes, &hash)),
            "the hash of a secret is in neither file"
        );
    }
}

#[tokio::test]
async fn token_create_prints_an_admin_token_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let database = db_in(&dir);
    let output = token_command("create", "ci", &database)
        .output()
        .expect("run token create");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("kradm_"), "{token}");
    assert!(!contains(
        &std::fs::read(&database).unwrap(),
        token.as_bytes()
    ));

    // The service started without REALM_ADMIN_TOKEN accepts the minted token.
    let server = ServiceProcess::serve(&database, None);
    let http = server.client();
    http.call("GET", "/v1/realms", Some(&token), None)
        .await
        .ok(200);
    http.call("GET", "/v1/realms", Some("guess"), None)
        .await
        .problem(401);
    drop(server);

    // A REALM_ADMIN_TOKEN works while it is configured, and not after a restart without it.
    let server = ServiceProcess::serve(&database, Some("from-env-token-0123456789abcdefghijklmn"));
    server
        .client()
        .call(
            "GET",
            "/v1/realms",
            Some("from-env-token-0123456789abcdefghijklmn"),
            None,
        )
        .await
        .ok(200);
    drop(server);
    let server = ServiceProcess::serve(&database, Some("rotated-token-0123456789abcdefghijklmno"));
    let http = server.client();
    http.call(
        "GET",
        "/v1/realms",
        Some("from-env-token-0123456789abcdefghijklmn"),
        None,
    )
    .await
    .problem(401);
    http.call(
        "GET",
        "/v1/realms",
        Some("rotated-token-0123456789abcdefghijklmno"),
        None,
    )
    .await
    .ok(200);
    http.call("GET", "/v1/realms", Some(&token), None)
        .await
        .ok(200);
}

/// Waits (at most 20 s) for a process to exit; returns its output.
fn exits(mut child: Child) -> (std::process::ExitStatus, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut log = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
            }
            return (status, log);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_second_serve_on_a_sqlite_file_exits_at_once_pointing_to_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let database = db_in(&dir);
    let first = ServiceProcess::serve(&database, Some(common::ADMIN));
    let (status, log) = exits(
        serve_command(&database, Some(common::ADMIN))
            .spawn()
            .expect("start the second"),
    );
    assert!(!status.success());
    assert!(log.contains("another realm-service process"), "{log}");
    assert!(log.contains("PostgreSQL"), "{log}");
    // The first one still serves.
    first
        .client()
        .call("GET", "/v1/realms", Some(common::ADMIN), None)
        .await
        .ok(200);
}

#[test]
fn a_short_realm_admin_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (status, log) = exits(
        serve_command(db_in(&dir), Some("change-me"))
            .spawn()
            .expect("start"),
    );
    assert!(!status.success());
    assert!(log.contains("REALM_ADMIN_TOKEN"), "{log}");
    assert!(log.contains("at least 32"), "{log}");
}

#[test]
fn simultaneous_first_starts_on_a_new_sqlite_file_both_migrate_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..8 {
        let database = dir.path().join(format!("race-{round}.db"));
        let children: Vec<Child> = (0..2)
            .map(|i| {
                token_command("create", &format!("t{i}"), &database)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("token create")
            })
            .collect();
        for child in children {
            let (status, log) = exits(child);
            assert!(status.success(), "round {round}: {log}");
        }
    }
}
