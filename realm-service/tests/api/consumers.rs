use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn create_and_get_a_consumer() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let created = app
        .admin(
            "POST",
            &format!("/v1/realms/{realm}/consumers"),
            Some(
                json!({"username": "Ariel", "custom_id": "A-1", "type": "application",
                        "tags": ["t1"], "consumer_groups": ["gold"]}),
            ),
        )
        .await
        .ok(201);
    assert_eq!(created["username"], "Ariel");
    assert_eq!(created["custom_id"], "A-1");
    assert_eq!(created["type"], "application");
    assert_eq!(created["tags"], json!(["t1"]));
    assert_eq!(created["consumer_groups"], json!(["gold"]));
    let got = app
        .admin(
            "GET",
            &format!("/v1/realms/{realm}/consumers/{}", id(&created)),
            None,
        )
        .await
        .ok(200);
    assert_eq!(got, created);

    let minimal = app
        .admin(
            "POST",
            &format!("/v1/realms/{realm}/consumers"),
            Some(json!({"username": "B"})),
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
    app.admin("POST", &path, Some(json!({})))
        .await
        .invalid("username");
    app.admin("POST", &path, Some(json!({"username": ""})))
        .await
        .invalid("username");
    app.admin("POST", &path, Some(json!({"username": "a", "tags": "t"})))
        .await
        .invalid("tags");
    app.admin("POST", &path, Some(json!({"username": "a", "tags": [1]})))
        .await
        .invalid("tags[0]");
    app.admin(
        "POST",
        &path,
        Some(json!({"username": "a", "password": "x"})),
    )
    .await
    .invalid("password");
    app.admin(
        "POST",
        &format!("/v1/realms/{}/consumers", uuid::Uuid::new_v4()),
        Some(json!({"username": "a"})),
    )
    .await
    .problem(404);
    app.consumer(&realm, "ariel").await;
    let dup = app
        .admin("POST", &path, Some(json!({"username": "ariel"})))
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
        app.admin(
            "POST",
            &format!("/v1/realms/{realm}/consumers"),
            Some(json!({"username": username, "custom_id": custom})),
        )
        .await
        .ok(201);
    }
    app.consumer(&other, "carol").await;
    let names = |body: serde_json::Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["username"].as_str().unwrap().to_string())
            .collect()
    };
    let all = app
        .admin("GET", &format!("/v1/realms/{realm}/consumers"), None)
        .await
        .ok(200);
    assert_eq!(names(all), ["ariel", "bob", "ariel2"]);
    let by_name = app
        .admin(
            "GET",
            &format!("/v1/realms/{realm}/consumers?filter[username]=ariel"),
            None,
        )
        .await
        .ok(200);
    assert_eq!(names(by_name), ["ariel"]);
    let encoded = app
        .admin(
            "GET",
            &format!("/v1/realms/{realm}/consumers?filter%5Bcustom_id%5D=B1"),
            None,
        )
        .await
        .ok(200);
    assert_eq!(names(encoded), ["bob"]);
    let both = app
        .admin(
            "GET",
            &format!("/v1/realms/{realm}/consumers?filter[username]=ariel&filter[custom_id]=B1"),
            None,
        )
        .await
        .ok(200);
    assert_eq!(names(both), Vec::<String>::new());
    let case = app
        .admin(
            "GET",
            &format!("/v1/realms/{realm}/consumers?filter[username]=ARIEL"),
            None,
        )
        .await
        .ok(200);
    assert_eq!(names(case), Vec::<String>::new());
    app.admin(
        "GET",
        &format!("/v1/realms/{realm}/consumers?filter[name]=ariel"),
        None,
    )
    .await
    .invalid("filter[name]");
    app.admin(
        "GET",
        &format!("/v1/realms/{}/consumers", uuid::Uuid::new_v4()),
        None,
    )
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
    app.admin("GET", &path, None).await.problem(404);
    app.admin("PATCH", &path, Some(json!({"username": "x"})))
        .await
        .problem(404);
    app.admin("DELETE", &path, None).await.problem(404);
    app.admin("GET", &format!("{path}/keys"), None)
        .await
        .problem(404);
    app.admin(
        "POST",
        &format!("{path}/keys"),
        Some(json!({"type": "new"})),
    )
    .await
    .problem(404);
    app.admin(
        "POST",
        &format!("{path}/move"),
        Some(json!({"target_realm_id": realm})),
    )
    .await
    .problem(404);
    app.admin(
        "GET",
        &format!("/v1/realms/{realm}/consumers/{consumer}"),
        None,
    )
    .await
    .ok(200);
}

