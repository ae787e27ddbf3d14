use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn create_and_get_a_consumer() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let created = app
        .post(
            &format!("/v1/realms/{realm}/consumers"),
            json!({"username": "Ariel", "custom_id": "A-1", "type": "application",
                        "tags": ["t1"], "consumer_groups": ["gold"]}),
        )
        .await
        .ok(201);
    assert_eq!(created["username"], "Ariel");
    assert_eq!(created["custom_id"], "A-1");
    assert_eq!(created["type"], "application");
    assert_eq!(created["tags"], json!(["t1"]));
    assert_eq!(created["consumer_groups"], json!(["gold"]));
    let got = app
        .get(&format!("/v1/realms/{realm}/consumers/{}", id(&created)))
        .await
        .ok(200);
    assert_eq!(got, created);

    let minimal = app
        .post(
            &format!("/v1/realms/{realm}/consumers"),
            json!({"username": "B"}),
        )
        .await
        .ok(201);
    assert_eq!(minimal["custom_id"], serde_json::Value::Null);
    assert_eq!(minimal["tags"], json!([]));
    assert_eq!(minimal["consumer_groups"], json!([]));
}

#[tokio::test]
async fn consumer_create_errors() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let other = app.realm(json!({"name": "other"})).await;
    let path = format!("/v1/realms/{realm}/consumers");
    app.post(&path, json!({})).await.invalid("username");
    app.post(&path, json!({"username": ""}))
        .await
        .invalid("username");
    app.post(&path, json!({"username": "a", "tags": "t"}))
        .await
        .invalid("tags");
    app.post(&path, json!({"username": "a", "tags": [1]}))
        .await
        .invalid("tags[0]");
    app.post(&path, json!({"username": "a", "password": "x"}))
        .await
        .invalid("password");
    app.post(
        &format!("/v1/realms/{}/consumers", uuid::Uuid::new_v4()),
        json!({"username": "a"}),
    )
    .await
    .problem(404);
    app.consumer(&realm, "ariel").await;
    let dup = app
        .post(&path, json!({"username": "ariel"}))
        .await
        .problem(409);
    assert!(dup["detail"].as_str().unwrap().contains("ariel"));
    // Unique per realm only; and case matters.
    app.consumer(&other, "ariel").await;
    app.consumer(&realm, "Ariel").await;
}

#[tokio::test]
async fn list_consumers_filtered_by_exact_username_or_custom_id() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let other = app.realm(json!({"name": "other"})).await;
    for (username, custom) in [("ariel", "A1"), ("bob", "B1"), ("ariel2", "A1x")] {
        app.post(
            &format!("/v1/realms/{realm}/consumers"),
            json!({"username": username, "custom_id": custom}),
        )
        .await
        .ok(201);
    }
    app.consumer(&other, "carol").await;
    let none: [&str; 0] = [];
    for (query, expected) in [
        ("", &["ariel", "bob", "ariel2"][..]),
        ("?filter[username]=ariel", &["ariel"]),
        ("?filter%5Bcustom_id%5D=B1", &["bob"]),
        ("?filter[username]=ariel&filter[custom_id]=B1", &none),
        ("?filter[username]=ARIEL", &none),
    ] {
        let listed = app
            .get(&format!("/v1/realms/{realm}/consumers{query}"))
            .await
            .ok(200);
        let names: Vec<&str> = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["username"].as_str().unwrap())
            .collect();
        assert_eq!(names, expected, "{query}");
    }
    app.get(&format!("/v1/realms/{realm}/consumers?filter[name]=ariel"))
        .await
        .invalid("filter[name]");
    app.get(&format!("/v1/realms/{}/consumers", uuid::Uuid::new_v4()))
        .await
        .problem(404);
}

#[tokio::test]
async fn a_consumer_is_not_reachable_through_another_realm() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let other = app.realm(json!({"name": "other"})).await;
    let consumer = app.consumer(&realm, "ariel").await;
    let path = format!("/v1/realms/{other}/consumers/{consumer}");
    app.get(&path).await.problem(404);
    app.patch(&path, json!({"username": "x"}))
        .await
        .problem(404);
    app.delete(&path).await.problem(404);
    app.get(&format!("{path}/keys")).await.problem(404);
    app.post(&format!("{path}/keys"), json!({"type": "new"}))
        .await
        .problem(404);
    app.post(&format!("{path}/move"), json!({"target_realm_id": realm}))
        .await
        .problem(404);
    app.get(&format!("/v1/realms/{realm}/consumers/{consumer}"))
        .await
        .ok(200);
}

