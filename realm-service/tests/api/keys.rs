use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_new_key_has_a_generated_secret_shown_once() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let consumer = app.consumer(&realm, "ariel").await;
    let path = format!("/v1/realms/{realm}/consumers/{consumer}/keys");
    let created = app
        .post(&path, json!({"type": "new", "tags": ["ci"]}))
        .await
        .ok(201);
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("krk_"), "{secret}");
    assert_eq!(
        secret.len(),
        4 + 43,
        "prefix + 43 base62 characters (~256 bits)"
    );
    assert!(secret[4..].chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(created["type"], "new");
    assert_eq!(created["tags"], json!(["ci"]));
    assert_eq!(created["expires_at"], serde_json::Value::Null);
    for field in ["id", "created_at", "updated_at"] {
        assert!(created[field].is_string(), "{field}");
    }
    let second = app.post(&path, json!({"type": "new"})).await.ok(201);
    assert_ne!(second["secret"], created["secret"]);

    let listed = app.get(&path).await;
    assert!(!listed.text.contains(secret), "list shows a secret");
    let listed = listed.ok(200);
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    assert!(listed["data"][0].get("secret").is_none());
    let key_path = format!("{path}/{}", id(&created));
    let got = app.get(&key_path).await;
    assert!(!got.text.contains(secret));
    let got = got.ok(200);
    assert_eq!(got["id"], created["id"]);
    assert_eq!(got["tags"], json!(["ci"]));
    assert!(got.get("secret").is_none());
}

#[tokio::test]
async fn a_legacy_key_keeps_the_given_secret_unique_in_its_realm() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let other_realm = app.realm(json!({"name": "other"})).await;
    let a = app.consumer(&realm, "a").await;
    let b = app.consumer(&realm, "b").await;
    let c = app.consumer(&other_realm, "c").await;
    let created = app
        .post(
            &format!("/v1/realms/{realm}/consumers/{a}/keys"),
            json!({"type": "legacy", "secret": "my-old-key"}),
        )
        .await
        .ok(201);
    assert_eq!(created["secret"], "my-old-key");
    assert_eq!(created["type"], "legacy");
    let dup = app
        .post(
            &format!("/v1/realms/{realm}/consumers/{b}/keys"),
            json!({"type": "legacy", "secret": "my-old-key"}),
        )
        .await;
    dup.problem(409);
    assert!(
        !dup.text.contains("my-old-key"),
        "the error repeats the secret"
    );
    // Another realm may hold the same secret.
    app.post(
        &format!("/v1/realms/{other_realm}/consumers/{c}/keys"),
        json!({"type": "legacy", "secret": "my-old-key"}),
    )
    .await
    .ok(201);
}

#[tokio::test]
async fn a_key_with_a_ttl_expires() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let created = app
        .admin(
            "POST",
            &format!("/v1/realms/{}/consumers/{}/keys", w.realm, w.consumer),
            // Times have whole seconds: 2 s keeps the first look-up inside the lifetime even
            // when the key is created at the very end of a second.
            Some(json!({"type": "new", "ttl": 2})),
        )
        .await
        .ok(201);
    let parse = |v: &serde_json::Value| {
        time::OffsetDateTime::parse(
            v.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert_eq!(
        parse(&created["expires_at"]) - parse(&created["created_at"]),
        time::Duration::seconds(2)
    );
    let secret = created["secret"].as_str().unwrap();
    let found = app.authenticate(&w.realm, &w.token, secret).await.ok(201);
    assert_eq!(found["credential"]["expires_at"], created["expires_at"]);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let expired = app
        .authenticate(&w.realm, &w.token, secret)
        .await
        .problem(404);
    assert_eq!(expired["negative_ttl"], 10);
    // The key without a ttl still works.
    app.look_up(&w).await.ok(201);
}

#[tokio::test]
async fn key_create_errors() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let consumer = app.consumer(&realm, "a").await;
    let path = format!("/v1/realms/{realm}/consumers/{consumer}/keys");
    app.post(&path, json!({})).await.invalid("type");
    app.post(&path, json!({"type": "old"}))
        .await
        .invalid("type");
    app.post(&path, json!({"type": "new", "secret": "x"}))
        .await
        .invalid("secret");
    app.post(&path, json!({"type": "legacy"}))
        .await
        .invalid("secret");
    app.post(&path, json!({"type": "legacy", "secret": ""}))
        .await
        .invalid("secret");
    app.post(&path, json!({"type": "legacy", "secret": "s".repeat(1025)}))
        .await
        .invalid("secret");
    app.post(&path, json!({"type": "new", "ttl": 0}))
        .await
        .invalid("ttl");
    app.post(&path, json!({"type": "new", "ttl": -5}))
        .await
        .invalid("ttl");
    app.post(&path, json!({"type": "new", "ttl": "60"}))
        .await
        .invalid("ttl");
    app.post(&path, json!({"type": "new", "expires": 1}))
        .await
        .invalid("expires");
    app.post(
        &format!("/v1/realms/{realm}/consumers/{}/keys", uuid::Uuid::new_v4()),
        json!({"type": "new"}),
    )
    .await
    .problem(404);
    let listed = app.get(&path).await.ok(200);
    assert_eq!(listed["data"], json!([]), "refused creates stored nothing");
}

