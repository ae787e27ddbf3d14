//! The harness itself: a gateway without the filter proxies to the echo upstream, and the echo
//! upstream describes what it received (method, path, arguments and headers, repeated ones as
//! lists, the body, the raw query). Runs without the built filter.

use keyrealm_tests::{
    gateway_test, http_client, Checks, EchoUpstream, GatewayKind, GatewaySpec, Reply,
};
use serde_json::json;

async fn harness_proxies_to_echo(kind: GatewayKind) {
    let echo = EchoUpstream::start().await.expect("echo upstream");
    let mut spec = GatewaySpec::new(echo.addr());
    let plain = spec.plain_listener();
    let gateway = kind.start(&spec).await.expect("gateway");
    let http = http_client();
    let mut c = Checks::new();
    let r = Reply::send(
        "echo through the gateway",
        http.post(gateway.url(plain, "/anything/x?b=2&a=1&a=3&e=%20"))
            .header("x-one", "1")
            .header("x-two", "a")
            .header("x-two", "b")
            .body("hello"),
    )
    .await;
    c.status("plain listener → echo upstream 200", &r, 200);
    let seen = r.json();
    c.eq("method", seen["method"].clone(), json!("POST"));
    c.eq("path", seen["path"].clone(), json!("/anything/x"));
    c.eq(
        "raw_query",
        seen["raw_query"].clone(),
        json!("b=2&a=1&a=3&e=%20"),
    );
    c.eq(
        "args",
        seen["args"].clone(),
        json!({"b": "2", "a": ["1", "3"], "e": " "}),
    );
    c.eq("a header", seen["headers"]["x-one"].clone(), json!("1"));
    c.eq(
        "a repeated header",
        seen["headers"]["x-two"].clone(),
        json!(["a", "b"]),
    );
    c.eq("body", seen["body"].clone(), json!("hello"));
    c.check(
        "url",
        seen["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/anything/x?b=2&a=1&a=3&e=%20")),
        || format!("{}", seen["url"]),
    );
    c.finish();
}

gateway_test!(harness_proxies_to_echo);
