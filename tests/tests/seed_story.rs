//! The seed's story, end to end: a realm, a consumer and a key created through the realm
//! service's API; key-auth switched on with `identity_realms` [realm, cp] and the data-plane token
//! from the environment; the key works at the gateway, `another_key` does not.

use keyrealm_tests::fixtures::RealmWorld;
use keyrealm_tests::{
    gateway_test, http_client, Checks, EchoUpstream, GatewayKind, Reply, TOKEN_ENV,
};

async fn seed_story(kind: GatewayKind) {
    // The seed's API calls, against the real realm service over HTTP: a control plane, its
    // data-plane token, a realm that allows it, then a consumer with a new key.
    let world = RealmWorld::start().await.expect("realm world");
    let ariel = world
        .service
        .consumer_with_key(&world.realm_id, "Ariel")
        .await
        .expect("consumer Ariel with a new key");

    // The seed's plugin configuration; the token comes from the gateway's environment.
    let echo = EchoUpstream::start().await.expect("echo upstream");
    let mut spec = world.spec(echo.addr());
    spec.listener(world.seed_listener());
    spec.env(TOKEN_ENV, &world.token);
    let gateway = kind.start(&spec).await.expect("gateway");
    let http = http_client();
    let mut checks = Checks::new();

    let ok = Reply::send(
        "GET /anything with Ariel's key",
        http.get(gateway.url(0, "/anything"))
            .header("apikey", &ariel.secret),
    )
    .await;
    checks.status("Ariel's key → 200", &ok, 200);
    let up = ok.upstream();
    checks.eq("upstream path", up.path(), "/anything".to_string());
    checks.eq(
        "X-Consumer-ID reaching upstream",
        up.header("x-consumer-id"),
        Some(ariel.id.clone()),
    );
    checks.eq(
        "X-Consumer-Username reaching upstream",
        up.header("x-consumer-username"),
        Some("Ariel".to_string()),
    );
    checks.eq(
        "X-Credential-Identifier reaching upstream (the key's id)",
        up.header("x-credential-identifier"),
        Some(ariel.key_id.clone()),
    );
    checks.eq(
        "no X-Consumer-Custom-ID (Ariel has none)",
        up.header("x-consumer-custom-id"),
        None,
    );
    checks.eq(
        "no X-Anonymous-Consumer",
        up.header("x-anonymous-consumer"),
        None,
    );
    checks.eq(
        "the key is hidden from the upstream (hide_credentials defaults to true)",
        up.header("apikey"),
        None,
    );

    let wrong = Reply::send(
        "GET /anything with another_key",
        http.get(gateway.url(0, "/anything"))
            .header("apikey", "another_key"),
    )
    .await;
    checks.error("another_key → 401", &wrong, 401, "Unauthorized");
    checks.eq(
        "another_key → WWW-Authenticate: Key",
        wrong.header("www-authenticate"),
        Some("Key"),
    );

    let none = Reply::send(
        "GET /anything without a key",
        http.get(gateway.url(0, "/anything")),
    )
    .await;
    checks.error("no key → 401", &none, 401, "No API key found in request");

    // The filter's counters are visible in the gateway's Prometheus stats. The wasm filter
    // counts in the guest and flushes on its tick (200 ms): wait for a flush.
    let counters = [
        ("keyrealm_requests_authenticated_realm", "Ariel's request"),
        ("keyrealm_requests_unauthorized", "another_key"),
        ("keyrealm_requests_no_key", "the request without a key"),
        ("keyrealm_realm_calls_found", "the look-up of Ariel's key"),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let stats = loop {
        let stats = gateway.prometheus_stats().await.expect("stats");
        let all = counters
            .iter()
            .all(|(c, _)| counter_value(&stats, c).is_some_and(|v| v >= 1.0));
        if all || std::time::Instant::now() >= deadline {
            break stats;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for (counter, why) in counters {
        let value = counter_value(&stats, counter);
        checks.check(
            &format!("/stats/prometheus has {counter} ≥ 1 ({why})"),
            value.is_some_and(|v| v >= 1.0),
            || format!("found {value:?}"),
        );
    }
    checks.finish();
}

gateway_test!(seed_story);

/// The value of the first sample whose metric name ends with `name` (Envoy prefixes the filter's
/// metrics, e.g. `envoy_wasmcustom_`).
fn counter_value(stats: &str, name: &str) -> Option<f64> {
    stats
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.split(['{', ' '])
                .next()
                .is_some_and(|metric| metric.ends_with(name))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
