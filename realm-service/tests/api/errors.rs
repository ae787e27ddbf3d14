use axum::body::Body;
use axum::http::Request;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn unknown_routes_and_methods_are_problem_json() {
    let app = TestApp::new();
    let body = app
        .admin("GET", "/v1/nothing-here", None)
        .await
        .problem(404);
    assert_eq!(body["instance"], "/v1/nothing-here");
    app.call("GET", "/", None, None).await.problem(404);
    let answer = app
        .admin("PUT", "/v1/realms", Some(json!({"name": "x"})))
        .await;
    answer.problem(405);
    assert!(answer.headers.get("allow").is_some());
    let answer = app
        .call(
            "GET",
            &format!("/{}/v0/authenticate", uuid::Uuid::new_v4()),
            None,
            None,
        )
        .await;
    answer.problem(405);
    assert_eq!(answer.headers["allow"], "POST");
    assert_eq!(
        app.metric("realm_service_http_requests_total{route=\"/{realmId}/v0/authenticate\",status=\"405\"}")
            .await,
        1
    );
    assert_eq!(
        app.metric("realm_service_authenticate_total{result=\"bad_request\"}")
            .await,
        0,
        "a GET is not an authenticate call"
    );
}

#[tokio::test]
async fn a_body_over_1_mib_is_413() {
    let app = TestApp::new();
    let w = app.world().await;
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(1024 * 1024 + 10));
    app.admin_raw("POST", "/v1/realms", "application/json", &big)
        .await
        .problem(413);
    let big_secret = format!("{{\"secret\": \"{}\"}}", "x".repeat(1024 * 1024 + 10));
    let request = Request::builder()
        .method("POST")
        .uri(format!("/{}/v0/authenticate", w.realm))
        .header("authorization", format!("Bearer {}", w.token))
        .header("content-type", "application/json")
        .body(Body::from(big_secret))
        .unwrap();
    app.send(request).await.problem(413);
    // Still one authenticate call, counted.
    assert_eq!(
        app.metric("realm_service_authenticate_total{result=\"bad_request\"}")
            .await,
        1
    );
    // Streaming, without a content-length: still refused.
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..20).map(|_| Ok("y".repeat(64 * 1024))).collect();
    let request = Request::builder()
        .method("POST")
        .uri("/v1/realms")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Body::from_stream(futures_stream(chunks)))
        .unwrap();
    app.send(request).await.problem(413);
    // Just under the limit is read (and refused for what it says, not for its size).
    let under = format!("{{\"name\": \"{}\"}}", "x".repeat(1000 * 1000));
    app.admin_raw("POST", "/v1/realms", "application/json", &under)
        .await
        .invalid("name");
}

