//! Concurrent requests: look-ups racing the writes that revoke them, and writes racing each
//! other for the same unique name. Run on a multi-threaded runtime so the requests really
//! overlap (the writes and the SQLite reads run on blocking threads).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::json;

use crate::common::*;

/// Look-ups that each loop until they have seen `done`, then a few more; returns how many
/// answers that were started after `done` was set were 201.
async fn look_up_until(
    app: &Arc<TestApp>,
    realm: &str,
    token: &str,
    secret: &str,
    done: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u32, u32)>> {
    (0..4)
        .map(|_| {
            let (app, realm, token, secret, done) = (
                app.clone(),
                realm.to_string(),
                token.to_string(),
                secret.to_string(),
                done.clone(),
            );
            tokio::spawn(async move {
                let (mut late_successes, mut late) = (0, 0);
                // Bounded: 10 s per task, whatever happens.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while std::time::Instant::now() < deadline {
                    // A warm look-up never waits; yield as a network read would.
                    tokio::task::yield_now().await;
                    let after = done.load(Ordering::SeqCst);
                    let answer = app.authenticate(&realm, &token, &secret).await;
                    if after {
                        late += 1;
                        if answer.status.as_u16() == 201 {
                            late_successes += 1;
                        }
                        if late >= 5 {
                            break;
                        }
                    }
                }
                (late_successes, late)
            })
        })
        .collect()
}

