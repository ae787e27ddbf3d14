use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn create_get_list_and_delete_a_control_plane() {
    let app = TestApp::new().await;
    let created = app
        .post("/v2/control-planes", json!({"name": "eu"}))
        .await
        .ok(201);
    assert_eq!(created["name"], "eu");
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created["created_at"], created["updated_at"]);
    let cp = id(&created);

    let got = app.get(&format!("/v2/control-planes/{cp}")).await.ok(200);
    assert_eq!(got, created);

    let list = app.get("/v2/control-planes").await.ok(200);
    assert_eq!(list["data"], json!([created]));
    assert_eq!(
        list["meta"]["page"],
        json!({"next": null, "previous": null, "size": 100})
    );

    app.delete(&format!("/v2/control-planes/{cp}"))
        .await
        .ok(204);
    app.get(&format!("/v2/control-planes/{cp}"))
        .await
        .problem(404);
    app.delete(&format!("/v2/control-planes/{cp}"))
        .await
        .problem(404);
}

#[tokio::test]
async fn control_plane_input_errors_name_the_field() {
    let app = TestApp::new().await;
    app.post("/v2/control-planes", json!({}))
        .await
        .invalid("name");
    app.post("/v2/control-planes", json!({"name": ""}))
        .await
        .invalid("name");
    app.post("/v2/control-planes", json!({"name": 7}))
        .await
        .invalid("name");
    app.post("/v2/control-planes", json!({"name": "x".repeat(256)}))
        .await
        .invalid("name");
    app.post("/v2/control-planes", json!({"name": "a", "region": "us"}))
        .await
        .invalid("region");
    app.get("/v2/control-planes/not-a-uuid")
        .await
        .invalid("cpId");
    app.get(&format!("/v2/control-planes/{}", uuid::Uuid::new_v4()))
        .await
        .problem(404);
}

#[tokio::test]
async fn admin_calls_need_a_valid_admin_token() {
    let app = TestApp::new().await;
    for (method, path) in [
        ("POST", "/v2/control-planes"),
        ("GET", "/v2/control-planes"),
        ("GET", "/v1/realms"),
        ("POST", "/v1/realms"),
    ] {
        let none = app
            .call(method, path, None, Some(json!({"name": "x"})))
            .await;
        none.problem(401);
        let wrong = app
            .call(
                method,
                path,
                Some("not-the-token"),
                Some(json!({"name": "x"})),
            )
            .await;
        wrong.problem(401);
    }
    // Not a bearer scheme.
    let request = axum::http::Request::builder()
        .uri("/v1/realms")
        .header("authorization", format!("Basic {ADMIN}"))
        .body(axum::body::Body::empty())
        .unwrap();
    app.send(request).await.problem(401);
    // Nothing was created by the refused calls.
    let list = app.get("/v1/realms").await.ok(200);
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn data_plane_tokens_are_shown_once_and_can_be_revoked() {
    let app = TestApp::new().await;
    let cp = app.control_plane("cp").await;
    let tokens = format!("/v2/control-planes/{cp}/data-plane-tokens");
    let created = app.post(&tokens, json!({"name": "edge-1"})).await.ok(201);
    let token = created["token"].as_str().unwrap().to_string();
    assert!(
        token.starts_with("krdp_") && token.len() >= 5 + 22,
        "{token}"
    );
    assert_eq!(created["name"], "edge-1");
    assert_eq!(created["control_plane_id"], cp.as_str());

    // Without a body at all: a name is optional.
    let unnamed = app.post(&tokens, json!({})).await.ok(201);
    assert_eq!(unnamed["name"], serde_json::Value::Null);

    let listed = app.get(&tokens).await;
    assert!(!listed.text.contains(&token), "list shows the token");
    let listed = listed.ok(200);
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    assert!(listed["data"][0].get("token").is_none());
    assert_eq!(listed["data"][0]["id"], created["id"]);

    let token_id = id(&created);
    let token_path = format!("{tokens}/{token_id}");
    app.delete(&token_path).await.ok(204);
    app.delete(&token_path).await.problem(404);
}

#[tokio::test]
async fn data_plane_token_errors() {
    let app = TestApp::new().await;
    let cp = app.control_plane("a").await;
    let tokens = format!("/v2/control-planes/{cp}/data-plane-tokens");
    let other = app.control_plane("b").await;
    let missing = uuid::Uuid::new_v4();
    app.post(
        &format!("/v2/control-planes/{missing}/data-plane-tokens"),
        json!({}),
    )
    .await
    .problem(404);
    app.get(&format!("/v2/control-planes/{missing}/data-plane-tokens"))
        .await
        .problem(404);
    app.post(&tokens, json!({"name": 1})).await.invalid("name");
    app.post(&tokens, json!({"token": "mine"}))
        .await
        .invalid("token");
    // A token is deleted only through its own control plane.
    let created = app.post(&tokens, json!({})).await.ok(201);
    let token_id = id(&created);
    app.delete(&format!(
        "/v2/control-planes/{other}/data-plane-tokens/{token_id}"
    ))
    .await
    .problem(404);
    app.delete(&format!("{tokens}/nope"))
        .await
        .invalid("tokenId");
}

#[tokio::test]
async fn deleting_a_control_plane_revokes_its_tokens_and_leaves_realms() {
    let app = TestApp::new().await;
    let w = app.world().await;
    app.look_up(&w).await.ok(201);
    app.delete(&format!("/v2/control-planes/{}", w.cp))
        .await
        .ok(204);
    app.look_up(&w).await.problem(401);
    let realm = app.get(&w.realm_path()).await.ok(200);
    assert_eq!(realm["allowed_control_planes"], json!([]));
}

#[tokio::test]
async fn data_plane_tokens_and_keys_are_not_admin_tokens() {
    let app = TestApp::new().await;
    let w = app.world().await;
    // The data-plane token is warm in the authenticate cache.
    app.look_up(&w).await.ok(201);
    let consumer = format!("/v1/realms/{}/consumers/{}", w.realm, w.consumer);
    let routes = [
        ("GET", "/v2/control-planes".to_string()),
        ("GET", format!("/v2/control-planes/{}", w.cp)),
        ("DELETE", format!("/v2/control-planes/{}", w.cp)),
        (
            "POST",
            format!("/v2/control-planes/{}/data-plane-tokens", w.cp),
        ),
        (
            "GET",
            format!("/v2/control-planes/{}/data-plane-tokens", w.cp),
        ),
        ("GET", "/v1/realms".to_string()),
        ("PATCH", w.realm_path()),
        ("DELETE", format!("/v1/realms/{}?force=true", w.realm)),
        ("GET", format!("/v1/realms/{}/consumers", w.realm)),
        ("GET", consumer.clone()),
        ("DELETE", consumer.clone()),
        ("GET", format!("{consumer}/keys")),
        ("POST", format!("{consumer}/keys")),
        ("DELETE", format!("{consumer}/keys/{}", w.key)),
    ];
    for token in [w.token.as_str(), w.secret.as_str()] {
        for (method, path) in &routes {
            app.call(method, path, Some(token), Some(json!({"type": "new"})))
                .await
                .problem(401);
        }
    }
    // Nothing was changed by the refused calls.
    app.look_up(&w).await.ok(201);
    let keys = app.get(&format!("{consumer}/keys")).await.ok(200);
    assert_eq!(keys["data"].as_array().unwrap().len(), 1);
}
