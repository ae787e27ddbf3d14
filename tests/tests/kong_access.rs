//! Kong's key-auth access spec (`spec/03-plugins/09-key-auth/02-access_spec.lua`), case by case,
//! against the real gateway: preflight, missing and empty keys, keys in query/header/body,
//! duplicates, `api_key` vs `api-key`, consumer headers, hide_credentials per location (query
//! order and encoding kept), anonymous by id / by username / missing, hashed keys, and spoofed
//! consumer headers. One gateway, one listener per plugin configuration of Kong's spec.

use keyrealm_tests::fixtures::kong::{self, *};
use keyrealm_tests::fixtures::sha256_key;
use keyrealm_tests::{
    gateway_test, http_client, multipart, Checks, EchoUpstream, GatewayKind, GatewaySpec, Reply,
};
use reqwest::Method;
use serde_json::{json, Value};

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// A body carrying `fields` in `content_type` (form, JSON or multipart); returns the content
/// type header to send (multipart gets its boundary) and the body.
fn body_of(content_type: &str, fields: &[(&str, &str)]) -> (String, String) {
    match content_type {
        FORM => (
            FORM.to_string(),
            fields
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&"),
        ),
        JSON => {
            let map: serde_json::Map<String, Value> = fields
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect();
            (JSON.to_string(), Value::Object(map).to_string())
        }
        _ => multipart(fields),
    }
}

