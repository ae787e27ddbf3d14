use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn authenticate_returns_the_consumer_with_effective_groups() {
    let app = TestApp::new().await;
    let cp = app.control_plane("cp").await;
    let token = app.dp_token(&cp).await;
    let realm = app
        .realm(
            json!({"name": "prod", "allowed_control_planes": [cp], "ttl": 15,
                      "negative_ttl": 7, "consumer_groups": ["gold", "all"]}),
        )
        .await;
    let consumer = app
        .post(
            &format!("/v1/realms/{realm}/consumers"),
            json!({"username": "Ariel", "custom_id": "A1", "type": "developer",
                        "tags": ["vip"], "consumer_groups": ["beta", "gold"]}),
        )
        .await
        .ok(201);
    let consumer_id = id(&consumer);
    let key = app
        .post(
            &format!("/v1/realms/{realm}/consumers/{consumer_id}/keys"),
            json!({"type": "new", "tags": ["k"]}),
        )
        .await
        .ok(201);
    let answer = app
        .authenticate(&realm, &token, key["secret"].as_str().unwrap())
        .await;
    assert_eq!(answer.content_type(), "application/json");
    let body = answer.ok(201);
    assert_eq!(
        body,
        json!({
            "id": consumer_id, "username": "Ariel", "custom_id": "A1", "type": "developer",
            "tags": ["vip"], "consumer_group_names": ["gold", "all", "beta"],
            "ttl": 15, "negative_ttl": 7,
            "credential": {"id": key["id"], "created_at": key["created_at"], "tags": ["k"],
                           "expires_at": null}
        })
    );
    assert!(!answer.text.contains(key["secret"].as_str().unwrap()));
}

#[tokio::test]
async fn an_unknown_key_is_404_with_negative_ttl() {
    let app = TestApp::new().await;
    let w = app.world().await;
    app.patch(&w.realm_path(), json!({"negative_ttl": 42}))
        .await
        .ok(200);
    let miss = app.authenticate(&w.realm, &w.token, "another_key").await;
    let body = miss.problem(404);
    assert_eq!(body["negative_ttl"], 42);
    assert!(
        !miss.text.contains("another_key"),
        "the answer repeats the key"
    );
    // An unknown realm is a miss too.
    let body = app
        .authenticate(&uuid::Uuid::new_v4().to_string(), &w.token, &w.secret)
        .await
        .problem(404);
    assert!(body["negative_ttl"].is_number());
}

#[tokio::test]
async fn a_key_of_realm_a_is_never_found_through_realm_b() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let b = app
        .realm(json!({"name": "b", "allowed_control_planes": [w.cp]}))
        .await;
    app.look_up(&w).await.ok(201);
    app.authenticate(&b, &w.token, &w.secret).await.problem(404);
}

#[tokio::test]
async fn data_plane_tokens_are_required_and_checked() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let path = format!("/{}/v0/authenticate", w.realm);
    app.call("POST", &path, None, Some(json!({"secret": w.secret})))
        .await
        .problem(401);
    app.call(
        "POST",
        &path,
        Some("krdp_unknown"),
        Some(json!({"secret": w.secret})),
    )
    .await
    .problem(401);
    // An admin token is not a data-plane token.
    app.call(
        "POST",
        &path,
        Some(ADMIN),
        Some(json!({"secret": w.secret})),
    )
    .await
    .problem(401);
    // A missing token wins over a bad body.
    app.call("POST", &path, None, Some(json!({"nope": 1})))
        .await
        .problem(401);
}