#[tokio::test]
async fn patch_a_consumer() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let created = app
        .admin(
            "POST",
            &format!("/v1/realms/{realm}/consumers"),
            Some(json!({"username": "ariel", "custom_id": "A1", "tags": ["a"]})),
        )
        .await
        .ok(201);
    let path = format!("/v1/realms/{realm}/consumers/{}", id(&created));
    let patched = app
        .admin(
            "PATCH",
            &path,
            Some(json!({"tags": ["b"], "consumer_groups": ["gold"]})),
        )
        .await
        .ok(200);
    assert_eq!(patched["tags"], json!(["b"]));
    assert_eq!(patched["consumer_groups"], json!(["gold"]));
    assert_eq!(patched["username"], "ariel", "untouched");
    assert_eq!(patched["custom_id"], "A1", "untouched");
    let cleared = app
        .admin("PATCH", &path, Some(json!({"custom_id": null})))
        .await
        .ok(200);
    assert_eq!(cleared["custom_id"], serde_json::Value::Null);
    assert_eq!(cleared["tags"], json!(["b"]), "untouched");
    let renamed = app
        .admin("PATCH", &path, Some(json!({"username": "ariel-2"})))
        .await
        .ok(200);
    assert_eq!(renamed["username"], "ariel-2");
    assert_eq!(app.admin("GET", &path, None).await.ok(200), renamed);
}

#[tokio::test]
async fn consumer_patch_errors() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let a = app.consumer(&realm, "a").await;
    app.consumer(&realm, "b").await;
    let path = format!("/v1/realms/{realm}/consumers/{a}");
    app.admin("PATCH", &path, Some(json!({"username": "b"})))
        .await
        .problem(409);
    app.admin("PATCH", &path, Some(json!({"username": ""})))
        .await
        .invalid("username");
    app.admin(
        "PATCH",
        &path,
        Some(json!({"username": null, "realm_id": realm})),
    )
    .await
    .invalid("realm_id");
    app.admin(
        "PATCH",
        &format!("/v1/realms/{realm}/consumers/{}", uuid::Uuid::new_v4()),
        Some(json!({})),
    )
    .await
    .problem(404);
    app.admin(
        "PATCH",
        &format!("/v1/realms/{realm}/consumers/zzz"),
        Some(json!({})),
    )
    .await
    .invalid("consumerId");
    assert_eq!(app.admin("GET", &path, None).await.ok(200)["username"], "a");
}

#[tokio::test]
async fn deleting_a_consumer_deletes_its_keys() {
    let app = TestApp::new().await;
    let w = app.world().await;
    app.authenticate(&w.realm, &w.token, &w.secret)
        .await
        .ok(201);
    let path = format!("/v1/realms/{}/consumers/{}", w.realm, w.consumer);
    app.admin("DELETE", &path, None).await.ok(204);
    app.admin("GET", &path, None).await.problem(404);
    app.admin("GET", &format!("{path}/keys/{}", w.key), None)
        .await
        .problem(404);
    app.authenticate(&w.realm, &w.token, &w.secret)
        .await
        .problem(404);
    app.admin("DELETE", &path, None).await.problem(404);
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
    app.authenticate(&w.realm, &w.token, &w.secret)
        .await
        .ok(201);
    let moved = app
        .admin(
            "POST",
            &format!("/v1/realms/{}/consumers/{}/move", w.realm, w.consumer),
            Some(json!({"target_realm_id": target})),
        )
        .await
        .ok(201);
    assert_eq!(moved, json!({"realm_id": target}));
    app.admin(
        "GET",
        &format!("/v1/realms/{}/consumers/{}", w.realm, w.consumer),
        None,
    )
    .await
    .problem(404);
    app.admin(
        "GET",
        &format!("/v1/realms/{target}/consumers/{}", w.consumer),
        None,
    )
    .await
    .ok(200);
    app.admin(
        "GET",
        &format!(
            "/v1/realms/{target}/consumers/{}/keys/{}",
            w.consumer, w.key
        ),
        None,
    )
    .await
    .ok(200);
    // The key now authenticates through the target realm only.
    app.authenticate(&w.realm, &w.token, &w.secret)
        .await
        .problem(404);
    let found = app.authenticate(&target, &w.token, &w.secret).await.ok(201);
    assert_eq!(found["id"], w.consumer.as_str());
}

#[tokio::test]
async fn move_errors() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let target = app.realm(json!({"name": "target"})).await;
    let path = format!("/v1/realms/{}/consumers/{}/move", w.realm, w.consumer);
    app.admin("POST", &path, Some(json!({})))
        .await
        .invalid("target_realm_id");
    app.admin("POST", &path, Some(json!({"target_realm_id": "x"})))
        .await
        .invalid("target_realm_id");
    app.admin(
        "POST",
        &path,
        Some(json!({"target_realm_id": uuid::Uuid::new_v4()})),
    )
    .await
    .problem(404);
    // Username taken in the target.
    app.consumer(&target, "Ariel").await;
    app.admin("POST", &path, Some(json!({"target_realm_id": target})))
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
    app.admin(
        "POST",
        &format!("/v1/realms/{}/consumers/{legacy_owner}/move", w.realm),
        Some(json!({"target_realm_id": third})),
    )
    .await
    .problem(409);
    // Refused moves changed nothing.
    app.admin(
        "GET",
        &format!("/v1/realms/{}/consumers/{legacy_owner}", w.realm),
        None,
    )
    .await
    .ok(200);
    app.authenticate(&w.realm, &w.token, &w.secret)
        .await
        .ok(201);
}