fn futures_stream(
    items: Vec<Result<String, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<String, std::io::Error>> {
    tokio_stream_iter(items)
}

/// A minimal stream over a vector (no extra crates).
fn tokio_stream_iter<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T: Unpin> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused() {
    let app = TestApp::new();
    app.admin_raw("POST", "/v1/realms", "text/plain", "{\"name\":\"x\"}")
        .await
        .problem(415);
    app.admin_raw(
        "POST",
        "/v1/realms",
        "application/json; charset=utf-8",
        "{\"name\":\"x\"}",
    )
    .await
    .ok(201);
    app.admin_raw("POST", "/v1/realms", "application/json", "name=x")
        .await
        .invalid("body");
    app.admin_raw(
        "POST",
        "/v1/realms",
        "application/json",
        "{\"name\":\"x\"} {}",
    )
    .await
    .invalid("body");
    app.admin_raw("POST", "/v1/realms", "application/json", "\u{0}\u{1}")
        .await
        .invalid("body");
}

/// Odd inputs on every body-taking route never make the service answer 5xx.
#[tokio::test]
async fn no_odd_input_causes_a_server_error() {
    let app = TestApp::new();
    let w = app.world().await;
    let routes = [
        ("POST", "/v2/control-planes".to_string()),
        (
            "POST",
            format!("/v2/control-planes/{}/data-plane-tokens", w.cp),
        ),
        ("POST", "/v1/realms".to_string()),
        ("PATCH", format!("/v1/realms/{}", w.realm)),
        ("POST", format!("/v1/realms/{}/consumers", w.realm)),
        (
            "PATCH",
            format!("/v1/realms/{}/consumers/{}", w.realm, w.consumer),
        ),
        (
            "POST",
            format!("/v1/realms/{}/consumers/{}/move", w.realm, w.consumer),
        ),
        (
            "POST",
            format!("/v1/realms/{}/consumers/{}/keys", w.realm, w.consumer),
        ),
    ];
    let bodies = [
        "",
        "null",
        "true",
        "0",
        "\"s\"",
        "[]",
        "[{}]",
        "{",
        "}",
        "{\"a\":",
        "{}",
        "{\"name\":null}",
        "{\"name\":\"\\ud800\"}",
        "{\"username\":[\"a\"]}",
        "{\"ttl\":1e309}",
        "{\"ttl\":99999999999999999999}",
        "{\"type\":\"new\",\"ttl\":9223372036854775807}",
        "{\"target_realm_id\":\"00000000-0000-0000-0000-000000000000\"}",
        "{\"allowed_control_planes\":\"x\"}",
        "{\"name\":\"\u{0}\"}",
        "{\"name\":\"x\",\"name\":\"y\"}",
    ];
    for (method, path) in &routes {
        for body in bodies {
            let answer = app.admin_raw(method, path, "application/json", body).await;
            assert!(
                answer.status.is_success() || answer.status.is_client_error(),
                "{method} {path} {body:?} → {} {}",
                answer.status,
                answer.text
            );
            if answer.status.is_client_error() {
                assert_eq!(answer.content_type(), "application/problem+json");
            }
        }
    }
    for path in [
        "/v1/realms/%FF",
        "/v1/realms/%00",
        "/v1/realms/..%2F..",
        "/v1/realms?page[size]=%FF",
        "/v1/realms?page%5Bsize",
        "/v1/realms?page[after]=ffffffffffffffff",
        "/v1/realms?page[before]=0",
        "/v2/control-planes/00000000-0000-0000-0000-000000000000/data-plane-tokens/%20",
    ] {
        let answer = app.admin("GET", path, None).await;
        assert!(answer.status.as_u16() < 500, "{path} → {}", answer.status);
    }
}

#[tokio::test]
async fn health_and_metrics_need_no_token() {
    let app = TestApp::new();
    let health = app.call("GET", "/health", None, None).await.ok(200);
    assert_eq!(health, json!({"status": "ok"}));
    app.admin("GET", "/v1/realms", None).await.ok(200);
    let metrics = app.call("GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.content_type().starts_with("text/plain"));
    for family in [
        "# TYPE realm_service_authenticate_total counter",
        "realm_service_authenticate_total{result=\"bad_request\"} 0",
        "# TYPE realm_service_authenticate_cache_total counter",
        "# TYPE realm_service_http_requests_total counter",
        "realm_service_http_requests_total{route=\"/v1/realms\",status=\"200\"} 1",
        "realm_service_http_requests_total{route=\"/health\",status=\"200\"} 1",
    ] {
        assert!(
            metrics.text.contains(family),
            "missing {family} in\n{}",
            metrics.text
        );
    }
}

/// Every routed path (and every method it answers) is described in /openapi.json.
#[tokio::test]
async fn every_routed_path_is_in_the_openapi_document() {
    let app = TestApp::new();
    let document = app.call("GET", "/openapi.json", None, None).await.ok(200);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    let routes = realm_service::routes();
    assert!(routes.len() >= 15);
    for (template, _) in routes {
        let described = paths
            .get(template)
            .unwrap_or_else(|| panic!("{template} is routed but not in /openapi.json"));
        // Fill the template and ask each method: whatever is not 405 is routed.
        let concrete = template
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    uuid::Uuid::nil().to_string()
                } else {
                    s.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let mut routed_methods = 0;
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let answer = app.call(method, &concrete, None, None).await;
            if answer.status != 405 {
                routed_methods += 1;
                let op = described.get(method.to_lowercase());
                assert!(
                    op.is_some(),
                    "{method} {template} is routed but not documented"
                );
                let responses = op.unwrap()["responses"].as_object().unwrap();
                assert!(
                    !responses.is_empty(),
                    "{method} {template} has no responses"
                );
            }
        }
        assert!(routed_methods > 0, "{template}");
    }
    for scheme in ["admin_token", "data_plane_token"] {
        assert!(
            document["components"]["securitySchemes"][scheme].is_object(),
            "{scheme}"
        );
    }
}
