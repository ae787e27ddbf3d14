//! `POST /v1/realms/{realmId}/check-key`: which consumer and credential a key belongs to (admin).

use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn check_key_says_whose_a_key_is_or_that_it_is_unknown_or_expired() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let other = app.realm(json!({"name": "other"})).await;
    let consumer = app.consumer(&realm, "Ariel").await;
    let (key_id, secret) = app.key(&realm, &consumer, json!({"type": "new"})).await;
    let (short_id, short) = app
        .key(&realm, &consumer, json!({"type": "new", "ttl": 1}))
        .await;
    let path = format!("/v1/realms/{realm}/check-key");

    let valid = app
        .admin("POST", &path, Some(json!({ "secret": secret })))
        .await
        .ok(200);
    assert_eq!(valid["result"], "valid");
    assert_eq!(valid["consumer"]["id"], consumer.as_str());
    assert_eq!(valid["consumer"]["username"], "Ariel");
    assert_eq!(valid["consumer"]["custom_id"], serde_json::Value::Null);
    assert_eq!(valid["credential"]["id"], key_id.as_str());
    assert_eq!(valid["credential"]["type"], "new");
    assert_eq!(valid["credential"]["expires_at"], serde_json::Value::Null);
    assert!(
        !valid.to_string().contains(&secret),
        "the answer holds the secret"
    );

    let unknown = app
        .admin("POST", &path, Some(json!({"secret": "another_key"})))
        .await
        .ok(200);
    assert_eq!(
        unknown,
        json!({"result": "unknown", "consumer": null, "credential": null})
    );
    // A key of realm A is unknown in realm B.
    let elsewhere = app
        .admin(
            "POST",
            &format!("/v1/realms/{other}/check-key"),
            Some(json!({ "secret": secret })),
        )
        .await
        .ok(200);
    assert_eq!(elsewhere["result"], "unknown");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = app
        .admin("POST", &path, Some(json!({ "secret": short })))
        .await
        .ok(200);
    assert_eq!(expired["result"], "expired");
    assert_eq!(expired["credential"]["id"], short_id.as_str());
    assert!(expired["credential"]["expires_at"].is_string());
}

#[tokio::test]
async fn check_key_is_admin_only_and_validates_its_input() {
    let app = TestApp::new().await;
    let world = app.world().await;
    let path = format!("/v1/realms/{}/check-key", world.realm);
    let body = Some(json!({"secret": "x"}));
    app.call("POST", &path, None, body.clone())
        .await
        .problem(401);
    // A data-plane token is not an admin token.
    app.call("POST", &path, Some(&world.token), body.clone())
        .await
        .problem(401);
    app.admin("POST", &path, Some(json!({"secret": ""})))
        .await
        .invalid("secret");
    app.admin("POST", &path, Some(json!({"secret": "x", "extra": 1})))
        .await
        .problem(400);
    app.admin("POST", &path, Some(json!({}))).await.problem(400);
    app.admin("POST", "/v1/realms/nope/check-key", body.clone())
        .await
        .invalid("realmId");
    app.admin(
        "POST",
        "/v1/realms/0b0c2b14-6f0e-4a43-9a5c-3f1e2d4c5b6a/check-key",
        body,
    )
    .await
    .problem(404);
}
