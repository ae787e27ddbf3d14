use axum::body::Body;
use axum::http::Request;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn unknown_routes_and_methods_are_problem_json() {
    let app = TestApp::new().await;
    let body = app.get("/v1/nothing-here").await.problem(404);
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
    let app = TestApp::new().await;
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
    let app = TestApp::new().await;
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
    let app = TestApp::new().await;
    let w = app.world().await;
    let routes = [
        ("POST", "/v2/control-planes".to_string()),
        (
            "POST",
            format!("/v2/control-planes/{}/data-plane-tokens", w.cp),
        ),
        ("POST", "/v1/realms".to_string()),
        ("PATCH", w.realm_path()),
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
        let answer = app.get(path).await;
        assert!(answer.status.as_u16() < 500, "{path} → {}", answer.status);
    }
}

#[tokio::test]
async fn health_and_metrics_need_no_token() {
    let app = TestApp::new().await;
    let health = app.call("GET", "/health", None, None).await.ok(200);
    assert_eq!(health, json!({"status": "ok"}));
    app.get("/v1/realms").await.ok(200);
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
    let app = TestApp::new().await;
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

/// A body stream that sends `first` and then nothing more, without ending.
fn stalled_body(first: &'static str) -> Body {
    struct Stall(Option<&'static str>);
    impl futures_core::Stream for Stall {
        type Item = Result<String, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            match self.0.take() {
                Some(chunk) => std::task::Poll::Ready(Some(Ok(chunk.to_string()))),
                None => std::task::Poll::Pending,
            }
        }
    }
    Body::from_stream(Stall(Some(first)))
}

/// A client that starts a body and stalls gets a 408 problem after the body timeout instead of
/// holding the request (and its connection) open for ever. Tokio's clock is paused (once the
/// data is set up over real connections), so the 30 s pass at once.
#[tokio::test]
async fn a_body_that_stalls_is_408_not_a_hang() {
    let app = TestApp::new().await;
    let w = app.world().await;
    // The token is known (cached) before the clock stops.
    app.look_up(&w).await.ok(201);
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let request = Request::builder()
        .method("POST")
        .uri("/v1/realms")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(stalled_body("{\"na"))
        .unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(120), app.send(request))
        .await
        .expect("the admin API answered a stalled body");
    let body = answer.problem(408);
    assert_eq!(body["instance"], "/v1/realms");
    assert_eq!(
        started.elapsed().as_secs(),
        realm_service::api::BODY_READ_TIMEOUT.as_secs()
    );

    let request = Request::builder()
        .method("POST")
        .uri(format!("/{}/v0/authenticate", w.realm))
        .header("authorization", format!("Bearer {}", w.token))
        .body(stalled_body("{\"secret\": \""))
        .unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(120), app.send(request))
        .await
        .expect("authenticate answered a stalled body");
    answer.problem(408);
    assert_eq!(
        app.metric("realm_service_authenticate_total{result=\"bad_request\"}")
            .await,
        1
    );
    // Nothing was created by the stalled request. (With the clock running again: on
    // PostgreSQL, a paused clock jumps ahead while the query waits on the socket, and the
    // database's own timeouts fire.)
    tokio::time::resume();
    let realms = app.get("/v1/realms").await.ok(200);
    assert_eq!(realms["data"].as_array().unwrap().len(), 1);
}

/// Every error answer the service gives is `application/problem+json`, so the document must say
/// so; and every route that reads a JSON body documents the 408/413/415 it can answer.
#[tokio::test]
async fn the_openapi_document_describes_error_answers_as_problem_json() {
    let app = TestApp::new().await;
    let document = app.call("GET", "/openapi.json", None, None).await.ok(200);
    let mut body_routes = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            for (status, response) in responses {
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status} has no description"
                );
                let content = response["content"].as_object();
                for (media_type, media) in content.into_iter().flatten() {
                    let is_problem = media["schema"]["$ref"] == "#/components/schemas/Problem";
                    assert_eq!(
                        is_problem,
                        media_type == "application/problem+json",
                        "{method} {path} {status}: {media_type}"
                    );
                }
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        response["content"]["application/problem+json"].is_object(),
                        "{method} {path} {status} is not documented as problem+json"
                    );
                }
            }
            if operation.get("requestBody").is_some() {
                body_routes += 1;
                let mut expected = vec!["400", "408", "413"];
                if path != "/{realmId}/v0/authenticate" {
                    expected.push("415");
                }
                for status in expected {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} does not document {status}"
                    );
                }
            }
        }
    }
    assert_eq!(body_routes, 10);

    // What the document says is what a client gets.
    let cp = app.control_plane("cp").await;
    let realm = app.realm(json!({"name": "r"})).await;
    let consumer = app.consumer(&realm, "u").await;
    for (method, path) in [
        ("POST", "/v2/control-planes".to_string()),
        ("POST", format!("/v2/control-planes/{cp}/data-plane-tokens")),
        ("POST", "/v1/realms".to_string()),
        ("PATCH", format!("/v1/realms/{realm}")),
        ("POST", format!("/v1/realms/{realm}/consumers")),
        ("PATCH", format!("/v1/realms/{realm}/consumers/{consumer}")),
        (
            "POST",
            format!("/v1/realms/{realm}/consumers/{consumer}/move"),
        ),
        (
            "POST",
            format!("/v1/realms/{realm}/consumers/{consumer}/keys"),
        ),
    ] {
        app.admin_raw(method, &path, "text/plain", "{}")
            .await
            .problem(415);
        let big = format!("{{\"name\": \"{}\"}}", "x".repeat(1024 * 1024));
        app.admin_raw(method, &path, "application/json", &big)
            .await
            .problem(413);
    }
}