async fn late_successes(tasks: Vec<tokio::task::JoinHandle<(u32, u32)>>) -> (u32, u32) {
    let mut total = (0, 0);
    for task in tasks {
        let (successes, late) = task.await.expect("look-up task");
        total.0 += successes;
        total.1 += late;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_lookup_started_after_a_revocation_is_answered_succeeds() {
    let app = Arc::new(TestApp::new().await);
    let w = app.world().await;
    for round in 0..8 {
        let secret = format!("racing-key-{round}");
        let (key, _) = app
            .key(
                &w.realm,
                &w.consumer,
                json!({"type": "legacy", "secret": secret}),
            )
            .await;
        app.authenticate(&w.realm, &w.token, &secret).await.ok(201);
        let done = Arc::new(AtomicBool::new(false));
        let tasks = look_up_until(&app, &w.realm, &w.token, &secret, &done).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        app.delete(&format!(
            "/v1/realms/{}/consumers/{}/keys/{key}",
            w.realm, w.consumer
        ))
        .await
        .ok(204);
        done.store(true, Ordering::SeqCst);
        let (successes, late) = late_successes(tasks).await;
        assert_eq!(
            late, 20,
            "round {round}: every task looked up after the delete"
        );
        assert_eq!(
            successes, 0,
            "round {round}: a revoked key authenticated after its delete was answered"
        );
        app.authenticate(&w.realm, &w.token, &secret)
            .await
            .problem(404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_lookup_started_after_a_control_plane_is_disallowed_succeeds() {
    let app = Arc::new(TestApp::new().await);
    let w = app.world().await;
    let realm_path = w.realm_path();
    for round in 0..8 {
        app.patch(&realm_path, json!({"allowed_control_planes": [w.cp]}))
            .await
            .ok(200);
        app.look_up(&w).await.ok(201);
        let done = Arc::new(AtomicBool::new(false));
        let tasks = look_up_until(&app, &w.realm, &w.token, &w.secret, &done).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        app.patch(&realm_path, json!({"allowed_control_planes": []}))
            .await
            .ok(200);
        done.store(true, Ordering::SeqCst);
        let (successes, late) = late_successes(tasks).await;
        assert_eq!(late, 20, "round {round}");
        assert_eq!(
            successes, 0,
            "round {round}: a disallowed control plane authenticated after the PATCH was answered"
        );
        app.look_up(&w).await.problem(403);
    }
}

/// Runs `n` copies of a request at once; returns their status codes.
async fn at_once(
    app: &Arc<TestApp>,
    requests: Vec<(String, String, serde_json::Value)>,
) -> Vec<u16> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(method, path, body)| {
            let app = app.clone();
            tokio::spawn(async move { app.admin(&method, &path, Some(body)).await.status.as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("request task"));
    }
    statuses.sort();
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writes_for_one_unique_name_give_one_201_and_409s() {
    let app = Arc::new(TestApp::new().await);
    let w = app.world().await;
    // Eight creates of one username.
    let path = format!("/v1/realms/{}/consumers", w.realm);
    let statuses = at_once(
        &app,
        (0..8)
            .map(|_| ("POST".into(), path.clone(), json!({"username": "same"})))
            .collect(),
    )
    .await;
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
    let listed = app
        .get(&format!("{path}?filter[username]=same"))
        .await
        .ok(200);
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    // Eight consumers each given the same legacy secret at once.
    let mut consumers = Vec::new();
    for i in 0..8 {
        consumers.push(app.consumer(&w.realm, &format!("holder-{i}")).await);
    }
    let statuses = at_once(
        &app,
        consumers
            .iter()
            .map(|c| {
                (
                    "POST".into(),
                    format!("/v1/realms/{}/consumers/{c}/keys", w.realm),
                    json!({"type": "legacy", "secret": "one-secret"}),
                )
            })
            .collect(),
    )
    .await;
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
    app.authenticate(&w.realm, &w.token, "one-secret")
        .await
        .ok(201);

    // Two consumers called "dup", in two realms, moved into a third at once.
    let target = app
        .realm(json!({"name": "target", "allowed_control_planes": [w.cp]}))
        .await;
    let mut moves = Vec::new();
    let mut origins = Vec::new();
    for i in 0..2 {
        let realm = app
            .realm(json!({"name": format!("origin-{i}"), "allowed_control_planes": [w.cp]}))
            .await;
        let consumer = app.consumer(&realm, "dup").await;
        let secret = format!("dup-key-{i}");
        app.key(
            &realm,
            &consumer,
            json!({"type": "legacy", "secret": secret}),
        )
        .await;
        moves.push((
            "POST".to_string(),
            format!("/v1/realms/{realm}/consumers/{consumer}/move"),
            json!({"target_realm_id": target}),
        ));
        origins.push((realm, secret));
    }
    let statuses = at_once(&app, moves).await;
    assert_eq!(statuses, [201, 409]);
    let in_target = app
        .get(&format!(
            "/v1/realms/{target}/consumers?filter[username]=dup"
        ))
        .await
        .ok(200);
    assert_eq!(in_target["data"].as_array().unwrap().len(), 1);
    // Exactly one key moved with its consumer; the other still works where it was.
    let mut through_target = 0;
    for (realm, secret) in &origins {
        let moved = app.authenticate(&target, &w.token, secret).await.status;
        let stayed = app.authenticate(realm, &w.token, secret).await.status;
        assert_ne!(moved, stayed, "{secret}: found in exactly one realm");
        if moved.as_u16() == 201 {
            through_target += 1;
        }
    }
    assert_eq!(through_target, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_deleting_a_realm_while_keys_are_created_leaves_no_rows_behind() {
    let app = Arc::new(TestApp::new().await);
    let w = app.world().await;
    let mut requests: Vec<(String, String, serde_json::Value)> = (0..12)
        .map(|i| {
            (
                "POST".to_string(),
                format!("/v1/realms/{}/consumers/{}/keys", w.realm, w.consumer),
                json!({"type": "legacy", "secret": format!("k{i}")}),
            )
        })
        .collect();
    requests.insert(
        6,
        (
            "DELETE".to_string(),
            format!("/v1/realms/{}?force=true", w.realm),
            json!({}),
        ),
    );
    let statuses = at_once(&app, requests).await;
    assert!(statuses.contains(&204), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [201, 204, 404].contains(s)),
        "{statuses:?}"
    );
    app.look_up(&w).await.problem(404);
    // Nothing of the realm is left in the database.
    for table in ["consumers", "keys", "realm_control_planes"] {
        let left = app
            .count(
                &format!("SELECT count(*) FROM {table} WHERE CAST(realm_id AS TEXT) = $1"),
                Some(&w.realm),
            )
            .await;
        assert_eq!(left, 0, "{table}");
    }
    let orphan_keys = app
        .count(
            "SELECT count(*) FROM keys WHERE consumer_id NOT IN (SELECT id FROM consumers)",
            None,
        )
        .await;
    assert_eq!(orphan_keys, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_realm_without_force_while_consumers_are_created_leaves_no_orphan() {
    let app = Arc::new(TestApp::new().await);
    for round in 0..6 {
        let realm = app.realm(json!({ "name": format!("r{round}") })).await;
        let mut requests: Vec<(String, String, serde_json::Value)> = (0..6)
            .map(|i| {
                (
                    "POST".to_string(),
                    format!("/v1/realms/{realm}/consumers"),
                    json!({"username": format!("u{i}")}),
                )
            })
            .collect();
        requests.insert(
            round % 6,
            (
                "DELETE".to_string(),
                format!("/v1/realms/{realm}"),
                json!({}),
            ),
        );
        let statuses = at_once(&app, requests).await;
        assert!(
            statuses.iter().all(|s| [201, 204, 400, 404].contains(s)),
            "{statuses:?}"
        );
        // Either the delete was refused (consumers came first) or no consumer was created
        // after it: a 204 next to a 201 would mean a consumer answered 201 is gone.
        assert!(
            !(statuses.contains(&204) && statuses.contains(&201)),
            "{statuses:?}"
        );
        let orphans = app
            .count(
                "SELECT count(*) FROM consumers WHERE realm_id NOT IN (SELECT id FROM realms)",
                None,
            )
            .await;
        assert_eq!(orphans, 0);
    }
}