#[tokio::test]
async fn patch_a_consumer() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let created = app
        .post(
            &format!("/v1/realms/{realm}/consumers"),
            json!({"username": "ariel", "custom_id": "A1", "tags": ["a"]}),
        )
        .await
        .ok(201);
    let path = format!("/v1/realms/{realm}/consumers/{}", id(&created));
    let patched = app
        .patch(&path, json!({"tags": ["b"], "consumer_groups": ["gold"]}))
        .await
        .ok(200);
    assert_eq!(patched["tags"], json!(["b"]));
    assert_eq!(patched["consumer_groups"], json!(["gold"]));
    assert_eq!(patched["username"], "ariel", "untouched");
    assert_eq!(patched["custom_id"], "A1", "untouched");
    let cleared = app.patch(&path, json!({"custom_id": null})).await.ok(200);
    assert_eq!(cleared["custom_id"], serde_json::Value::Null);
    assert_eq!(cleared["tags"], json!(["b"]), "untouched");
    let renamed = app
        .patch(&path, json!({"username": "ariel-2"}))
        .await
        .ok(200);
    assert_eq!(renamed["username"], "ariel-2");
    assert_eq!(app.get(&path).await.ok(200), renamed);
}

#[tokio::test]
async fn consumer_patch_errors() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let a = app.consumer(&realm, "a").await;
    app.consumer(&realm, "b").await;
    let path = format!("/v1/realms/{realm}/consumers/{a}");
    app.patch(&path, json!({"username": "b"}))
        .await
        .problem(409);
    app.patch(&path, json!({"username": ""}))
        .await
        .invalid("username");
    app.patch(&path, json!({"username": null, "realm_id": realm}))
        .await
        .invalid("realm_id");
    app.patch(
        &format!("/v1/realms/{realm}/consumers/{}", uuid::Uuid::new_v4()),
        json!({}),
    )
    .await
    .problem(404);
    app.patch(&format!("/v1/realms/{realm}/consumers/zzz"), json!({}))
        .await
        .invalid("consumerId");
    assert_eq!(app.get(&path).await.ok(200)["username"], "a");
}

#[tokio::test]
async fn deleting_a_consumer_deletes_its_keys() {
    let app = TestApp::new().await;
    let w = app.world().await;
    app.look_up(&w).await.ok(201);
    let path = format!("/v1/realms/{}/consumers/{}", w.realm, w.consumer);
    app.delete(&path).await.ok(204);
    app.get(&path).await.problem(404);
    app.get(&format!("{path}/keys/{}", w.key))
        .await
        .problem(404);
    app.look_up(&w).await.problem(404);
    app.delete(&path).await.problem(404);
    // The username is free again.
    app.consumer(&w.realm, "Ariel").await;
}

#[tokio::test]
async fn move_a_consumer_with_its_keys() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let target = app
        .realm(json!({"name": "target", "allowed_control_planes": [w.cp]}))
        .await;
    app.look_up(&w).await.ok(201);
    let moved = app
        .post(
            &format!("/v1/realms/{}/consumers/{}/move", w.realm, w.consumer),
            json!({"target_realm_id": target}),
        )
        .await
        .ok(201);
    assert_eq!(moved, json!({"realm_id": target}));
    app.get(&w.consumer_path()).await.problem(404);
    app.get(&format!("/v1/realms/{target}/consumers/{}", w.consumer))
        .await
        .ok(200);
    app.get(&format!(
        "/v1/realms/{target}/consumers/{}/keys/{}",
        w.consumer, w.key
    ))
    .await
    .ok(200);
    // The key now authenticates through the target realm only.
    app.look_up(&w).await.problem(404);
    let found = app.authenticate(&target, &w.token, &w.secret).await.ok(201);
    assert_eq!(found["id"], w.consumer.as_str());
}

#[tokio::test]
async fn move_errors() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let target = app.realm(json!({"name": "target"})).await;
    let path = format!("/v1/realms/{}/consumers/{}/move", w.realm, w.consumer);
    app.post(&path, json!({})).await.invalid("target_realm_id");
    app.post(&path, json!({"target_realm_id": "x"}))
        .await
        .invalid("target_realm_id");
    app.post(&path, json!({"target_realm_id": uuid::Uuid::new_v4()}))
        .await
        .problem(404);
    // Username taken in the target.
    app.consumer(&target, "Ariel").await;
    app.post(&path, json!({"target_realm_id": target}))
        .await
        .problem(409);
    // One of its keys taken in the target.
    let third = app.realm(json!({"name": "third"})).await;
    let legacy_owner = app.consumer(&w.realm, "legacy").await;
    app.key(
        &w.realm,
        &legacy_owner,
        json!({"type": "legacy", "secret": "shared-secret"}),
    )
    .await;
    let squatter = app.consumer(&third, "squatter").await;
    app.key(
        &third,
        &squatter,
        json!({"type": "legacy", "secret": "shared-secret"}),
    )
    .await;
    app.post(
        &format!("/v1/realms/{}/consumers/{legacy_owner}/move", w.realm),
        json!({"target_realm_id": third}),
    )
    .await
    .problem(409);
    // Refused moves changed nothing.
    app.get(&format!("/v1/realms/{}/consumers/{legacy_owner}", w.realm))
        .await
        .ok(200);
    app.look_up(&w).await.ok(201);
}
