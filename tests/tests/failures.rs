//! When the realm service fails: a cached key still passes while it is down, an unknown key gets
//! 503 (never 401) within the timeout; a realm service that hangs gives 503 within `timeout_ms`
//! plus a small margin; a realm that does not allow this control plane gives 503 and an error log
//! line naming the realm and the cluster; with `anonymous`, an unavailable realm proceeds as the
//! anonymous consumer.

use std::time::{Duration, Instant};

use keyrealm_tests::fixtures::{cp_entry, realm_entry, RealmWorld};
use keyrealm_tests::{
    gateway_test, http_client, Checks, EchoUpstream, FailingServer, GatewayKind, GatewaySpec,
    HangingServer, Reply,
};
use serde_json::json;

const TIMEOUT_MS: u64 = 500;
/// Slack for scheduling on a loaded 2-core machine; the point is "bounded", not "fast".
const MARGIN: Duration = Duration::from_millis(1500);

async fn realm_failures(kind: GatewayKind) {
    let mut world = RealmWorld::start().await.expect("realm world");
    let key = world
        .service
        .consumer_with_key(&world.realm_id, "cached")
        .await
        .expect("consumer");
    // A realm that allows another control plane only.
    let other_cp = world
        .service
        .create_control_plane("other")
        .await
        .expect("other cp");
    let forbidding_realm = world
        .service
        .create_realm(json!({"name": "not-for-us", "allowed_control_planes": [other_cp]}))
        .await
        .expect("forbidding realm");
    let forbidden_key = world
        .service
        .consumer_with_key(&forbidding_realm, "unreachable")
        .await
        .expect("consumer");
    let hanging = HangingServer::start().await.expect("hanging server");
    let failing = FailingServer::start().await.expect("failing server");

    let echo = EchoUpstream::start().await.expect("echo upstream");
    let mut spec = GatewaySpec::new(echo.addr());
    spec.cluster("realm_us", world.service.addr())
        .cluster("realm_eu", world.service.addr())
        .cluster("realm_hang", hanging.addr())
        .cluster("realm_broken", failing.addr());
    let realm_service = json!({
        "clusters": {"us": "realm_us", "eu": "realm_eu", "hang": "realm_hang", "broken": "realm_broken"},
        "token": world.token,
        "timeout_ms": TIMEOUT_MS,
    });
    let nobody = json!({"id": "a0000000-0000-4000-8000-0000000000a0", "username": "nobody", "keyauth_credentials": []});
    let cp_user = json!({"id": "a0000000-0000-4000-8000-0000000000c0", "username": "cp-user",
                         "keyauth_credentials": [{"id": "a0000000-0000-4000-8000-0000000000c1", "key": "cp-key"}]});
    let stoppable = spec.listener(json!({
        "identity_realms": [realm_entry(&world.realm_id, Some("us"))],
        "realm_service": realm_service,
    }));
    let hangs = spec.listener(json!({
        "identity_realms": [realm_entry(&world.realm_id, Some("hang"))],
        "realm_service": realm_service,
    }));
    let forbidden_then_cp = spec.listener(json!({
        "identity_realms": [realm_entry(&forbidding_realm, Some("eu")), cp_entry()],
        "realm_service": realm_service,
        "consumers": [cp_user],
    }));
    let hangs_with_anonymous = spec.listener(json!({
        "identity_realms": [realm_entry(&world.realm_id, Some("hang")), cp_entry()],
        "realm_service": realm_service,
        "consumers": [nobody],
        "anonymous": "nobody",
    }));
    let broken = spec.listener(json!({
        "identity_realms": [realm_entry(&world.realm_id, Some("broken"))],
        "realm_service": realm_service,
    }));
    let wrong_token = spec.listener(json!({
        "identity_realms": [realm_entry(&world.realm_id, Some("us"))],
        "realm_service": {"clusters": {"us": "realm_us"}, "token": "not-a-data-plane-token", "timeout_ms": TIMEOUT_MS},
    }));
    let gateway = kind.start(&spec).await.expect("gateway");
    let http = http_client();
    let mut c = Checks::new();
    let timed = async |listener: usize, key: &str| {
        let started = Instant::now();
        let r = Reply::send(
            "realm failure",
            http.get(gateway.url(listener, "/request"))
                .header("apikey", key),
        )
        .await;
        (r, started.elapsed())
    };

    // A realm that does not allow this control plane.
    let (r, _) = timed(forbidden_then_cp, &forbidden_key.secret).await;
    c.error(
        "realm refusing this control plane, key unknown elsewhere → 503",
        &r,
        503,
        "Identity realm unavailable",
    );
    let (r, _) = timed(forbidden_then_cp, "cp-key").await;
    c.status(
        "realm refusing this control plane, then a cp key → 200",
        &r,
        200,
    );
    let line = gateway
        .wait_for_log_line(Duration::from_secs(5), |line| {
            line.contains(&forbidding_realm) && line.contains("realm_eu")
        })
        .await;
    c.check(
        "an error log line names the refusing realm and its cluster",
        line.is_some(),
        || "no log line with the realm id and `realm_eu`".to_string(),
    );
    if let Some(line) = line {
        eprintln!("realm failure log line: {line}");
        let lower = line.to_lowercase();
        c.check(
            "that log line is an error or warning and gives the cause (403)",
            (lower.contains("[error]") || lower.contains("[warning]"))
                && (line.contains("403") || lower.contains("forbidden")),
            || format!("line: {line}"),
        );
        c.check(
            "that log line does not hold the key",
            !line.contains(&forbidden_key.secret),
            || format!("line: {line}"),
        );
    }

    // A realm service that answers 500, and one that refuses the data-plane token (401).
    let (r, _) = timed(broken, &key.secret).await;
    c.error(
        "realm service answering 500 → 503",
        &r,
        503,
        "Identity realm unavailable",
    );
    let (r, _) = timed(wrong_token, &key.secret).await;
    c.error(
        "realm service refusing the data-plane token (401) → 503, not 401",
        &r,
        503,
        "Identity realm unavailable",
    );

    // A realm service that accepts connections and never answers.
    let (r, elapsed) = timed(hangs, "some-key").await;
    unavailable_in_time(&mut c, "hanging realm service", &r, elapsed);
    c.check(
        "hanging realm service: the filter did wait for the realm (about timeout_ms)",
        elapsed >= Duration::from_millis(TIMEOUT_MS * 8 / 10),
        || format!("took only {elapsed:?}"),
    );
    let (r, _) = timed(hangs_with_anonymous, "some-key").await;
    c.status("hanging realm with anonymous → 200 as anonymous", &r, 200);
    c.eq(
        "hanging realm with anonymous: X-Anonymous-Consumer",
        r.upstream().header("x-anonymous-consumer"),
        Some("true".to_string()),
    );

    let arrived = echo.requests_arrived();
    for (what, listener) in [
        ("hanging", hangs),
        ("broken", broken),
        ("refused token", wrong_token),
    ] {
        let (r, _) = timed(listener, "never-seen-before").await;
        c.status(&format!("{what} realm service, unknown key → 503"), &r, 503);
    }
    c.eq(
        "requests answered 503 never reach the upstream",
        echo.requests_arrived() - arrived,
        0,
    );

    // The realm service stops: what was cached still passes, the rest is 503.
    let (r, _) = timed(stoppable, &key.secret).await;
    c.status("realm key while the service is up → 200", &r, 200);
    world.service.stop().await;
    let (r, _) = timed(stoppable, &key.secret).await;
    c.status("cached realm key after the service stopped → 200", &r, 200);
    c.eq(
        "cached realm key after the service stopped: consumer",
        r.upstream().header("x-consumer-username"),
        Some("cached".to_string()),
    );
    let (r, elapsed) = timed(stoppable, "never-seen-key").await;
    unavailable_in_time(&mut c, "unknown key after the service stopped", &r, elapsed);
    c.finish();
}

gateway_test!(realm_failures);

/// `what` gave a 503 "Identity realm unavailable", answered within `timeout_ms` plus a margin.
fn unavailable_in_time(c: &mut Checks, what: &str, r: &Reply, elapsed: Duration) {
    c.error(
        &format!("{what} → 503"),
        r,
        503,
        "Identity realm unavailable",
    );
    c.check(
        &format!("{what}: answered within timeout_ms plus a margin"),
        elapsed < Duration::from_millis(TIMEOUT_MS) + MARGIN,
        || format!("took {elapsed:?} with timeout_ms {TIMEOUT_MS}"),
    );
}
