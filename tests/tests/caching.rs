//! Caching of realm answers, measured where it matters: the number of authenticate calls the
//! realm service answered (`realm_service_authenticate_total`).

use keyrealm_tests::fixtures::{cp_entry, realm_entry, RealmWorld};
use keyrealm_tests::{gateway_test, http_client, Checks, EchoUpstream, GatewayKind, Reply};
use serde_json::json;

const REQUESTS: usize = 20;

async fn realm_answers_are_cached(kind: GatewayKind) {
    let world = RealmWorld::start().await.expect("realm world");
    let svc = &world.service;
    let sequential_key = svc
        .consumer_with_key(&world.realm_id, "steady")
        .await
        .expect("consumer");
    let concurrent_key = svc
        .consumer_with_key(&world.realm_id, "crowd")
        .await
        .expect("consumer");
    let echo = EchoUpstream::start().await.expect("echo upstream");
    let mut spec = world.spec(echo.addr());
    let realm_only = spec.listener(world.realm_listener());
    let realm_then_cp = spec.listener(json!({
        "identity_realms": [realm_entry(&world.realm_id, Some("us")), cp_entry()],
        "realm_service": world.realm_service_config(json!({"us": "realm_us"})),
        "consumers": [{"id": "cace0000-0000-4000-8000-000000000001", "username": "cp-user",
                       "keyauth_credentials": [{"id": "cace0000-0000-4000-8000-0000000000c1", "key": "cp-only-key"}]}],
    }));
    // Room for 2 misses only: a flood of unknown keys must not evict the found entry.
    let small_miss_cache = spec.listener(json!({
        "identity_realms": [realm_entry(&world.realm_id, Some("us"))],
        "realm_service": {
            "clusters": {"us": "realm_us"}, "token": world.token, "timeout_ms": 2000,
            "max_cached_not_found": 2,
        },
    }));
    let flood_key = svc
        .consumer_with_key(&world.realm_id, "flooded")
        .await
        .expect("consumer");
    let gateway = kind.start(&spec).await.expect("gateway");
    let http = http_client();
    let mut c = Checks::new();
    let calls = || async { svc.authenticate_calls().await.expect("realm metrics") };
    let send = |listener: usize, key: String| {
        Reply::send(
            "cached key",
            http.get(gateway.url(listener, "/request"))
                .header("apikey", key),
        )
    };
    // `REQUESTS` requests one after the other; their statuses.
    let in_sequence = async |listener: usize, key: &str| {
        let mut statuses = Vec::new();
        for _ in 0..REQUESTS {
            statuses.push(send(listener, key.to_string()).await.status);
        }
        statuses
    };

    let before = calls().await;
    c.eq(
        "20 requests with one realm key: all 200",
        in_sequence(realm_only, &sequential_key.secret).await,
        vec![200; REQUESTS],
    );
    c.eq(
        "20 requests with one realm key → 1 realm call",
        calls().await - before,
        1,
    );

    let before = calls().await;
    c.eq(
        "20 requests with one unknown key: all 401",
        in_sequence(realm_only, "no-such-key-anywhere").await,
        vec![401; REQUESTS],
    );
    c.eq(
        "20 requests with one unknown key → 1 realm call",
        calls().await - before,
        1,
    );

    let before = calls().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..REQUESTS {
        let request = http
            .get(gateway.url(realm_only, "/request"))
            .header("apikey", concurrent_key.secret.clone());
        tasks.spawn(async move { Reply::send("concurrent", request).await.status });
    }
    let statuses = tasks.join_all().await;
    c.eq(
        "20 concurrent requests with one new key: all 200",
        statuses,
        vec![200; REQUESTS],
    );
    c.eq(
        "20 concurrent requests with one new key → 1 realm call",
        calls().await - before,
        1,
    );

    let before = calls().await;
    c.eq(
        "20 requests with a cp key after a realm: all 200",
        in_sequence(realm_then_cp, "cp-only-key").await,
        vec![200; REQUESTS],
    );
    c.eq(
        "20 requests with a cp key after a realm → 1 realm call (the miss is cached)",
        calls().await - before,
        1,
    );

    // Bounded caches: the found entry survives a flood of misses; misses beyond the bound are
    // looked up again.
    let before = calls().await;
    let r = send(small_miss_cache, flood_key.secret.clone()).await;
    c.status("bounded cache: realm key → 200", &r, 200);
    for i in 0..REQUESTS {
        send(small_miss_cache, format!("random-unknown-key-{i}")).await;
    }
    let r = send(small_miss_cache, flood_key.secret.clone()).await;
    c.status(
        "bounded cache: realm key after a flood of unknown keys → 200",
        &r,
        200,
    );
    c.eq(
        "bounded cache: 1 call for the realm key + 1 per unknown key; none again for the realm key",
        calls().await - before,
        1 + REQUESTS as u64,
    );
    let before = calls().await;
    send(small_miss_cache, "random-unknown-key-0".to_string()).await;
    c.eq(
        "bounded cache: an unknown key evicted by the flood is looked up again",
        calls().await - before,
        1,
    );
    c.finish();
}

gateway_test!(realm_answers_are_cached);