#[tokio::test]
async fn a_control_plane_the_realm_does_not_allow_gets_403() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let stranger = app.control_plane("stranger").await;
    let stranger_token = app.dp_token(&stranger).await;
    let body = app
        .authenticate(&w.realm, &stranger_token, &w.secret)
        .await
        .problem(403);
    assert!(body.get("negative_ttl").is_none());
    // ... also for keys that do not exist (the realm's contents are not its business).
    app.authenticate(&w.realm, &stranger_token, "another_key")
        .await
        .problem(403);
    // allow_all_control_planes lets every control plane in.
    app.patch(&w.realm_path(), json!({"allow_all_control_planes": true}))
        .await
        .ok(200);
    app.authenticate(&w.realm, &stranger_token, &w.secret)
        .await
        .ok(201);
    // And removing a control plane from the list locks it out at once.
    app.patch(
        &w.realm_path(),
        json!({"allow_all_control_planes": false, "allowed_control_planes": []}),
    )
    .await
    .ok(200);
    app.look_up(&w).await.problem(403);
}

#[tokio::test]
async fn malformed_authenticate_bodies_are_400() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let path = format!("/{}/v0/authenticate", w.realm);
    let raw = |body: &'static str| {
        axum::http::Request::builder()
            .method("POST")
            .uri(path.clone())
            .header("authorization", format!("Bearer {}", w.token))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    app.send(raw("")).await.invalid("body");
    app.send(raw("{\"secret\":")).await.invalid("body");
    app.send(raw("[]")).await.invalid("body");
    app.send(raw("{}")).await.invalid("secret");
    app.send(raw("{\"secret\": 5}")).await.invalid("secret");
    app.send(raw("{\"secret\": \"\"}")).await.invalid("secret");
    app.send(raw("{\"secret\": \"a\", \"key\": \"b\"}"))
        .await
        .invalid("key");
    app.call(
        "POST",
        "/not-a-uuid/v0/authenticate",
        Some(&w.token),
        Some(json!({"secret": "a"})),
    )
    .await
    .invalid("realmId");
}

#[tokio::test]
async fn repeated_lookups_are_cache_hits_and_counted() {
    let app = TestApp::new().await;
    let w = app.world().await;
    for _ in 0..3 {
        app.look_up(&w).await.ok(201);
    }
    for _ in 0..2 {
        app.authenticate(&w.realm, &w.token, "another_key")
            .await
            .problem(404);
    }
    app.authenticate(&w.realm, "bad-token", &w.secret)
        .await
        .problem(401);
    for (metric, expected) in [
        ("realm_service_authenticate_total{result=\"found\"}", 3),
        ("realm_service_authenticate_total{result=\"not_found\"}", 2),
        ("realm_service_authenticate_total{result=\"unauthorized\"}", 1),
        ("realm_service_authenticate_cache_total{result=\"miss\"}", 2),
        ("realm_service_authenticate_cache_total{result=\"hit\"}", 3),
        (
            "realm_service_http_requests_total{route=\"/{realmId}/v0/authenticate\",status=\"201\"}",
            3,
        ),
    ] {
        assert_eq!(app.metric(metric).await, expected, "{metric}");
    }
}

#[tokio::test]
async fn revocation_after_a_cached_authenticate_is_immediate() {
    let app = TestApp::new().await;
    let w = app.world().await;
    app.look_up(&w).await.ok(201);
    app.look_up(&w).await.ok(201);
    assert!(
        app.metric("realm_service_authenticate_cache_total{result=\"hit\"}")
            .await
            >= 1
    );
    app.delete(&w.key_path()).await.ok(204);
    app.look_up(&w).await.problem(404);
}