/// The limits `/openapi.json` states for request fields are the ones the service enforces: the
/// documented boundary is accepted, one past it is a 400 naming the field.
#[tokio::test]
async fn documented_request_limits_are_the_enforced_ones() {
    let app = TestApp::new().await;
    let document = app.call("GET", "/openapi.json", None, None).await.ok(200);
    let schemas = &document["components"]["schemas"];
    let number = |schema: &str, field: &str, limit: &str| {
        schemas[schema]["properties"][field][limit]
            .as_i64()
            .unwrap_or_else(|| panic!("{schema}.{field} has no {limit}"))
    };

    // Realm ttl / negative_ttl.
    for field in ["ttl", "negative_ttl"] {
        let (min, max) = (
            number("CreateRealm", field, "minimum"),
            number("CreateRealm", field, "maximum"),
        );
        assert_eq!((min, max), (5, 525_600), "{field}");
        for ok in [min, max] {
            app.post("/v1/realms", json!({"name": "r", field: ok}))
                .await
                .ok(201);
        }
        for bad in [min - 1, max + 1] {
            app.post("/v1/realms", json!({"name": "r", field: bad}))
                .await
                .invalid(field);
        }
        assert_eq!(number("UpdateRealm", field, "minimum"), min);
        assert_eq!(number("UpdateRealm", field, "maximum"), max);
    }

    // Names: maxLength characters (not bytes), and not only whitespace.
    let max = number("CreateRealm", "name", "maxLength") as usize;
    let at_max = "é".repeat(max);
    app.post("/v1/realms", json!({"name": at_max}))
        .await
        .ok(201);
    app.post("/v1/realms", json!({"name": format!("{at_max}é")}))
        .await
        .invalid("name");
    let pattern = schemas["CreateRealm"]["properties"]["name"]["pattern"]
        .as_str()
        .unwrap();
    assert_eq!(pattern, realm_service::schema::not_blank_pattern());
    for blank in [" ", "\t\n", "\u{3000}\u{00A0}"] {
        app.post("/v1/realms", json!({"name": blank}))
            .await
            .invalid("name");
    }
    // Characters outside the whitespace class are a name, whatever other engines call them.
    app.post("/v1/realms", json!({"name": "\u{1c}"}))
        .await
        .ok(201);

    // Tags: at most maxItems, each within the item's maxLength.
    let realm = app.realm(json!({"name": "r"})).await;
    let tags = &schemas["CreateConsumer"]["properties"]["tags"];
    let max_items = tags["maxItems"].as_u64().unwrap() as usize;
    let max_tag = tags["items"]["maxLength"].as_u64().unwrap() as usize;
    let path = format!("/v1/realms/{realm}/consumers");
    let many: Vec<String> = (0..max_items).map(|i| format!("t{i}")).collect();
    app.post(&path, json!({"username": "a", "tags": many}))
        .await
        .ok(201);
    let too_many: Vec<String> = (0..=max_items).map(|i| format!("t{i}")).collect();
    app.post(&path, json!({"username": "b", "tags": too_many}))
        .await
        .invalid("tags");
    app.post(
        &path,
        json!({"username": "c", "tags": ["x".repeat(max_tag + 1)]}),
    )
    .await
    .invalid("tags[0]");
    app.post(
        &path,
        json!({"username": "d", "tags": ["x".repeat(max_tag)]}),
    )
    .await
    .ok(201);
}

