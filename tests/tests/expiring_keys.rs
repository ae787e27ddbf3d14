//! Expiring keys: a control-plane credential with `ttl` (seconds from when the filter took its
//! configuration) and a realm key created with a `ttl` both work until they expire, then get 401.
//! The realm key is cached, but never beyond the credential's own expiry.

use std::time::{Duration, Instant};

use keyrealm_tests::fixtures::{cp_entry, realm_entry, RealmWorld};
use keyrealm_tests::{gateway_test, http_client, Checks, EchoUpstream, GatewayKind, Reply};
use serde_json::json;

/// The control-plane credential's ttl; generous so that a slow start-up does not eat it.
const CP_TTL: Duration = Duration::from_secs(10);
/// The realm key's ttl (counted from its creation, after the gateway is ready).
const REALM_KEY_TTL: Duration = Duration::from_secs(4);

async fn expiring_keys(kind: GatewayKind) {
    let world = RealmWorld::start().await.expect("realm world");
    let echo = EchoUpstream::start().await.expect("echo upstream");
    let mut spec = world.spec(echo.addr());
    spec.listener(json!({
        "identity_realms": [cp_entry(), realm_entry(&world.realm_id, Some("us"))],
        "realm_service": world.realm_service_config(json!({"us": "realm_us"})),
        "consumers": [{
            "id": "1af0a000-0000-4000-8000-00000000afa1", "username": "Jafar",
            "keyauth_credentials": [{"id": "1af0a000-0000-4000-8000-0000000c0af1", "key": "jafar-key", "ttl": CP_TTL.as_secs()}],
        }],
    }));
    // The filter takes its configuration (on_configure) between these two instants: after
    // `started` and before the gateway is ready. So the cp key is valid until `started + CP_TTL`
    // at least, and expired from `ready + CP_TTL` at the latest. (Start-up takes seconds on a
    // loaded machine: counting the expiry from `started` would test too early.)
    let started = Instant::now();
    let gateway = kind.start(&spec).await.expect("gateway");
    let ready = Instant::now();
    let http = http_client();
    let mut c = Checks::new();

    let realm_key = world
        .service
        .consumer_with_key_body(
            &world.realm_id,
            json!({"username": "Iago"}),
            json!({"type": "new", "ttl": REALM_KEY_TTL.as_secs()}),
        )
        .await
        .expect("realm consumer with an expiring key");
    let realm_key_created = Instant::now();
    let calls_before = world.service.authenticate_calls().await.expect("metrics");

    let send = |key: &str| {
        Reply::send(
            "expiring key",
            http.get(gateway.url(0, "/request")).header("apikey", key),
        )
    };
    let r = send(&realm_key.secret).await;
    c.status("realm key before its ttl → 200", &r, 200);
    c.eq(
        "realm key before its ttl: consumer",
        r.upstream().header("x-consumer-username"),
        Some("Iago".to_string()),
    );
    let r = send("jafar-key").await;
    c.status("cp key before its ttl → 200", &r, 200);
    if started.elapsed() >= CP_TTL {
        c.check(
            "the gateway started in time to test the cp key's ttl",
            false,
            || format!("start-up took {:?}", started.elapsed()),
        );
    }

    // Past the realm key's expiry (the realm's ttl is minutes: only the cap ends the cache entry).
    tokio::time::sleep(
        (realm_key_created + REALM_KEY_TTL + Duration::from_millis(1500))
            .saturating_duration_since(Instant::now()),
    )
    .await;
    let r = send(&realm_key.secret).await;
    c.error("realm key after its ttl → 401", &r, 401, "Unauthorized");
    let calls = world.service.authenticate_calls().await.expect("metrics") - calls_before;
    c.eq(
        "realm key: one call before expiry, one after (cached in between, not beyond expiry)",
        calls,
        2,
    );

    tokio::time::sleep(
        (ready + CP_TTL + Duration::from_millis(1500)).saturating_duration_since(Instant::now()),
    )
    .await;
    let r = send("jafar-key").await;
    c.error("cp key after its ttl → 401", &r, 401, "Unauthorized");
    c.finish();
}

gateway_test!(expiring_keys);
