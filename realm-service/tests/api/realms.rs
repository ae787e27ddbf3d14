use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn create_a_realm_with_defaults() {
    let app = TestApp::new().await;
    let realm = app
        .post("/v1/realms", json!({"name": "prod"}))
        .await
        .ok(201);
    assert_eq!(realm["name"], "prod");
    assert_eq!(realm["ttl"], 10);
    assert_eq!(realm["negative_ttl"], 10);
    assert_eq!(realm["consumer_groups"], json!([]));
    assert_eq!(realm["allowed_control_planes"], json!([]));
    assert_eq!(realm["allow_all_control_planes"], false);
    assert!(uuid::Uuid::parse_str(realm["id"].as_str().unwrap()).is_ok());
    assert!(realm["created_at"].is_string() && realm["updated_at"].is_string());
}

#[tokio::test]
async fn create_a_realm_with_every_field() {
    let app = TestApp::new().await;
    let a = app.control_plane("a").await;
    let b = app.control_plane("b").await;
    let realm = app
        .post("/v1/realms", json!({
                "name": "prod", "allowed_control_planes": [b, a, b], "allow_all_control_planes": true,
                "ttl": 5, "negative_ttl": 60, "consumer_groups": ["gold", "silver"]
            }))
        .await
        .ok(201);
    assert_eq!(
        realm["allowed_control_planes"],
        json!([b, a]),
        "order kept, repeats dropped"
    );
    assert_eq!(realm["allow_all_control_planes"], true);
    assert_eq!(realm["ttl"], 5);
    assert_eq!(realm["negative_ttl"], 60);
    assert_eq!(realm["consumer_groups"], json!(["gold", "silver"]));
    let got = app.get(&format!("/v1/realms/{}", id(&realm))).await.ok(200);
    assert_eq!(got, realm);
}

#[tokio::test]
async fn realm_input_errors_name_the_field() {
    let app = TestApp::new().await;
    let post = |body| async { app.post("/v1/realms", body).await };
    post(json!({})).await.invalid("name");
    post(json!({"name": ""})).await.invalid("name");
    post(json!({"name": "p", "ttl": 4})).await.invalid("ttl");
    post(json!({"name": "p", "negative_ttl": 0}))
        .await
        .invalid("negative_ttl");
    post(json!({"name": "p", "ttl": "10"})).await.invalid("ttl");
    post(json!({"name": "p", "ttl": 10.5})).await.invalid("ttl");
    post(json!({"name": "p", "allowed_control_planes": ["nope"]}))
        .await
        .invalid("allowed_control_planes[0]");
    let unknown = uuid::Uuid::new_v4();
    let body = post(json!({"name": "p", "allowed_control_planes": [unknown]}))
        .await
        .invalid("allowed_control_planes[0]");
    assert!(body["detail"].as_str().unwrap().contains("does not exist"));
    post(json!({"name": "p", "consumer_groups": [""]}))
        .await
        .invalid("consumer_groups[0]");
    post(json!({"name": "p", "allow_all_control_planes": "yes"}))
        .await
        .invalid("allow_all_control_planes");
    post(json!({"name": "p", "colour": "red"}))
        .await
        .invalid("colour");
    // Several faults at once are all named.
    let body = post(json!({"name": "", "ttl": 1})).await.problem(400);
    assert_eq!(body["invalid_parameters"].as_array().unwrap().len(), 2);
    // Nothing was stored.
    let list = app.get("/v1/realms").await.ok(200);
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn get_and_patch_a_realm() {
    let app = TestApp::new().await;
    let cp = app.control_plane("a").await;
    let realm = app
        .realm(json!({"name": "prod", "consumer_groups": ["g"]}))
        .await;
    let patched = app
        .patch(
            &format!("/v1/realms/{realm}"),
            json!({"ttl": 30, "allowed_control_planes": [cp]}),
        )
        .await
        .ok(200);
    assert_eq!(patched["ttl"], 30);
    assert_eq!(patched["negative_ttl"], 10, "untouched");
    assert_eq!(patched["name"], "prod", "untouched");
    assert_eq!(patched["consumer_groups"], json!(["g"]), "untouched");
    assert_eq!(patched["allowed_control_planes"], json!([cp]));
    let renamed = app
        .patch(&format!("/v1/realms/{realm}"), json!({"name": "staging"}))
        .await
        .ok(200);
    assert_eq!(renamed["name"], "staging");
    assert_eq!(renamed["allowed_control_planes"], json!([cp]), "untouched");
    let got = app.get(&format!("/v1/realms/{realm}")).await.ok(200);
    assert_eq!(got, renamed);
}

#[tokio::test]
async fn realm_patch_and_get_errors() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let missing = uuid::Uuid::new_v4();
    app.get(&format!("/v1/realms/{missing}")).await.problem(404);
    app.get("/v1/realms/xyz").await.invalid("realmId");
    app.patch(&format!("/v1/realms/{missing}"), json!({"ttl": 6}))
        .await
        .problem(404);
    app.patch(&format!("/v1/realms/{realm}"), json!({"ttl": 3}))
        .await
        .invalid("ttl");
    app.patch(&format!("/v1/realms/{realm}"), json!({"id": realm}))
        .await
        .invalid("id");
    app.patch(
        &format!("/v1/realms/{realm}"),
        json!({"allowed_control_planes": [missing]}),
    )
    .await
    .invalid("allowed_control_planes[0]");
    let unchanged = app.get(&format!("/v1/realms/{realm}")).await.ok(200);
    assert_eq!(unchanged["ttl"], 10);
}