/// serde builds a struct from a JSON array of its fields in order; the API takes objects only,
/// so such a body is a 400 on every route and creates nothing.
#[tokio::test]
async fn a_json_array_is_not_a_body() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let realms_before = app.get("/v1/realms").await.ok(200)["data"]
        .as_array()
        .unwrap()
        .len();
    for (method, path, body) in [
        ("POST", "/v2/control-planes".to_string(), r#"["cp"]"#),
        (
            "POST",
            format!("/v2/control-planes/{}/data-plane-tokens", w.cp),
            r#"["dp"]"#,
        ),
        (
            "POST",
            "/v1/realms".to_string(),
            r#"["prod", null, true, 30, 30, ["g"]]"#,
        ),
        (
            "PATCH",
            w.realm_path(),
            r#"["renamed", null, true, 30, 30, ["g"]]"#,
        ),
        (
            "POST",
            format!("/v1/realms/{}/consumers", w.realm),
            r#"["u2", null, null, [], []]"#,
        ),
        (
            "PATCH",
            format!("/v1/realms/{}/consumers/{}", w.realm, w.consumer),
            r#"["u3", null, null, [], []]"#,
        ),
        (
            "POST",
            format!("/v1/realms/{}/consumers/{}/move", w.realm, w.consumer),
            &format!(r#"["{}"]"#, w.realm),
        ),
        (
            "POST",
            format!("/v1/realms/{}/consumers/{}/keys", w.realm, w.consumer),
            r#"["legacy", "from-an-array", [], 60]"#,
        ),
    ] {
        let body = app
            .admin_raw(method, &path, "application/json", body)
            .await
            .invalid("body");
        assert_eq!(
            body["invalid_parameters"][0]["rule"], "type",
            "{method} {path}"
        );
    }
    let request = Request::builder()
        .method("POST")
        .uri(format!("/{}/v0/authenticate", w.realm))
        .header("authorization", format!("Bearer {}", w.token))
        .body(Body::from(format!(r#"["{}"]"#, w.secret)))
        .unwrap();
    app.send(request).await.invalid("body");
    // Nothing changed: the same realms, and the realm and consumer kept their names.
    let realms = app.get("/v1/realms").await.ok(200);
    assert_eq!(realms["data"].as_array().unwrap().len(), realms_before);
    assert_eq!(realms["data"][0]["name"], "prod");
    assert_eq!(realms["data"][0]["allow_all_control_planes"], false);
    let consumers = app
        .get(&format!("/v1/realms/{}/consumers", w.realm))
        .await
        .ok(200);
    assert_eq!(consumers["data"].as_array().unwrap().len(), 1);
    assert_eq!(consumers["data"][0]["username"], "Ariel");
    app.authenticate(&w.realm, &w.token, "from-an-array")
        .await
        .problem(404);
}

/// `/openapi.json` declares ids as `format: uuid` (the hyphenated form); the simple, braced and
/// URN spellings that the `uuid` crate would also read are a 400 naming the field, in a path, in
/// a body, and at authenticate. Upper-case hex is the same UUID.
#[tokio::test]
async fn ids_in_other_uuid_spellings_are_400() {
    let app = TestApp::new().await;
    let w = app.world().await;
    let spellings = |id: &str| {
        [
            id.replace('-', ""),
            format!("%7B{id}%7D"),
            format!("urn:uuid:{id}"),
        ]
    };
    for other in spellings(&w.realm) {
        app.get(&format!("/v1/realms/{other}"))
            .await
            .invalid("realmId");
        app.call(
            "POST",
            &format!("/{other}/v0/authenticate"),
            Some(&w.token),
            Some(json!({"secret": w.secret})),
        )
        .await
        .invalid("realmId");
    }
    for other in spellings(&w.consumer) {
        app.get(&format!("/v1/realms/{}/consumers/{other}", w.realm))
            .await
            .invalid("consumerId");
    }
    let target = app.realm(json!({"name": "target"})).await;
    for other in [target.replace('-', ""), format!("{{{target}}}")] {
        app.post(
            &format!("/v1/realms/{}/consumers/{}/move", w.realm, w.consumer),
            json!({"target_realm_id": other}),
        )
        .await
        .invalid("target_realm_id");
    }
    let cp = w.cp.replace('-', "");
    app.post(
        "/v1/realms",
        json!({"name": "r", "allowed_control_planes": [w.cp, cp]}),
    )
    .await
    .invalid("allowed_control_planes[1]");

    // The hyphenated form, in either case, works everywhere.
    let upper = w.realm.to_uppercase();
    let realm = app.get(&format!("/v1/realms/{upper}")).await.ok(200);
    assert_eq!(realm["id"], w.realm.as_str());
    app.authenticate(&upper, &w.token, &w.secret).await.ok(201);
    let created = app
        .post(
            "/v1/realms",
            json!({"name": "r", "allowed_control_planes": [w.cp.to_uppercase()]}),
        )
        .await
        .ok(201);
    assert_eq!(created["allowed_control_planes"], json!([w.cp]));
    app.post(
        &format!("/v1/realms/{}/consumers/{}/move", w.realm, w.consumer),
        json!({"target_realm_id": target.to_uppercase()}),
    )
    .await
    .ok(201);
}