/// Which fields the upstream got in a body of `content_type`.
fn upstream_body_fields(content_type: &str, body: &str) -> Vec<(String, String)> {
    match content_type {
        FORM => form_urlencoded::parse(body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        JSON => match serde_json::from_str::<Value>(body) {
            Ok(Value::Object(map)) => map
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
                .collect(),
            _ => Vec::new(),
        },
        _ => {
            // multipart: name="<field>"\r\n\r\n<value>\r\n
            body.split("name=\"")
                .skip(1)
                .filter_map(|part| {
                    let (name, rest) = part.split_once('"')?;
                    let value = rest.trim_start_matches("\r\n\r\n").split("\r\n").next()?;
                    Some((name.to_string(), value.to_string()))
                })
                .collect()
        }
    }
}

async fn kong_access_spec(kind: GatewayKind) {
    let echo = EchoUpstream::start().await.expect("echo upstream");
    let mut spec = GatewaySpec::new(echo.addr());
    // Kong's routes 1-10, as listeners (hide_credentials is explicit where Kong relied on its
    // old default of false).
    let plain = spec.listener(kong::config(json!({"hide_credentials": false})));
    let hide = spec.listener(kong::config(json!({"hide_credentials": true})));
    let anon_id = spec.listener(kong::config(json!({"anonymous": NOBODY_ID})));
    let anon_missing = spec.listener(kong::config(
        json!({"anonymous": "00000000-0000-4000-8000-00000000dead"}),
    ));
    let body = spec.listener(kong::config(
        json!({"key_in_body": true, "hide_credentials": false}),
    ));
    let body_hide = spec.listener(kong::config(
        json!({"key_in_body": true, "hide_credentials": true}),
    ));
    let no_preflight = spec.listener(kong::config(json!({"run_on_preflight": false})));
    let underscore = spec.listener(kong::config(json!({"key_names": ["api_key"]})));
    let dash = spec.listener(kong::config(json!({"key_names": ["api-key"]})));
    let anon_username = spec.listener(kong::config(json!({"anonymous": NOBODY_USERNAME})));
    let named_realm = spec.listener(kong::config(json!({"realm": "kong"})));
    let two_names = spec.listener(kong::config(json!({"key_names": ["apikey", "token"]})));
    let gateway = kind.start(&spec).await.expect("gateway");
    let http = http_client();
    let mut c = Checks::new();
    let get = |listener: usize, path: &str| http.get(gateway.url(listener, path));

    // --- Unauthorized
    let r = Reply::send(
        "OPTIONS, run_on_preflight=false",
        http.request(Method::OPTIONS, gateway.url(no_preflight, "/status/200")),
    )
    .await;
    c.status(
        "OPTIONS without key passes when run_on_preflight is false",
        &r,
        200,
    );
    let r = Reply::send(
        "OPTIONS, run_on_preflight=true",
        http.request(Method::OPTIONS, gateway.url(plain, "/status/200")),
    )
    .await;
    c.error(
        "OPTIONS without key is refused when run_on_preflight is true",
        &r,
        401,
        "No API key found in request",
    );
    let r = Reply::send("no key", get(plain, "/status/200")).await;
    c.error(
        "missing credentials",
        &r,
        401,
        "No API key found in request",
    );
    c.eq(
        "WWW-Authenticate with no realm configured",
        r.header("www-authenticate"),
        Some("Key"),
    );
    let r = Reply::send(
        "no key, with x-request-id",
        get(plain, "/status/200").header("x-request-id", "e2e-request-7"),
    )
    .await;
    c.error(
        "missing credentials (x-request-id)",
        &r,
        401,
        "No API key found in request",
    );
    c.eq(
        "the error body carries the request's x-request-id",
        r.json()["request_id"].as_str().map(str::to_string),
        Some("e2e-request-7".to_string()),
    );
    let r = Reply::send("no key, realm=kong", get(named_realm, "/status/200")).await;
    c.error(
        "missing credentials (realm set)",
        &r,
        401,
        "No API key found in request",
    );
    c.eq(
        "WWW-Authenticate with realm `kong`",
        r.header("www-authenticate"),
        Some("Key realm=\"kong\""),
    );
    let r = Reply::send(
        "empty header",
        get(plain, "/status/200").header("apikey", ""),
    )
    .await;
    c.error("empty key header", &r, 401, "No API key found in request");
    let r = Reply::send("?apikey", get(plain, "/status/200?apikey")).await;
    c.error(
        "key name without value in the query",
        &r,
        401,
        "No API key found in request",
    );
    let r = Reply::send("?apikey=", get(plain, "/status/200?apikey=")).await;
    c.error(
        "empty key in the query",
        &r,
        401,
        "No API key found in request",
    );

    // --- key in query string
    let r = Reply::send("?apikey=kong", get(plain, "/request?apikey=kong")).await;
    c.status("valid key in query", &r, 200);
    let r = Reply::send("?apikey=123", get(plain, "/status/200?apikey=123")).await;
    c.error("invalid key in query", &r, 401, "Unauthorized");
    let r = Reply::send(
        "dup query",
        get(plain, "/status/200?apikey=kong&apikey=kong"),
    )
    .await;
    c.error(
        "duplicated key in query",
        &r,
        401,
        "Duplicate API key found",
    );
    let r = Reply::send("apikey[]", get(plain, "/status/200?apikey[]=kong")).await;
    c.error(
        "apikey[] is not apikey (query)",
        &r,
        401,
        "No API key found in request",
    );

    // --- key in request body
    for content_type in [FORM, JSON, "multipart/form-data"] {
        let post = |listener: usize, fields: &[(&str, &str)]| {
            let (ct, b) = body_of(content_type, fields);
            http.post(gateway.url(listener, "/request"))
                .header("content-type", ct)
                .body(b)
        };
        let r = Reply::send("body key", post(body, &[("apikey", BOB_KEY)])).await;
        c.status(&format!("[{content_type}] valid key in body"), &r, 200);
        let r = Reply::send("body bad key", post(body, &[("apikey", "123")])).await;
        c.error(
            &format!("[{content_type}] invalid key in body"),
            &r,
            401,
            "Unauthorized",
        );
        let r = Reply::send(
            "body key on a listener without key_in_body",
            post(plain, &[("apikey", BOB_KEY)]),
        )
        .await;
        c.error(
            &format!("[{content_type}] key in body ignored when key_in_body is false"),
            &r,
            401,
            "No API key found in request",
        );
    }
    let post_raw = |listener: usize, content_type: &str, b: &str| {
        http.post(gateway.url(listener, "/status/200"))
            .header("content-type", content_type)
            .body(b.to_string())
    };
    let r = Reply::send(
        "json dup",
        post_raw(body, JSON, r#"{"apikey":["kong","kong"]}"#),
    )
    .await;
    c.error(
        "[json] duplicated key (array)",
        &r,
        401,
        "Duplicate API key found",
    );
    let r = Reply::send(
        "json object",
        post_raw(body, JSON, r#"{"apikey":{"a":"kong"}}"#),
    )
    .await;
    c.error(
        "[json] key given as an object",
        &r,
        401,
        "Duplicate API key found",
    );
    let r = Reply::send("json number", post_raw(body, JSON, r#"{"apikey":123}"#)).await;
    c.error(
        "[json] non-string key is ignored",
        &r,
        401,
        "No API key found in request",
    );
    let r = Reply::send(
        "json malformed",
        post_raw(body, JSON, r#"{"apikey":"kong""#),
    )
    .await;
    c.error(
        "[json] malformed body",
        &r,
        401,
        "No API key found in request",
    );
    let r = Reply::send("form dup", post_raw(body, FORM, "apikey=kong&apikey=kong")).await;
    c.error("[form] duplicated key", &r, 401, "Duplicate API key found");
    let r = Reply::send(
        "form apikey[]",
        post_raw(body, FORM, "apikey[]=kong&apikey[]=kong"),
    )
    .await;
    c.error(
        "[form] apikey[] is not apikey",
        &r,
        401,
        "No API key found in request",
    );
    let r = Reply::send(
        "form apikey[1]",
        post_raw(body, FORM, "apikey[1]=kong&apikey[1]=kong"),
    )
    .await;
    c.error(
        "[form] apikey[1] is not apikey",
        &r,
        401,
        "No API key found in request",
    );
    let (mp_type, mp_body) = multipart(&[("apikey", BOB_KEY), ("apikey", BOB_KEY)]);
    let r = Reply::send("multipart dup", post_raw(body, &mp_type, &mp_body)).await;
    c.error(
        "[multipart] duplicated key",
        &r,
        401,
        "Duplicate API key found",
    );
    let r = Reply::send(
        "text/plain",
        post_raw(body_hide, "text/plain", "apikey=kong"),
    )
    .await;
    c.error(
        "key_in_body with an unsupported content type",
        &r,
        401,
        "No API key found in request",
    );

    // --- key in headers
    let r = Reply::send(
        "header key",
        get(plain, "/request").header("apikey", BOB_KEY),
    )
    .await;
    c.status("valid key in header", &r, 200);
    let r = Reply::send(
        "header bad key",
        get(plain, "/status/200").header("apikey", "123"),
    )
    .await;
    c.error("invalid key in header", &r, 401, "Unauthorized");
    let r = Reply::send(
        "two apikey headers",
        get(plain, "/status/200")
            .header("apikey", BOB_KEY)
            .header("apikey", BOB_KEY),
    )
    .await;
    c.error("duplicated key header", &r, 401, "Duplicate API key found");
    let r = Reply::send(
        "Apikey header",
        get(plain, "/request").header("ApiKey", BOB_KEY),
    )
    .await;
    c.status("header names match case-insensitively", &r, 200);

    // --- underscores or hyphens in key headers
    for (listener, configured) in [(underscore, "api_key"), (dash, "api-key")] {
        for sent in ["api_key", "api-key"] {
            let r = Reply::send("header", get(listener, "/request").header(sent, BOB_KEY)).await;
            c.status(
                &format!("key_names [{configured}], valid key in header `{sent}`"),
                &r,
                200,
            );
            let r = Reply::send("header", get(listener, "/status/200").header(sent, "123")).await;
            c.error(
                &format!("key_names [{configured}], invalid key in header `{sent}`"),
                &r,
                401,
                "Unauthorized",
            );
        }
    }
    let r = Reply::send("?api_key", get(underscore, "/request?api_key=kong")).await;
    c.status("key_names [api_key], query `api_key`", &r, 200);
    let r = Reply::send("?api-key", get(underscore, "/request?api-key=kong")).await;
    c.error(
        "key_names [api_key], query `api-key` does not match (query names are exact)",
        &r,
        401,
        "No API key found in request",
    );

    // --- several key names: the first location that carries a name decides, no fall-back
    let r = Reply::send("second name", get(two_names, "/request?token=kong")).await;
    c.status("key found under the second key name", &r, 200);
    let r = Reply::send(
        "wrong first name",
        get(two_names, "/request?token=kong").header("apikey", "wrong"),
    )
    .await;
    c.error(
        "a wrong key under the first name does not fall back to the second",
        &r,
        401,
        "Unauthorized",
    );
    let r = Reply::send(
        "valueless first name",
        get(two_names, "/request?apikey&token=kong"),
    )
    .await;
    c.status(
        "a valueless first name is ignored, the next name is tried",
        &r,
        200,
    );
    let r = Reply::send(
        "header before query",
        get(plain, "/request?apikey=wrong").header("apikey", BOB_KEY),
    )
    .await;
    c.status("the header is looked at before the query", &r, 200);

    // --- hashed keys in the configuration
    let r = Reply::send(
        "hashed key",
        get(plain, "/request").header("apikey", BOB_HASHED_KEY),
    )
    .await;
    c.status("a key configured as sha256: authenticates", &r, 200);
    c.eq(
        "the hashed credential's id reaches upstream",
        r.upstream().header("x-credential-identifier"),
        Some(BOB_HASHED_CREDENTIAL_ID.to_string()),
    );
    let r = Reply::send(
        "the hash itself",
        get(plain, "/request").header("apikey", sha256_key(BOB_HASHED_KEY)),
    )
    .await;
    c.error(
        "the sha256: form itself is not a key",
        &r,
        401,
        "Unauthorized",
    );

    // --- consumer headers
    let r = Reply::send("consumer headers", get(plain, "/request?apikey=kong")).await;
    c.status("consumer headers: 200", &r, 200);
    let up = r.upstream();
    c.eq(
        "X-Consumer-ID",
        up.header("x-consumer-id"),
        Some(BOB_ID.to_string()),
    );
    c.eq(
        "X-Consumer-Username",
        up.header("x-consumer-username"),
        Some("bob".to_string()),
    );
    c.eq(
        "X-Consumer-Custom-ID",
        up.header("x-consumer-custom-id"),
        Some(BOB_CUSTOM_ID.to_string()),
    );
    c.eq(
        "X-Credential-Identifier",
        up.header("x-credential-identifier"),
        Some(BOB_CREDENTIAL_ID.to_string()),
    );
    c.eq(
        "no X-Anonymous-Consumer",
        up.header("x-anonymous-consumer"),
        None,
    );
    c.eq(
        "no X-Consumer-Groups (cp consumer)",
        up.header("x-consumer-groups"),
        None,
    );

    // --- hide_credentials
    let r = Reply::send("query, hide false", get(plain, "/request?apikey=kong")).await;
    c.eq(
        "hide_credentials=false sends the query key upstream",
        r.upstream().arg("apikey"),
        Some(json!("kong")),
    );
    let r = Reply::send("query, hide true", get(hide, "/request?apikey=kong")).await;
    c.status("hide_credentials=true, key in query: 200", &r, 200);
    c.eq(
        "hide_credentials=true removes the query key",
        r.upstream().arg("apikey"),
        None,
    );
    let r = Reply::send(
        "query order",
        get(hide, "/request?c=value1&b=value2&apikey=kong&a=value3"),
    )
    .await;
    c.eq(
        "hide_credentials keeps the other arguments in order",
        r.upstream().raw_query(),
        "c=value1&b=value2&a=value3".to_string(),
    );
    let r = Reply::send(
        "query encoding",
        get(hide, "/request?apikey=kong&x=a%20b&y=%2Fp+q&z"),
    )
    .await;
    c.eq(
        "hide_credentials keeps the other arguments' encoding",
        r.upstream().raw_query(),
        "x=a%20b&y=%2Fp+q&z".to_string(),
    );
    let r = Reply::send(
        "header, hide false",
        get(plain, "/request").header("apikey", BOB_KEY),
    )
    .await;
    c.eq(
        "hide_credentials=false sends the header key upstream",
        r.upstream().header("apikey"),
        Some(BOB_KEY.to_string()),
    );
    let r = Reply::send(
        "header, hide true",
        get(hide, "/request").header("apikey", BOB_KEY),
    )
    .await;
    c.status("hide_credentials=true, key in header: 200", &r, 200);
    c.eq(
        "hide_credentials=true removes the header key",
        r.upstream().header("apikey"),
        None,
    );
    for content_type in [FORM, JSON, "multipart/form-data"] {
        let post = |listener: usize| {
            let (ct, b) = body_of(content_type, &[("apikey", BOB_KEY), ("foo", "bar")]);
            http.post(gateway.url(listener, "/request"))
                .header("content-type", ct)
                .body(b)
        };
        let r = Reply::send("body, hide false", post(body)).await;
        c.status(&format!("[{content_type}] hide false: 200"), &r, 200);
        let fields = upstream_body_fields(content_type, &r.upstream().body());
        c.check(
            &format!("[{content_type}] hide_credentials=false sends the body key upstream"),
            fields.contains(&("apikey".to_string(), BOB_KEY.to_string())),
            || format!("upstream body fields {fields:?}"),
        );
        let r = Reply::send("body, hide true", post(body_hide)).await;
        c.status(&format!("[{content_type}] hide true: 200"), &r, 200);
        let up = r.upstream();
        let fields = upstream_body_fields(content_type, &up.body());
        c.check(
            &format!("[{content_type}] hide_credentials=true removes the body key, keeps foo=bar"),
            !fields.iter().any(|(k, _)| k == "apikey")
                && fields.contains(&("foo".to_string(), "bar".to_string())),
            || format!("upstream body {:?}", up.body()),
        );
        let sent_type = content_type.to_string();
        let seen_type = up.header("content-type").unwrap_or_default();
        c.check(
            &format!("[{content_type}] hide_credentials=true preserves the body's MIME type"),
            seen_type.starts_with(&sent_type),
            || format!("upstream content-type {seen_type:?}"),
        );
    }

    // --- anonymous
    let r = Reply::send("anon, good key", get(anon_id, "/request?apikey=kong")).await;
    c.status("anonymous by id, right key: 200", &r, 200);
    c.eq(
        "anonymous by id, right key: bob",
        r.upstream().header("x-consumer-username"),
        Some("bob".to_string()),
    );
    c.eq(
        "anonymous by id, right key: not anonymous",
        r.upstream().header("x-anonymous-consumer"),
        None,
    );
    for (what, request) in [
        ("no key", get(anon_id, "/request")),
        ("wrong key", get(anon_id, "/request?apikey=wrong")),
        ("duplicate key", get(anon_id, "/request?apikey=a&apikey=b")),
        (
            "no key, anonymous by username",
            get(anon_username, "/request"),
        ),
    ] {
        let r = Reply::send(what, request).await;
        c.status(&format!("anonymous, {what}: 200"), &r, 200);
        let up = r.upstream();
        c.eq(
            &format!("anonymous, {what}: X-Anonymous-Consumer"),
            up.header("x-anonymous-consumer"),
            Some("true".to_string()),
        );
        c.eq(
            &format!("anonymous, {what}: X-Consumer-Username"),
            up.header("x-consumer-username"),
            Some(NOBODY_USERNAME.to_string()),
        );
        c.eq(
            &format!("anonymous, {what}: X-Consumer-ID"),
            up.header("x-consumer-id"),
            Some(NOBODY_ID.to_string()),
        );
        c.eq(
            &format!("anonymous, {what}: no X-Credential-Identifier"),
            up.header("x-credential-identifier"),
            None,
        );
    }
    let r = Reply::send("anonymous missing", get(anon_missing, "/request")).await;
    c.error(
        "anonymous naming no consumer → 500",
        &r,
        500,
        "anonymous consumer 00000000-0000-4000-8000-00000000dead is configured but doesn't exist",
    );
    let r = Reply::send(
        "anonymous missing, good key",
        get(anon_missing, "/request?apikey=kong"),
    )
    .await;
    c.status(
        "anonymous naming no consumer, right key still passes",
        &r,
        200,
    );

    // --- refused requests never reach the upstream, not even their headers
    let (form_type, form_body) = body_of(FORM, &[("apikey", "wrong")]);
    let (json_type, json_body) = body_of(JSON, &[("apikey", "wrong")]);
    let (mp_type, mp_body) = multipart(&[("apikey", "wrong")]);
    for (what, request) in [
        ("no key", get(plain, "/request")),
        (
            "wrong header key",
            get(plain, "/request").header("apikey", "wrong"),
        ),
        ("wrong query key", get(plain, "/request?apikey=wrong")),
        (
            "duplicate key",
            get(plain, "/request?apikey=kong&apikey=kong"),
        ),
        ("no key, anonymous missing", get(anon_missing, "/request")),
        (
            "wrong form body key",
            http.post(gateway.url(body, "/request"))
                .header("content-type", form_type)
                .body(form_body),
        ),
        (
            "wrong json body key",
            http.post(gateway.url(body, "/request"))
                .header("content-type", json_type)
                .body(json_body),
        ),
        (
            "wrong multipart body key",
            http.post(gateway.url(body, "/request"))
                .header("content-type", mp_type)
                .body(mp_body),
        ),
        (
            "body without a key",
            http.post(gateway.url(body, "/request"))
                .header("content-type", FORM)
                .body("foo=bar"),
        ),
    ] {
        let arrived = echo.requests_arrived();
        let r = Reply::send(what, request).await;
        c.check(
            &format!("refused: {what}"),
            r.status == 401 || r.status == 500,
            || format!("expected a refusal, got {}", r.summary()),
        );
        // A forwarded request may reach the upstream a moment after the client's answer.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        c.eq(
            &format!("refused, {what}: never reaches the upstream (not even its headers)"),
            echo.requests_arrived() - arrived,
            0,
        );
    }

    // --- spoofed consumer headers never reach the upstream
    let spoof = |request: reqwest::RequestBuilder| {
        request
            .header("x-consumer-id", "spoofed-id")
            .header("x-consumer-username", "spoofed-user")
            .header("x-consumer-custom-id", "spoofed-custom")
            .header("x-credential-identifier", "spoofed-credential")
            .header("x-anonymous-consumer", "true")
            .header("x-consumer-groups", "admins")
    };
    let r = Reply::send("spoof, key", spoof(get(plain, "/request?apikey=kong"))).await;
    c.status("spoofed headers with a valid key: 200", &r, 200);
    let up = r.upstream();
    c.eq(
        "spoof: X-Consumer-ID is bob's",
        up.header("x-consumer-id"),
        Some(BOB_ID.to_string()),
    );
    c.eq(
        "spoof: X-Consumer-Username is bob's",
        up.header("x-consumer-username"),
        Some("bob".to_string()),
    );
    c.eq(
        "spoof: X-Consumer-Custom-ID is bob's",
        up.header("x-consumer-custom-id"),
        Some(BOB_CUSTOM_ID.to_string()),
    );
    c.eq(
        "spoof: X-Credential-Identifier is bob's",
        up.header("x-credential-identifier"),
        Some(BOB_CREDENTIAL_ID.to_string()),
    );
    c.eq(
        "spoof: no X-Anonymous-Consumer",
        up.header("x-anonymous-consumer"),
        None,
    );
    c.eq(
        "spoof: no X-Consumer-Groups",
        up.header("x-consumer-groups"),
        None,
    );
    let r = Reply::send("spoof, anonymous", spoof(get(anon_id, "/request"))).await;
    c.status("spoofed headers as anonymous: 200", &r, 200);
    let up = r.upstream();
    c.eq(
        "spoof anon: X-Consumer-ID is no-body's",
        up.header("x-consumer-id"),
        Some(NOBODY_ID.to_string()),
    );
    c.eq(
        "spoof anon: no X-Consumer-Custom-ID",
        up.header("x-consumer-custom-id"),
        None,
    );
    c.eq(
        "spoof anon: no X-Credential-Identifier",
        up.header("x-credential-identifier"),
        None,
    );
    c.eq(
        "spoof anon: no X-Consumer-Groups",
        up.header("x-consumer-groups"),
        None,
    );
    c.eq(
        "spoof anon: X-Anonymous-Consumer is the filter's",
        up.header("x-anonymous-consumer"),
        Some("true".to_string()),
    );

    c.finish();
}

gateway_test!(kong_access_spec);