#[tokio::test]
async fn deleting_a_realm_with_consumers_needs_force() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let consumer = app.consumer(&realm, "ariel").await;
    let refused = app
        .delete(&format!("/v1/realms/{realm}"))
        .await
        .invalid("force");
    assert!(refused["detail"].as_str().unwrap().contains("consumer"));
    app.delete(&format!("/v1/realms/{realm}?force=false"))
        .await
        .invalid("force");
    app.get(&format!("/v1/realms/{realm}")).await.ok(200);
    app.delete(&format!("/v1/realms/{realm}?force=maybe"))
        .await
        .invalid("force");
    app.delete(&format!("/v1/realms/{realm}?forced=true"))
        .await
        .invalid("forced");
    app.delete(&format!("/v1/realms/{realm}?force=true"))
        .await
        .ok(204);
    app.get(&format!("/v1/realms/{realm}")).await.problem(404);
    app.get(&format!("/v1/realms/{realm}/consumers/{consumer}"))
        .await
        .problem(404);
    app.delete(&format!("/v1/realms/{realm}?force=true"))
        .await
        .problem(404);
}

#[tokio::test]
async fn an_empty_realm_is_deleted_without_force() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    app.delete(&format!("/v1/realms/{realm}")).await.ok(204);
    app.get(&format!("/v1/realms/{realm}")).await.problem(404);
}

#[tokio::test]
async fn force_deleting_a_realm_revokes_its_keys() {
    let app = TestApp::new().await;
    let w = app.world().await;
    app.look_up(&w).await.ok(201);
    app.delete(&format!("/v1/realms/{}?force=true", w.realm))
        .await
        .ok(204);
    let gone = app.look_up(&w).await.problem(404);
    assert!(gone["negative_ttl"].is_number());
}

/// JSON has numbers, not integers: `/openapi.json` says `integer` (JSON Schema: a number with no
/// fractional part), so `30.0` and `3e1` are 30 minutes; a fraction is a 400 (`type`) and a
/// number past any range a 400 naming the field, never a 5xx.
#[tokio::test]
async fn a_whole_number_with_a_fraction_or_exponent_is_an_integer() {
    let app = TestApp::new().await;
    let created = app
        .admin_raw(
            "POST",
            "/v1/realms",
            "application/json",
            r#"{"name": "r", "ttl": 30.0, "negative_ttl": 3e1}"#,
        )
        .await
        .ok(201);
    assert_eq!(created["ttl"], 30);
    assert_eq!(created["negative_ttl"], 30);
    let realm = id(&created);
    let patched = app
        .admin_raw(
            "PATCH",
            &format!("/v1/realms/{realm}"),
            "application/json",
            r#"{"ttl": 6.0E1}"#,
        )
        .await
        .ok(200);
    assert_eq!(patched["ttl"], 60);
    for (body, rule) in [
        (r#"{"name": "r", "ttl": 30.5}"#, "type"),
        (r#"{"name": "r", "ttl": 1e20}"#, "max"),
        (r#"{"name": "r", "ttl": 99999999999999999999}"#, "max"),
        (r#"{"name": "r", "ttl": -1e20}"#, "min"),
        (r#"{"name": "r", "ttl": "30"}"#, "type"),
    ] {
        let answer = app
            .admin_raw("POST", "/v1/realms", "application/json", body)
            .await
            .invalid("ttl");
        assert_eq!(answer["invalid_parameters"][0]["rule"], rule, "{body}");
    }

    let consumer = app.consumer(&realm, "u").await;
    let key = app
        .admin_raw(
            "POST",
            &format!("/v1/realms/{realm}/consumers/{consumer}/keys"),
            "application/json",
            r#"{"type": "new", "ttl": 3600.0}"#,
        )
        .await
        .ok(201);
    let created_at = key["created_at"].as_str().unwrap();
    let expires_at = key["expires_at"].as_str().unwrap();
    assert_ne!(created_at, expires_at);
    app.admin_raw(
        "POST",
        &format!("/v1/realms/{realm}/consumers/{consumer}/keys"),
        "application/json",
        r#"{"type": "new", "ttl": 0.5}"#,
    )
    .await
    .invalid("ttl");
}
