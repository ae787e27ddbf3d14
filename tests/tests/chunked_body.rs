//! Review fix 2 of issue 8, end to end: `key_in_body` with `hide_credentials`, the key in a
//! header and in the body, a key the cache does not know, and a body in chunks: the first (with
//! the key) arrives with the headers, the realm answers 0.5 s later, the rest of the body 1 and
//! 2 s after the first. The key must never reach the upstream: the filter may not let the
//! request go on (Envoy would forward the part it holds) before the body edit is complete.

use std::time::Duration;

use keyrealm_tests::fixtures::{realm_entry, RealmWorld};
use keyrealm_tests::{
    gateway_test, post_in_chunks, Checks, EchoUpstream, GatewayKind, GatewaySpec, SlowProxy,
};
use serde_json::{json, Value};

async fn chunked_body_with_a_late_realm_answer(kind: GatewayKind) {
    let world = RealmWorld::start().await.expect("realm world");
    let form_key = world
        .service
        .consumer_with_key(&world.realm_id, "chunked-form")
        .await
        .expect("consumer");
    let json_key = world
        .service
        .consumer_with_key(&world.realm_id, "chunked-json")
        .await
        .expect("consumer");
    let slow = SlowProxy::start(world.service.addr(), Duration::from_millis(500))
        .await
        .expect("slow proxy");
    let echo = EchoUpstream::start().await.expect("echo upstream");
    let mut spec = GatewaySpec::new(echo.addr());
    spec.cluster("realm_slow", slow.addr());
    let listener = spec.listener(json!({
        "identity_realms": [realm_entry(&world.realm_id, Some("slow"))],
        "realm_service": {"clusters": {"slow": "realm_slow"}, "token": world.token, "timeout_ms": 3000},
        "key_in_body": true,
        "hide_credentials": true,
    }));
    let gateway = kind.start(&spec).await.expect("gateway");
    let addr = gateway.addr(listener);
    let mut c = Checks::new();
    let second = Duration::from_secs(1);

    for (what, content_type, key, chunks, expected) in [
        (
            "form",
            "application/x-www-form-urlencoded",
            &form_key.secret,
            vec![
                format!("apikey={}&a=1", form_key.secret),
                "&b=2".into(),
                "&c=3".into(),
            ],
            Value::String("a=1&b=2&c=3".into()),
        ),
        (
            "JSON",
            "application/json",
            &json_key.secret,
            vec![
                format!(r#"{{"apikey":"{}","#, json_key.secret),
                r#""a":1,"#.into(),
                r#""b":2}"#.into(),
            ],
            json!({"a": 1, "b": 2}),
        ),
    ] {
        let timed: Vec<(Duration, &str)> = chunks.iter().map(|c| (second, c.as_str())).collect();
        let r = post_in_chunks(
            addr,
            "/anything",
            &[("apikey", key), ("content-type", content_type)],
            &timed,
        )
        .await;
        c.status(
            &format!("{what}: chunked body, realm answer mid-upload → 200"),
            &r,
            200,
        );
        let upstream = r.upstream();
        let body = upstream.body();
        c.check(
            &format!("{what}: the key never reaches the upstream"),
            !r.body.contains(key.as_str()),
            || format!("the upstream saw: {}", r.body),
        );
        let got = if content_type == "application/json" {
            serde_json::from_str(&body).unwrap_or(Value::Null)
        } else {
            Value::String(body.clone())
        };
        c.eq(
            &format!("{what}: the rest of the body is intact"),
            got,
            expected,
        );
        c.eq(
            &format!("{what}: the consumer is the key's"),
            upstream.header("x-consumer-username"),
            Some(format!("chunked-{}", what.to_lowercase())),
        );
    }
    c.finish();
}

gateway_test!(chunked_body_with_a_late_realm_answer);
