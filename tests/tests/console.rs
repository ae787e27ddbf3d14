//! The realm console in a real browser: headless Chromium driven through chromedriver.
//!
//! - `seed_story_in_the_console`: the seed's story done entirely in the console (sign in, a control
//!   plane and its data-plane token, realm `prod` allowing it, consumer `Ariel`, a key); the
//!   secret read off the page works at real Envoy with the filter (200, Ariel's headers at the
//!   upstream) and `another_key` gets 401; the overview counts and charts the traffic; the key is
//!   checked, then revoked in the console and the identity endpoint answers 404 for it.
//! - `console_forms_errors_and_security`: each form's error path (the API's problem shown next to
//!   the field, what was typed kept), the XSS case, paging and search, a realm delete that asks
//!   first, the CSRF refusal, sign-out, and a revoked admin token's session refused.
//!
//! - `the_console_works_without_javascript`: JavaScript blocked in Chromium: forms, a key revoke
//!   and the realm delete confirmation page (with its counts) still work.
//! - `console_on_postgresql_replicas`: the console of one of two replicas on one PostgreSQL
//!   database: what it creates is seen through the other replica; its session is not (sessions
//!   live in one replica's memory: `docs/console.md`, "Behind several replicas"); an operator
//!   token revoked with `realm-service token revoke` ends its session at once.
//!
//! Every page visited is saved as a PNG under `target/console-screenshots/`. A missing Chromium,
//! chromedriver or Envoy fails the test.

#[path = "../../realm-service/tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::future::Future;
use std::time::Duration;

use anyhow::{ensure, Context};
use fantoccini::Locator;
use keyrealm_tests::browser::Browser;
use keyrealm_tests::fixtures::realm_entry;
use keyrealm_tests::{
    http_client, Checks, EchoUpstream, GatewayKind, GatewaySpec, RealmService, Reply, TOKEN_ENV,
};
use serde_json::json;

/// Runs a browser scenario on a realm service with a fresh SQLite database.
async fn scenario<F, Fut>(name: &str, body: F)
where
    F: FnOnce(RealmService, Browser) -> Fut,
    Fut: Future<Output = (Browser, anyhow::Result<()>)>,
{
    let realm = RealmService::start().await.expect("realm service");
    scenario_on(name, realm, true, body).await;
}

/// Runs a browser scenario with a time limit; on failure saves a screenshot and prints the page.
async fn scenario_on<F, Fut>(name: &str, realm: RealmService, javascript: bool, body: F)
where
    F: FnOnce(RealmService, Browser) -> Fut,
    Fut: Future<Output = (Browser, anyhow::Result<()>)>,
{
    let browser = if javascript {
        Browser::start().await
    } else {
        Browser::start_without_javascript().await
    }
    .expect("headless Chromium through chromedriver (a missing browser is a failure)");
    let outcome = tokio::time::timeout(Duration::from_secs(300), body(realm, browser)).await;
    let (browser, result) = match outcome {
        Ok(pair) => pair,
        Err(_) => panic!("{name}: did not finish within 300 s"),
    };
    if let Err(error) = &result {
        let _ = browser.screenshot(&format!("failure-{name}")).await;
        let url = browser.url().await;
        let source = browser.client.source().await.unwrap_or_default();
        eprintln!("{name} failed on {url}; page source:\n{source}");
        browser.close().await;
        panic!("{name}: {error:?}");
    }
    browser.close().await;
}

async fn sign_in(b: &Browser, base: &str, token: &str) -> anyhow::Result<()> {
    b.client.goto(&format!("{base}/console/sign-in")).await?;
    b.fill("#f-token", token).await?;
    b.click_nav("form[action='/console/sign-in'] button[type=submit]")
        .await?;
    let title = b.text("main h1").await?;
    ensure!(
        title == "Overview",
        "after sign-in: expected the overview, got {title:?}"
    );
    Ok(())
}

/// Clicks the submit button of the form whose action ends with `action`.
async fn submit(b: &Browser, action: &str) -> anyhow::Result<()> {
    b.click_nav(&format!("form[action$='{action}'] button[type=submit]"))
        .await
}

/// Clicks a button whose form asks for confirmation (JavaScript `confirm`), and accepts it.
async fn submit_confirmed(b: &Browser, action: &str) -> anyhow::Result<String> {
    let old = b.client.find(Locator::Css("html")).await?;
    b.click(&format!("form[action$='{action}'] button[type=submit]"))
        .await?;
    let question = b
        .client
        .get_alert_text()
        .await
        .context("the delete button asks for confirmation")?;
    b.client.accept_alert().await?;
    b.wait_gone(old).await?;
    Ok(question)
}

/// Checks what every console page must be, then saves its screenshot: no inline script, event
/// handler or style attribute (the Content-Security-Policy would block them), and a CSRF token
/// in every form that posts.
async fn shot(b: &Browser, name: &str) -> anyhow::Result<()> {
    let problems = b
        .client
        .execute(
            r#"var out = [];
            document.querySelectorAll("script").forEach(function (s) {
              if (!s.getAttribute("src")) out.push("inline script");
            });
            document.querySelectorAll("*").forEach(function (e) {
              for (var i = 0; i < e.attributes.length; i++) {
                var a = e.attributes[i].name.toLowerCase();
                if (a.indexOf("on") === 0) out.push("handler " + a + " on " + e.tagName);
                if (a === "style") out.push("style attribute on " + e.tagName);
              }
            });
            document.querySelectorAll("form").forEach(function (f) {
              if ((f.getAttribute("method") || "get").toLowerCase() !== "post") return;
              var c = f.querySelector("input[type=hidden][name=csrf]");
              if (!c || c.value.length < 32) out.push("a POST form without a CSRF token: " + f.getAttribute("action"));
            });
            return out;"#,
            vec![],
        )
        .await?;
    ensure!(
        problems == json!([]),
        "{name} ({}): {problems}",
        b.url().await
    );
    b.screenshot(name).await
}