#[tokio::test]
async fn every_write_path_is_seen_at_once_by_cached_lookups() {
    let app = TestApp::new().await;
    let w = app.world().await;
    app.look_up(&w).await.ok(201);
    // Consumer patch.
    app.patch(
        &w.consumer_path(),
        json!({"username": "Ariel-renamed", "consumer_groups": ["new"]}),
    )
    .await
    .ok(200);
    let found = app.look_up(&w).await.ok(201);
    assert_eq!(found["username"], "Ariel-renamed");
    assert_eq!(found["consumer_group_names"], json!(["new"]));
    // Realm patch.
    app.patch(
        &w.realm_path(),
        json!({"ttl": 20, "consumer_groups": ["r"]}),
    )
    .await
    .ok(200);
    let found = app.look_up(&w).await.ok(201);
    assert_eq!(found["ttl"], 20);
    assert_eq!(found["consumer_group_names"], json!(["r", "new"]));
    // A cached miss becomes a hit when the key is created.
    app.authenticate(&w.realm, &w.token, "late-key")
        .await
        .problem(404);
    app.key(
        &w.realm,
        &w.consumer,
        json!({"type": "legacy", "secret": "late-key"}),
    )
    .await;
    app.authenticate(&w.realm, &w.token, "late-key")
        .await
        .ok(201);
    // Token delete.
    let listed = app
        .get(&format!("/v2/control-planes/{}/data-plane-tokens", w.cp))
        .await
        .ok(200);
    let token_id = listed["data"][0]["id"].as_str().unwrap().to_string();
    app.delete(&format!(
        "/v2/control-planes/{}/data-plane-tokens/{token_id}",
        w.cp
    ))
    .await
    .ok(204);
    app.look_up(&w).await.problem(401);
}

#[tokio::test]
async fn cached_misses_and_policies_follow_realm_patches_at_once() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let other = app.control_plane("other").await;
    let other_token = app.dp_token(&other).await;
    let realm_path = w.realm_path();
    // A miss, asked twice (the second from the cache), carries the realm's negative_ttl ...
    for _ in 0..2 {
        let miss = app
            .authenticate(&w.realm, &w.token, "no-such-key")
            .await
            .problem(404);
        assert_eq!(miss["negative_ttl"], 10);
    }
    app.patch(&realm_path, json!({"negative_ttl": 7}))
        .await
        .ok(200);
    // ... and the patched one at once.
    let miss = app
        .authenticate(&w.realm, &w.token, "no-such-key")
        .await
        .problem(404);
    assert_eq!(miss["negative_ttl"], 7);
    // allow_all_control_planes lets in control planes that are not in the list; the list
    // still applies once it is turned off.
    app.authenticate(&w.realm, &other_token, &w.secret)
        .await
        .problem(403);
    app.patch(&realm_path, json!({"allow_all_control_planes": true}))
        .await
        .ok(200);
    app.authenticate(&w.realm, &other_token, &w.secret)
        .await
        .ok(201);
    app.look_up(&w).await.ok(201);
    app.patch(
        &realm_path,
        json!({"allow_all_control_planes": false, "allowed_control_planes": [other]}),
    )
    .await
    .ok(200);
    app.authenticate(&w.realm, &other_token, &w.secret)
        .await
        .ok(201);
    app.look_up(&w).await.problem(403);
    // A deleted realm: a cached hit becomes the unknown-realm 404.
    app.authenticate(&w.realm, &other_token, &w.secret)
        .await
        .ok(201);
    app.delete(&format!("{realm_path}?force=true"))
        .await
        .ok(204);
    let gone = app
        .authenticate(&w.realm, &other_token, &w.secret)
        .await
        .problem(404);
    assert_eq!(gone["negative_ttl"], 5);
}

/// Review finding: a token whose control plane the realm does not allow used to have its
/// look-ups counted (and cached) as key misses before the 403, so any data-plane token could
/// fill, and so flush, the key cache. It is refused before the key is looked up.
#[tokio::test]
async fn a_disallowed_control_plane_is_refused_before_any_key_lookup_or_caching() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let other = app.control_plane("not allowed").await;
    let token = app.dp_token(&other).await;
    let hit = "realm_service_authenticate_cache_total{result=\"hit\"}";
    let miss = "realm_service_authenticate_cache_total{result=\"miss\"}";
    let before = (app.metric(hit).await, app.metric(miss).await);
    for i in 0..5 {
        app.authenticate(&w.realm, &token, &format!("probe-{i}"))
            .await
            .problem(403);
    }
    app.authenticate(&w.realm, &token, &w.secret)
        .await
        .problem(403);
    assert_eq!(
        (app.metric(hit).await, app.metric(miss).await),
        before,
        "a refused token's look-ups reached the key cache"
    );
    // The allowed data plane is unaffected.
    app.look_up(&w).await.ok(201);
}