#[tokio::test]
async fn get_list_and_delete_key_errors() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let keys = format!("/v1/realms/{}/consumers/{}/keys", w.realm, w.consumer);
    let missing = uuid::Uuid::new_v4();
    app.get(&format!("{keys}/{missing}")).await.problem(404);
    app.delete(&format!("{keys}/{missing}")).await.problem(404);
    app.get(&format!("{keys}/bad")).await.invalid("keyId");
    // A key of another consumer is not reachable through this one.
    let other = app.consumer(&w.realm, "other").await;
    let other_keys = format!("/v1/realms/{}/consumers/{other}/keys", w.realm);
    app.get(&format!("{other_keys}/{}", w.key))
        .await
        .problem(404);
    app.delete(&format!("{other_keys}/{}", w.key))
        .await
        .problem(404);
    app.get(&format!("/v1/realms/{}/consumers/{missing}/keys", w.realm))
        .await
        .problem(404);
    app.get(&format!("{keys}?page[size]=0"))
        .await
        .invalid("page[size]");
    // Delete, then it is gone.
    app.delete(&format!("{keys}/{}", w.key)).await.ok(204);
    app.get(&format!("{keys}/{}", w.key)).await.problem(404);
}

/// `/openapi.json` describes a key request as one of two shapes, and the service accepts exactly
/// those: `{type: new}` (a null `secret` is no secret) and `{type: legacy, secret}`.
#[tokio::test]
async fn the_documented_key_shapes_are_the_accepted_ones() {
    let app = TestApp::new().await;
    let document = app.call("GET", "/openapi.json", None, None).await.ok(200);
    let shapes = document["components"]["schemas"]["CreateKey"]["oneOf"]
        .as_array()
        .expect("CreateKey is a oneOf");
    assert_eq!(shapes.len(), 2);
    assert_eq!(shapes[0]["properties"]["type"]["enum"], json!(["new"]));
    assert_eq!(shapes[0]["properties"]["secret"]["type"], "null");
    assert_eq!(shapes[0]["required"], json!(["type"]));
    assert_eq!(shapes[1]["properties"]["type"]["enum"], json!(["legacy"]));
    assert_eq!(shapes[1]["required"], json!(["type", "secret"]));
    assert_eq!(shapes[1]["properties"]["secret"]["maxLength"], 1024);
    for shape in shapes {
        assert_eq!(shape["additionalProperties"], false);
        assert_eq!(shape["properties"]["ttl"]["minimum"], 1);
        assert_eq!(shape["properties"]["ttl"]["maximum"], 315_360_000);
    }

    let realm = app.realm(json!({"name": "r"})).await;
    let consumer = app.consumer(&realm, "u").await;
    let path = format!("/v1/realms/{realm}/consumers/{consumer}/keys");
    for ok in [
        json!({"type": "new"}),
        json!({"type": "new", "secret": null, "tags": null, "ttl": null}),
        json!({"type": "legacy", "secret": "s".repeat(1024), "ttl": 315_360_000}),
        json!({"type": "legacy", "secret": " ", "tags": ["t"], "ttl": 1}),
    ] {
        app.post(&path, ok.clone()).await.ok(201);
    }
    for (bad, field) in [
        (json!({"type": "new", "secret": "x"}), "secret"),
        (json!({"type": "legacy"}), "secret"),
        (json!({"type": "legacy", "secret": null}), "secret"),
        (json!({"type": "legacy", "secret": ""}), "secret"),
        (
            json!({"type": "legacy", "secret": "s".repeat(1025)}),
            "secret",
        ),
        (json!({"type": "new", "ttl": 0}), "ttl"),
        (json!({"type": "new", "ttl": 315_360_001}), "ttl"),
        (json!({"type": "NEW"}), "type"),
        (json!({}), "type"),
    ] {
        app.post(&path, bad).await.invalid(field);
    }
}

#[tokio::test]
async fn an_expired_key_keeps_its_secret_taken_until_it_is_deleted() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let keys = format!("/v1/realms/{}/consumers/{}/keys", w.realm, w.consumer);
    let expiring = app
        .post(
            &keys,
            json!({"type": "legacy", "secret": "short-lived", "ttl": 1}),
        )
        .await
        .ok(201);
    // Times are whole seconds; 2.1 s is past any 1 s key's expiry.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    app.authenticate(&w.realm, &w.token, "short-lived")
        .await
        .problem(404);
    // Still listed, and the secret is still taken in the realm.
    let listed = app.get(&keys).await.ok(200);
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["id"] == expiring["id"]));
    app.post(&keys, json!({"type": "legacy", "secret": "short-lived"}))
        .await
        .problem(409);
    // Deleted, the secret can be given again and works.
    app.delete(&format!("{keys}/{}", id(&expiring)))
        .await
        .ok(204);
    app.post(&keys, json!({"type": "legacy", "secret": "short-lived"}))
        .await
        .ok(201);
    app.authenticate(&w.realm, &w.token, "short-lived")
        .await
        .ok(201);
}