async fn flash(b: &Browser) -> anyhow::Result<String> {
    b.text(".flash").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_story_in_the_console() {
    scenario("seed_story", |realm, b| async move {
        let result = seed_story(&realm, &b).await;
        (b, result)
    })
    .await;
}

async fn seed_story(realm: &RealmService, b: &Browser) -> anyhow::Result<()> {
    let base = format!("http://{}", realm.addr());

    // Signed out, the console sends the browser to the sign-in page.
    b.client.goto(&format!("{base}/console/")).await?;
    ensure!(b.path().await? == "/console/sign-in", "not sent to sign-in");
    shot(b, "01-sign-in").await?;
    sign_in(b, &base, realm.admin_token()).await?;

    // The session cookie: HttpOnly, SameSite=Strict, expiring; the token is in no cookie.
    let cookie = b.client.get_named_cookie("krc_session").await?;
    ensure!(
        cookie.http_only() == Some(true),
        "session cookie not HttpOnly"
    );
    ensure!(
        format!("{:?}", cookie.same_site()) == "Some(Strict)",
        "session cookie not SameSite=Strict: {:?}",
        cookie.same_site()
    );
    ensure!(cookie.expires().is_some(), "session cookie does not expire");
    for c in b.client.get_all_cookies().await? {
        ensure!(
            !c.value().contains(realm.admin_token()),
            "the admin token is in cookie {}",
            c.name()
        );
    }

    // A control plane and its data-plane token.
    b.client
        .goto(&format!("{base}/console/control-planes"))
        .await?;
    b.fill("#f-name", "cp").await?;
    submit(b, "/console/control-planes").await?;
    ensure!(flash(b).await? == "Control plane cp created.");
    let cp_id = b.text("dl.props dd code").await?;
    b.fill("#f-name", "edge-1").await?;
    submit(b, "/tokens").await?;
    let token = b.text("#secret").await?;
    ensure!(token.starts_with("krdp_"), "data-plane token: {token:?}");
    ensure!(
        b.text(".secret-once")
            .await?
            .contains("only time it is shown"),
        "no shown-once warning"
    );
    ensure!(!b.url().await.contains(&token), "the token is in the URL");
    shot(b, "03-data-plane-token-shown-once").await?;
    b.client
        .goto(&format!("{base}/console/control-planes"))
        .await?;
    shot(b, "02-control-planes").await?;

    // Realm prod allowing the control plane.
    b.client.goto(&format!("{base}/console/realms/new")).await?;
    b.fill("#f-name", "prod").await?;
    b.click(&format!(
        "input[name=allowed_control_planes][value='{cp_id}']"
    ))
    .await?;
    b.fill("#f-consumer_groups", "gold").await?;
    shot(b, "04-realm-new").await?;
    submit(b, "/console/realms/new").await?;
    ensure!(flash(b).await? == "Realm prod created.");
    let realm_id = b.text("#realm-id").await?;

    // Consumer Ariel.
    b.click_nav("a[href$='/consumers/new']").await?;
    b.fill("#f-username", "Ariel").await?;
    submit(b, "/consumers/new").await?;
    ensure!(flash(b).await? == "Consumer Ariel created.");
    let consumer_id = b.text("#consumer-id").await?;

    // A key (type new is the default); its secret is shown once.
    submit(b, "/keys").await?;
    let secret = b.text("#secret").await?;
    ensure!(secret.starts_with("krk_"), "key: {secret:?}");
    ensure!(!b.url().await.contains(&secret), "the key is in the URL");
    let key_id = b.text("#keys code.id").await?;
    ensure!(
        b.text(".secret-once")
            .await?
            .contains("cannot be shown again"),
        "no shown-once warning for the key"
    );
    // The key list: its type, created and expiry, never the secret.
    let row = b.text("#keys tbody tr").await?;
    ensure!(
        row.contains(&key_id) && row.contains("new") && row.contains("never"),
        "key row: {row:?}"
    );
    ensure!(
        !b.text("#keys").await?.contains(&secret),
        "the key list shows the secret"
    );
    shot(b, "07-key-shown-once").await?;
    // The copy button puts the secret on the clipboard: pasted into a field, it is the secret.
    b.click("button[data-copy=secret]").await?;
    let copied = b.text("button[data-copy=secret]").await?;
    ensure!(copied == "Copied", "the copy button says {copied:?}");
    let field = b.client.find(Locator::Css("#f-tags")).await?;
    field.click().await?;
    field.send_keys("\u{E009}v\u{E000}").await?;
    let pasted = b.value("#f-tags").await?;
    ensure!(pasted == secret, "pasted after Copy: {pasted:?}");
    b.fill("#f-tags", "").await?;
    b.client
        .goto(&format!("{base}/console/realms/{realm_id}"))
        .await?;
    shot(b, "05-realm").await?;
    b.client
        .goto(&format!(
            "{base}/console/realms/{realm_id}/consumers/{consumer_id}"
        ))
        .await?;
    ensure!(
        !b.client.source().await?.contains(&secret),
        "the key is shown again"
    );
    shot(b, "06-consumer").await?;

    // The secret read off the page works at real Envoy with the filter.
    let echo = EchoUpstream::start().await?;
    let mut spec = GatewaySpec::new(echo.addr());
    spec.listener(json!({
        "key_names": ["apikey"],
        "identity_realms": [realm_entry(&realm_id, Some("us"))],
        "realm_service": {"clusters": {"us": "realm_us"}, "token_env": TOKEN_ENV},
    }));
    spec.cluster("realm_us", realm.addr())
        .env(TOKEN_ENV, &token);
    let gateway = GatewayKind::Envoy.start(&spec).await?;
    let http = http_client();
    let mut checks = Checks::new();
    let ok = Reply::send(
        "Ariel's key",
        http.get(gateway.url(0, "/anything"))
            .header("apikey", &secret),
    )
    .await;
    checks.status("Ariel's key (read off the console) → 200", &ok, 200);
    let up = ok.upstream();
    checks.eq(
        "X-Consumer-ID at the upstream",
        up.header("x-consumer-id"),
        Some(consumer_id.clone()),
    );
    checks.eq(
        "X-Consumer-Username at the upstream",
        up.header("x-consumer-username"),
        Some("Ariel".to_string()),
    );
    checks.eq(
        "X-Credential-Identifier at the upstream",
        up.header("x-credential-identifier"),
        Some(key_id.clone()),
    );
    checks.eq(
        "X-Consumer-Groups at the upstream (the realm's group set in the console)",
        up.header("x-consumer-groups"),
        Some("gold".to_string()),
    );
    let wrong = Reply::send(
        "another_key",
        http.get(gateway.url(0, "/anything"))
            .header("apikey", "another_key"),
    )
    .await;
    checks.status("another_key → 401", &wrong, 401);
    checks.finish();
    // Two more look-ups of Ariel's key straight at the identity endpoint: answered from the
    // service's cache, so the overview has a hit ratio to chart.
    for _ in 0..2 {
        let answer = http
            .post(format!(
                "http://{}/{realm_id}/v0/authenticate",
                realm.addr()
            ))
            .bearer_auth(&token)
            .json(&json!({ "secret": secret }))
            .send()
            .await?;
        ensure!(
            answer.status().as_u16() == 201,
            "identity: {}",
            answer.status()
        );
    }

    // The overview counts it all and charts the authenticate calls from the service's metrics.
    b.client.goto(&format!("{base}/console/")).await?;
    for (id, want) in [
        ("#count-realms", "1"),
        ("#count-consumers", "1"),
        ("#count-keys", "1"),
        ("#count-control-planes", "1"),
    ] {
        let got = b.text(id).await?;
        ensure!(got == want, "{id}: {got:?}, expected {want}");
    }
    let legend = b.text(".charts").await?;
    ensure!(
        legend.contains("found 3") && legend.contains("not found 1"),
        "the chart's totals do not show the look-ups: {legend:?}"
    );
    ensure!(
        b.has("svg.chart polyline.found").await?,
        "no authenticate line in the chart"
    );
    // Ariel's key: a miss, then two hits; another_key: a miss (2 of 4).
    ensure!(
        legend.contains("hit ratio 50.0%"),
        "the cache hit ratio: {legend:?}"
    );
    ensure!(
        b.has("svg.chart polyline.hit").await?,
        "no hit-ratio line in the chart"
    );
    shot(b, "00-overview").await?;

    // Check a key: Ariel's, then an unknown one.
    b.client.goto(&format!("{base}/console/check-key")).await?;
    b.client
        .find(Locator::Css("#f-realm"))
        .await?
        .select_by_value(&realm_id)
        .await?;
    b.fill("#f-secret", &secret).await?;
    submit(b, "/console/check-key").await?;
    ensure!(b.text("#check-result h2").await? == "Valid key");
    ensure!(b.text("#result-username").await? == "Ariel");
    ensure!(b.text("#result-credential").await? == key_id);
    ensure!(
        !b.client.source().await?.contains(&secret),
        "the checked key is echoed into the page"
    );
    shot(b, "08-check-key").await?;
    b.fill("#f-secret", "another_key").await?;
    submit(b, "/console/check-key").await?;
    ensure!(b.text("#check-result h2").await? == "Unknown key");

    // Revoke the key in the console: the identity endpoint answers 404 for it.
    b.client
        .goto(&format!(
            "{base}/console/realms/{realm_id}/consumers/{consumer_id}"
        ))
        .await?;
    let question = submit_confirmed(b, "/revoke").await?;
    ensure!(
        question.contains("Revoke this key"),
        "confirm: {question:?}"
    );
    ensure!(flash(b).await? == format!("Key {key_id} revoked."));
    ensure!(!b.has("#keys").await?, "the key is still listed");
    let identity = http
        .post(format!(
            "http://{}/{realm_id}/v0/authenticate",
            realm.addr()
        ))
        .bearer_auth(&token)
        .json(&json!({ "secret": secret }))
        .send()
        .await?;
    ensure!(
        identity.status().as_u16() == 404,
        "identity endpoint after the revoke: {}",
        identity.status()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_forms_errors_and_security() {
    scenario("forms_and_security", |realm, b| async move {
        let result = forms_and_security(&realm, &b).await;
        (b, result)
    })
    .await;
}

async fn forms_and_security(realm: &RealmService, b: &Browser) -> anyhow::Result<()> {
    let base = format!("http://{}", realm.addr());
    let cp = realm.create_control_plane("cp").await?;
    let prod = realm
        .create_realm(json!({"name": "prod", "allowed_control_planes": [cp]}))
        .await?;
    let staging = realm
        .create_realm(json!({"name": "staging", "allow_all_control_planes": true}))
        .await?;
    let ariel = realm.consumer_with_key(&prod, "Ariel").await?;
    realm.consumer_with_key(&staging, "Ariel").await?;
    let bob = realm
        .create_consumer(&prod, json!({"username": "Bob", "custom_id": "crm-42"}))
        .await?;
    let bob_id = bob["id"].as_str().context("bob id")?.to_string();
    realm
        .create_key(
            &prod,
            &bob_id,
            json!({"type": "legacy", "secret": "legacy-secret-1"}),
        )
        .await?;

    // Sign-in with a wrong token: the API's 401 next to the field.
    b.client.goto(&format!("{base}/console/sign-in")).await?;
    b.fill("#f-token", "not-a-token").await?;
    submit(b, "/console/sign-in").await?;
    let error = b.text("#error-token").await?;
    ensure!(
        error.contains("unknown admin token"),
        "sign-in error: {error:?}"
    );
    shot(b, "10-sign-in-refused").await?;
    // The same authorization as the API: a data-plane token is not an admin token.
    let gateway_cp = realm.create_control_plane("gateways").await?;
    let dp_token = realm.create_data_plane_token(&gateway_cp).await?;
    b.client.goto(&format!("{base}/console/sign-in")).await?;
    b.fill("#f-token", &dp_token).await?;
    submit(b, "/console/sign-in").await?;
    ensure!(
        b.text("#error-token")
            .await?
            .contains("unknown admin token"),
        "a data-plane token signed in"
    );
    ensure!(
        b.client.get_named_cookie("krc_session").await.is_err(),
        "a session cookie after a refused sign-in"
    );
    sign_in(b, &base, realm.admin_token()).await?;

    // Every console answer carries the Content-Security-Policy, and no page has inline script.
    let cookie = b.client.get_named_cookie("krc_session").await?;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;
    for path in [
        "/console/".to_string(),
        "/console/sign-in".to_string(),
        "/console/realms".to_string(),
        "/console/realms/new".to_string(),
        format!("/console/realms/{prod}"),
        format!("/console/realms/{prod}/consumers/{}", ariel.id),
        "/console/control-planes".to_string(),
        format!("/console/control-planes/{cp}"),
        "/console/check-key".to_string(),
        "/console/realms/0b0c2b14-6f0e-4a43-9a5c-3f1e2d4c5b6a".to_string(),
        "/console/assets/console.js".to_string(),
    ] {
        let answer = plain
            .get(format!("{base}{path}"))
            .header("cookie", format!("krc_session={}", cookie.value()))
            .send()
            .await?;
        let csp = answer
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        ensure!(
            csp.contains("script-src 'self'")
                && csp.contains("default-src 'none'")
                && !csp.contains("unsafe-inline")
                && !csp.contains("unsafe-eval"),
            "{path}: CSP {csp:?}"
        );
        let status = answer.status().as_u16();
        let html = answer.text().await?;
        ensure!(
            !html.contains("<script>") && !html.contains(" onclick=") && !html.contains(" style="),
            "{path} ({status}) has inline script or style"
        );
    }

    // A duplicate username: the 409 next to the field, everything typed kept.
    b.client
        .goto(&format!("{base}/console/realms/{prod}/consumers/new"))
        .await?;
    b.fill("#f-username", "Ariel").await?;
    b.fill("#f-custom_id", "typed-custom").await?;
    b.fill("#f-type", "developer").await?;
    b.fill("#f-tags", "a, b").await?;
    submit(b, "/consumers/new").await?;
    let error = b.text("#error-username").await?;
    ensure!(
        error.contains("already exists"),
        "duplicate username: {error:?}"
    );
    for (field, typed) in [
        ("#f-username", "Ariel"),
        ("#f-custom_id", "typed-custom"),
        ("#f-type", "developer"),
        ("#f-tags", "a, b"),
    ] {
        let kept = b.value(field).await?;
        ensure!(
            kept == typed,
            "{field}: {kept:?} after the 409, typed {typed:?}"
        );
    }
    ensure!(
        b.text(".flash.bad").await?.contains("409"),
        "the banner names the 409"
    );
    shot(b, "11-consumer-duplicate-username").await?;

    // Consumer edit to a taken username: the 409 next to the field.
    b.client
        .goto(&format!(
            "{base}/console/realms/{prod}/consumers/{bob_id}/edit"
        ))
        .await?;
    ensure!(
        b.value("#f-custom_id").await? == "crm-42",
        "edit form not filled in"
    );
    b.fill("#f-username", "Ariel").await?;
    submit(b, "/edit").await?;
    ensure!(b.text("#error-username").await?.contains("already exists"));
    ensure!(b.value("#f-username").await? == "Ariel");

    // Realm create with an out-of-range ttl.
    b.client.goto(&format!("{base}/console/realms/new")).await?;
    b.fill("#f-name", "eu").await?;
    b.fill("#f-ttl", "3").await?;
    submit(b, "/console/realms/new").await?;
    let error = b.text("#error-ttl").await?;
    ensure!(error.contains("5 to 525600"), "ttl error: {error:?}");
    ensure!(b.value("#f-name").await? == "eu");
    ensure!(b.value("#f-ttl").await? == "3");
    shot(b, "12-realm-invalid-ttl").await?;

    // Realm create allowing a control plane deleted since the form was shown: the API's
    // `allowed_control_planes[0]` is shown at the picker, what was typed is kept.
    let doomed = realm.create_control_plane("doomed").await?;
    b.client.goto(&format!("{base}/console/realms/new")).await?;
    b.fill("#f-name", "eu-2").await?;
    b.fill("#f-consumer_groups", "gold, silver").await?;
    b.click(&format!(
        "input[name=allowed_control_planes][value='{doomed}']"
    ))
    .await?;
    realm
        .admin(
            reqwest::Method::DELETE,
            &format!("/v2/control-planes/{doomed}"),
            None,
            204,
        )
        .await?;
    submit(b, "/console/realms/new").await?;
    let error = b.text("#error-allowed_control_planes").await?;
    ensure!(
        error.contains(&doomed) && error.contains("does not exist"),
        "allowed_control_planes error: {error:?}"
    );
    ensure!(b.value("#f-name").await? == "eu-2");
    ensure!(b.value("#f-consumer_groups").await? == "gold, silver");

    // Realm edit with a negative_ttl that is not a number.
    b.client
        .goto(&format!("{base}/console/realms/{prod}/edit"))
        .await?;
    b.fill("#f-negative_ttl", "soon").await?;
    submit(b, "/edit").await?;
    ensure!(b.has("#error-negative_ttl").await?, "no negative_ttl error");
    ensure!(b.value("#f-negative_ttl").await? == "soon");

    // Control plane and data-plane token names out of range.
    b.client
        .goto(&format!("{base}/console/control-planes"))
        .await?;
    b.fill("#f-name", "   ").await?;
    submit(b, "/console/control-planes").await?;
    ensure!(
        b.has("#error-name").await?,
        "no error for a blank control plane name"
    );
    b.client
        .goto(&format!("{base}/console/control-planes/{cp}"))
        .await?;
    let long = "x".repeat(300);
    b.fill("#f-name", &long).await?;
    submit(b, "/tokens").await?;
    ensure!(b.text("#error-name").await?.contains("255"));
    ensure!(b.value("#f-name").await? == long);
    ensure!(!b.has("#secret").await?, "a token was shown after an error");

    // Keys: a legacy key without a secret and a ttl of 0; then a legacy secret taken in the realm.
    let consumer_page = format!("{base}/console/realms/{prod}/consumers/{}", ariel.id);
    b.client.goto(&consumer_page).await?;
    b.click("input[name=type][value=legacy]").await?;
    b.fill("#f-ttl", "0").await?;
    submit(b, "/keys").await?;
    ensure!(b.text("#error-secret").await?.contains("required"));
    ensure!(b.has("#error-ttl").await?, "no ttl error");
    ensure!(b.value("#f-ttl").await? == "0");
    shot(b, "13-key-errors").await?;
    b.click("input[name=type][value=legacy]").await?;
    b.fill("#f-secret", "legacy-secret-1").await?;
    b.fill("#f-ttl", "").await?;
    submit(b, "/keys").await?;
    ensure!(b.text("#error-secret").await?.contains("already exists"));

    // Move Ariel into staging, which has an Ariel: the 409 at the target realm.
    b.client.goto(&consumer_page).await?;
    b.client
        .find(Locator::Css("#f-target"))
        .await?
        .select_by_value(&staging)
        .await?;
    submit(b, "/move").await?;
    ensure!(b
        .text("#error-target_realm_id")
        .await?
        .contains("already exists"));

    // The XSS case: a consumer named like a script shows as text.
    let evil = "<script>alert(1)</script>";
    b.client
        .goto(&format!("{base}/console/realms/{prod}/consumers/new"))
        .await?;
    b.fill("#f-username", evil).await?;
    b.fill("#f-tags", "<b>bold</b>").await?;
    submit(b, "/consumers/new").await?;
    ensure!(
        b.text("main h1").await? == evil,
        "the name is not shown as text"
    );
    ensure!(
        b.client.get_alert_text().await.is_err(),
        "a script ran: an alert is open"
    );
    let source = b.client.source().await?;
    ensure!(
        !source.contains(evil) && source.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the name is not escaped in the page"
    );
    b.client
        .goto(&format!("{base}/console/realms/{prod}"))
        .await?;
    let names: Vec<String> = {
        let mut names = Vec::new();
        for link in b
            .client
            .find_all(Locator::Css("#consumers a.username"))
            .await?
        {
            names.push(link.text().await?);
        }
        names
    };
    ensure!(
        names.iter().any(|n| n == evil),
        "realm page names: {names:?}"
    );
    ensure!(b.client.get_alert_text().await.is_err(), "a script ran");
    shot(b, "14-xss-shown-as-text").await?;

    // Paging and search: 25 more consumers in a realm, 20 per page.
    let big = realm.create_realm(json!({"name": "big"})).await?;
    for i in 0..25 {
        realm
            .create_consumer(
                &big,
                json!({"username": format!("user-{i:02}"), "custom_id": format!("cid-{i:02}")}),
            )
            .await?;
    }
    b.client
        .goto(&format!("{base}/console/realms/{big}"))
        .await?;
    let rows = b
        .client
        .find_all(Locator::Css("#consumers tbody tr"))
        .await?;
    ensure!(rows.len() == 20, "first page: {} rows", rows.len());
    b.click_nav("nav.pager a").await?;
    let rows = b
        .client
        .find_all(Locator::Css("#consumers tbody tr"))
        .await?;
    ensure!(rows.len() == 5, "second page: {} rows", rows.len());
    ensure!(b.text("#consumers tbody tr a").await? == "user-20");
    b.fill("input[name=q]", "cid-07").await?;
    b.click_nav("form.search button").await?;
    let rows = b
        .client
        .find_all(Locator::Css("#consumers tbody tr"))
        .await?;
    ensure!(rows.len() == 1, "search by custom_id: {} rows", rows.len());
    ensure!(b.text("#consumers tbody tr a").await? == "user-07");
    ensure!(
        b.value("input[name=q]").await? == "cid-07",
        "the search is not kept"
    );
    shot(b, "15-consumer-search").await?;
    b.fill("input[name=q]", "user-19").await?;
    b.click_nav("form.search button").await?;
    let rows = b
        .client
        .find_all(Locator::Css("#consumers tbody tr"))
        .await?;
    ensure!(rows.len() == 1, "search by username: {} rows", rows.len());
    ensure!(b.text("#consumers tbody tr td:nth-child(2)").await? == "cid-19");
    b.fill("input[name=q]", "user-7").await?;
    b.click_nav("form.search button").await?;
    ensure!(
        !b.has("#consumers").await?,
        "an inexact search found a consumer"
    );
    ensure!(b.text("p.empty").await?.contains("user-7"));
    // Back to the first page from the second one.
    b.client
        .goto(&format!("{base}/console/realms/{big}"))
        .await?;
    b.click_nav("nav.pager a").await?;
    b.click_nav("nav.pager a").await?;
    let rows = b
        .client
        .find_all(Locator::Css("#consumers tbody tr"))
        .await?;
    ensure!(rows.len() == 20, "previous page: {} rows", rows.len());
    ensure!(b.text("#consumers tbody tr a").await? == "user-00");

    // The other forms succeed: edit a realm, move and delete a consumer, revoke a data-plane
    // token, delete a control plane.
    b.client
        .goto(&format!("{base}/console/realms/{big}/edit"))
        .await?;
    b.fill("#f-ttl", "30").await?;
    submit(b, "/edit").await?;
    ensure!(flash(b).await? == "Realm big saved.");
    let settings = b.text("dl.props").await?;
    ensure!(
        settings.contains("30 min (found)"),
        "realm after edit: {settings:?}"
    );
    b.client
        .goto(&format!("{base}/console/realms/{prod}/consumers/{bob_id}"))
        .await?;
    b.client
        .find(Locator::Css("#f-target"))
        .await?
        .select_by_value(&big)
        .await?;
    submit(b, "/move").await?;
    ensure!(flash(b).await? == "Consumer moved with its keys.");
    ensure!(
        b.path().await? == format!("/console/realms/{big}/consumers/{bob_id}"),
        "not on the moved consumer's page"
    );
    let question = submit_confirmed(b, &format!("{bob_id}/delete")).await?;
    ensure!(
        question.contains("Delete consumer Bob"),
        "confirm: {question:?}"
    );
    ensure!(flash(b).await? == "Consumer deleted with its keys.");
    realm
        .admin(
            reqwest::Method::GET,
            &format!("/v1/realms/{big}/consumers/{bob_id}"),
            None,
            404,
        )
        .await?;
    realm.create_data_plane_token(&cp).await?;
    b.client
        .goto(&format!("{base}/console/control-planes/{cp}"))
        .await?;
    submit_confirmed(b, "/revoke").await?;
    ensure!(flash(b).await? == "Data-plane token revoked.");
    let tokens = realm
        .admin(
            reqwest::Method::GET,
            &format!("/v2/control-planes/{cp}/data-plane-tokens"),
            None,
            200,
        )
        .await?;
    ensure!(
        tokens["data"] == json!([]),
        "tokens after the revoke: {tokens}"
    );
    let spare = realm.create_control_plane("spare").await?;
    b.client
        .goto(&format!("{base}/console/control-planes/{spare}"))
        .await?;
    submit_confirmed(b, &format!("{spare}/delete")).await?;
    ensure!(flash(b).await? == "Control plane deleted.");
    realm
        .admin(
            reqwest::Method::GET,
            &format!("/v2/control-planes/{spare}"),
            None,
            404,
        )
        .await?;

    // Deleting a realm with consumers asks first and says what goes with it.
    let cleo = realm.consumer_with_key(&staging, "Cleo").await?;
    realm
        .create_key(&staging, &cleo.id, json!({"type": "new"}))
        .await?;
    b.client
        .goto(&format!("{base}/console/realms/{staging}"))
        .await?;
    let question = submit_confirmed(b, "/delete").await?;
    ensure!(question.contains("staging"), "confirm: {question:?}");
    let summary = b.text("#delete-summary").await?;
    ensure!(
        summary.contains("2 consumers") && summary.contains("3 keys"),
        "delete summary: {summary:?}"
    );
    ensure!(
        realm
            .admin(
                reqwest::Method::GET,
                &format!("/v1/realms/{staging}"),
                None,
                200
            )
            .await
            .is_ok(),
        "the realm went before the confirmation"
    );
    shot(b, "16-realm-delete-confirm").await?;
    b.click_nav("#confirm-delete").await?;
    ensure!(flash(b).await? == "Realm deleted.");
    realm
        .admin(
            reqwest::Method::GET,
            &format!("/v1/realms/{staging}"),
            None,
            404,
        )
        .await?;

    // Check a key: an empty key is the API's 400 next to the field (the realm picked is kept);
    // a key past its ttl is "expired".
    let (_, short) = {
        let key = realm
            .create_key(&prod, &ariel.id, json!({"type": "new", "ttl": 1}))
            .await?;
        (
            key["id"].as_str().context("key id")?.to_string(),
            key["secret"].as_str().context("key secret")?.to_string(),
        )
    };
    b.client.goto(&format!("{base}/console/check-key")).await?;
    b.client
        .find(Locator::Css("#f-realm"))
        .await?
        .select_by_value(&prod)
        .await?;
    submit(b, "/console/check-key").await?;
    ensure!(
        b.has("#error-secret").await?,
        "no error next to the empty key"
    );
    ensure!(
        b.value("#f-realm").await? == prod,
        "the realm picked is lost"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    b.fill("#f-secret", &short).await?;
    submit(b, "/console/check-key").await?;
    ensure!(b.text("#check-result h2").await? == "Expired key");
    ensure!(b.text("#result-username").await? == "Ariel");
    shot(b, "19-check-key-expired").await?;

    // CSRF: a form whose token does not match the session is refused and changes nothing.
    b.client
        .goto(&format!("{base}/console/control-planes"))
        .await?;
    b.client
        .execute(
            "document.querySelector(\"form[action='/console/control-planes'] input[name=csrf]\").value = 'forged';",
            vec![],
        )
        .await?;
    b.fill("#f-name", "forged-cp").await?;
    submit(b, "/console/control-planes").await?;
    ensure!(
        b.text("main h1").await? == "Form refused",
        "CSRF not refused"
    );
    shot(b, "17-csrf-refused").await?;
    let cps = realm
        .admin(reqwest::Method::GET, "/v2/control-planes", None, 200)
        .await?;
    ensure!(
        !cps.to_string().contains("forged-cp"),
        "the forged form created a control plane"
    );

    // Sign-out ends the session on the server: the old cookie no longer works.
    b.client.goto(&format!("{base}/console/")).await?;
    let old = b.client.get_named_cookie("krc_session").await?;
    let old = old.value().to_string();
    b.click_nav("form.signout button").await?;
    ensure!(b.text(".flash.ok").await? == "You have signed out.");
    b.client.goto(&format!("{base}/console/realms")).await?;
    ensure!(
        b.path().await? == "/console/sign-in",
        "signed out, yet the realms show"
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;
    let replay = no_redirects
        .get(format!("{base}/console/realms"))
        .header("cookie", format!("krc_session={old}"))
        .send()
        .await?;
    ensure!(
        replay.status().as_u16() == 303
            && replay
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                == Some("/console/sign-in?ended=expired"),
        "the signed-out session id still works: {}",
        replay.status()
    );

    // A revoked admin token ends its sessions at once: an operator token minted with
    // `realm-service token create`, used, then revoked with `realm-service token revoke` (the
    // library functions those commands run) while the service runs; the console asks the API,
    // which checks the token against the database, on every request.
    let database = realm_service::Database::from(realm.database_path());
    let operator = realm_service::create_admin_token(&database, "operator")
        .await
        .map_err(|e| anyhow::anyhow!("minting an admin token: {e}"))?;
    sign_in(b, &base, &operator).await?;
    b.client.goto(&format!("{base}/console/realms")).await?;
    ensure!(b.text("main h1").await? == "Realms");
    let revoked = realm_service::revoke_admin_token(&database, "operator")
        .await
        .map_err(|e| anyhow::anyhow!("revoking the admin token: {e}"))?;
    ensure!(revoked == 1, "operator token not found to revoke");
    b.client.goto(&format!("{base}/console/realms")).await?;
    ensure!(
        b.path().await? == "/console/sign-in",
        "the revoked token's session still works"
    );
    let notice = b.text(".flash").await?;
    ensure!(notice.contains("no longer accepts"), "notice: {notice:?}");
    shot(b, "18-session-ended-token-revoked").await?;
    Ok(())
}

/// `--no-console` (`ServiceConfig::console = false`) serves no console; by default it is there.
#[tokio::test]
async fn the_console_can_be_turned_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    for (console, expected) in [(true, 303), (false, 404)] {
        let mut config =
            realm_service::ServiceConfig::new(dir.path().join(format!("realm-{console}.db")));
        config.console = console;
        let service = realm_service::spawn(config).await.expect("realm service");
        let answer = no_redirects
            .get(format!("http://{}/console/", service.local_addr()))
            .send()
            .await
            .expect("GET /console/");
        assert_eq!(answer.status().as_u16(), expected, "console: {console}");
        if console {
            let csp = answer
                .headers()
                .get("content-security-policy")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert!(
                csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
                "CSP: {csp:?}"
            );
        }
        service.shutdown().await;
    }
}

/// The console on PostgreSQL, with a second replica on the same database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_on_postgresql_replicas() {
    const ADMIN: &str = "e2e-console-pg-admin-token-0123456789";
    let cluster = pg::Cluster::start();
    let url = cluster.create_database().await;
    let first = RealmService::start_on(&url, ADMIN)
        .await
        .expect("replica 1");
    let second = RealmService::start_on(&url, ADMIN)
        .await
        .expect("replica 2");
    scenario_on("postgresql_replicas", first, true, |first, b| async move {
        let result = on_postgresql_replicas(&first, &second, &url, &b).await;
        (b, result)
    })
    .await;
    drop(cluster);
}

async fn on_postgresql_replicas(
    first: &RealmService,
    second: &RealmService,
    url: &str,
    b: &Browser,
) -> anyhow::Result<()> {
    let base = format!("http://{}", first.addr());
    sign_in(b, &base, first.admin_token()).await?;

    // Realm, consumer and key through the first replica's console.
    b.client.goto(&format!("{base}/console/realms/new")).await?;
    b.fill("#f-name", "prod").await?;
    b.click("input[name=allow_all_control_planes]").await?;
    submit(b, "/console/realms/new").await?;
    ensure!(flash(b).await? == "Realm prod created.");
    let realm_id = b.text("#realm-id").await?;
    b.click_nav("a[href$='/consumers/new']").await?;
    b.fill("#f-username", "Ariel").await?;
    b.fill("#f-custom_id", "crm-7").await?;
    submit(b, "/consumers/new").await?;
    let consumer_id = b.text("#consumer-id").await?;
    submit(b, "/keys").await?;
    let secret = b.text("#secret").await?;
    let key_id = b.text("#keys code.id").await?;

    // The second replica knows the key at once (same database).
    let check = second
        .admin(
            reqwest::Method::POST,
            &format!("/v1/realms/{realm_id}/check-key"),
            Some(json!({ "secret": secret })),
            200,
        )
        .await?;
    ensure!(
        check["result"] == "valid"
            && check["consumer"]["id"] == consumer_id.as_str()
            && check["credential"]["id"] == key_id.as_str(),
        "check-key through replica 2: {check}"
    );
    // The console's check-key and search on PostgreSQL.
    b.client.goto(&format!("{base}/console/check-key")).await?;
    b.client
        .find(Locator::Css("#f-realm"))
        .await?
        .select_by_value(&realm_id)
        .await?;
    b.fill("#f-secret", &secret).await?;
    submit(b, "/console/check-key").await?;
    ensure!(b.text("#check-result h2").await? == "Valid key");
    ensure!(b.text("#result-username").await? == "Ariel");
    b.client
        .goto(&format!("{base}/console/realms/{realm_id}"))
        .await?;
    b.fill("input[name=q]", "crm-7").await?;
    b.click_nav("form.search button").await?;
    ensure!(b.text("#consumers tbody tr a").await? == "Ariel");

    // The session belongs to the first replica: the second one sends its cookie to sign-in.
    let cookie = b.client.get_named_cookie("krc_session").await?;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;
    for (replica, expected) in [
        (first, None),
        (second, Some("/console/sign-in?ended=expired")),
    ] {
        let answer = no_redirects
            .get(format!("http://{}/console/realms", replica.addr()))
            .header("cookie", format!("krc_session={}", cookie.value()))
            .send()
            .await?;
        let location = answer
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        ensure!(
            location.as_deref() == expected,
            "the session on replica {}: {} {location:?}",
            replica.addr(),
            answer.status()
        );
    }

    // An operator token minted and revoked with the `realm-service token` commands' functions,
    // while both replicas run: its console session ends at its next request.
    let database = realm_service::Database::parse(url);
    let operator = realm_service::create_admin_token(&database, "operator")
        .await
        .map_err(|e| anyhow::anyhow!("minting an admin token: {e}"))?;
    sign_in(b, &base, &operator).await?;
    b.client.goto(&format!("{base}/console/realms")).await?;
    ensure!(b.text("main h1").await? == "Realms");
    let revoked = realm_service::revoke_admin_token(&database, "operator")
        .await
        .map_err(|e| anyhow::anyhow!("revoking the admin token: {e}"))?;
    ensure!(revoked == 1, "operator token not found to revoke");
    b.client.goto(&format!("{base}/console/realms")).await?;
    ensure!(
        b.path().await? == "/console/sign-in",
        "the revoked token's session still works on PostgreSQL"
    );
    ensure!(b.text(".flash").await?.contains("no longer accepts"));
    Ok(())
}

/// Plain forms work with JavaScript turned off in the browser: create, revoke, and a realm delete
/// whose confirmation (with its counts) is a server-rendered page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_without_javascript() {
    let realm = RealmService::start().await.expect("realm service");
    scenario_on("without_javascript", realm, false, |realm, b| async move {
        let result = without_javascript(&realm, &b).await;
        (b, result)
    })
    .await;
}

async fn without_javascript(realm: &RealmService, b: &Browser) -> anyhow::Result<()> {
    let base = format!("http://{}", realm.addr());
    sign_in(b, &base, realm.admin_token()).await?;
    b.client.goto(&format!("{base}/console/realms/new")).await?;
    b.fill("#f-name", "prod").await?;
    b.click("input[name=allow_all_control_planes]").await?;
    submit(b, "/console/realms/new").await?;
    ensure!(flash(b).await? == "Realm prod created.");
    let realm_id = b.text("#realm-id").await?;
    b.click_nav("a[href$='/consumers/new']").await?;
    b.fill("#f-username", "Ariel").await?;
    submit(b, "/consumers/new").await?;
    let consumer_id = b.text("#consumer-id").await?;
    submit(b, "/keys").await?;
    let secret = b.text("#secret").await?;
    ensure!(secret.starts_with("krk_"), "key: {secret:?}");
    submit(b, "/keys").await?;
    let second = b.text("#keys tbody tr:nth-child(2) code.id").await?;

    // Revoking a key posts at once (no confirm dialog without JavaScript).
    b.client
        .goto(&format!(
            "{base}/console/realms/{realm_id}/consumers/{consumer_id}"
        ))
        .await?;
    b.click_nav("#keys tbody tr:nth-child(1) form[action$='/revoke'] button")
        .await?;
    ensure!(
        flash(b).await?.ends_with(" revoked."),
        "no revoke without JavaScript"
    );
    let rows = b.client.find_all(Locator::Css("#keys tbody tr")).await?;
    ensure!(rows.len() == 1, "keys after the revoke: {}", rows.len());
    ensure!(b.text("#keys code.id").await? == second);

    // The realm delete: with JavaScript a confirm dialog would open; without it, the server's
    // confirmation page says what goes with the realm, and nothing is deleted before it.
    b.client
        .goto(&format!("{base}/console/realms/{realm_id}"))
        .await?;
    b.click_nav("form[action$='/delete'] button[type=submit]")
        .await?;
    ensure!(
        b.client.get_alert_text().await.is_err(),
        "a confirm dialog opened: JavaScript is on"
    );
    let summary = b.text("#delete-summary").await?;
    ensure!(
        summary.contains("1 consumer") && summary.contains("1 key"),
        "delete summary: {summary:?}"
    );
    realm
        .admin(
            reqwest::Method::GET,
            &format!("/v1/realms/{realm_id}"),
            None,
            200,
        )
        .await?;
    b.screenshot("20-realm-delete-confirm-without-javascript")
        .await?;
    b.click_nav("#confirm-delete").await?;
    ensure!(flash(b).await? == "Realm deleted.");
    realm
        .admin(
            reqwest::Method::GET,
            &format!("/v1/realms/{realm_id}"),
            None,
            404,
        )
        .await?;
    Ok(())
}
