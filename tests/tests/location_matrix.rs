//! Kong's key location matrix: for every combination of `key_in_header`, `key_in_query` and
//! `key_in_body`, a key sent in each location is used if and only if that location is enabled.

use keyrealm_tests::fixtures::kong::{self, BOB_ID, BOB_KEY};
use keyrealm_tests::{
    gateway_test, http_client, Checks, EchoUpstream, GatewayKind, GatewaySpec, Reply,
};
use serde_json::json;

async fn key_location_matrix(kind: GatewayKind) {
    let echo = EchoUpstream::start().await.expect("echo upstream");
    let mut spec = GatewaySpec::new(echo.addr());
    let mut combos = Vec::new();
    for in_header in [false, true] {
        for in_query in [false, true] {
            for in_body in [false, true] {
                let listener = spec.listener(kong::config(json!({
                    "key_in_header": in_header,
                    "key_in_query": in_query,
                    "key_in_body": in_body,
                })));
                combos.push((listener, in_header, in_query, in_body));
            }
        }
    }
    let gateway = kind.start(&spec).await.expect("gateway");
    let http = http_client();
    let mut c = Checks::new();
    for (listener, in_header, in_query, in_body) in combos {
        let flags = format!("header={in_header} query={in_query} body={in_body}");
        let attempts = [
            (
                "header",
                in_header,
                http.post(gateway.url(listener, "/request"))
                    .header("apikey", BOB_KEY),
            ),
            (
                "query",
                in_query,
                http.post(gateway.url(listener, "/request?apikey=kong")),
            ),
            (
                "form body",
                in_body,
                http.post(gateway.url(listener, "/request"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("apikey={BOB_KEY}")),
            ),
            (
                "json body",
                in_body,
                http.post(gateway.url(listener, "/request"))
                    .header("content-type", "application/json")
                    .body(json!({ "apikey": BOB_KEY }).to_string()),
            ),
        ];
        for (location, enabled, request) in attempts {
            let case = format!("[{flags}] key in {location}");
            let r = Reply::send(&case, request).await;
            if enabled {
                c.status(&format!("{case} → 200"), &r, 200);
                c.eq(
                    &format!("{case}: X-Consumer-ID"),
                    r.upstream().header("x-consumer-id"),
                    Some(BOB_ID.to_string()),
                );
            } else {
                c.error(
                    &format!("{case} → 401 (location disabled)"),
                    &r,
                    401,
                    "No API key found in request",
                );
            }
        }
    }
    c.finish();
}

gateway_test!(key_location_matrix);
