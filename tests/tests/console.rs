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
use keyrealm_tests::console::ConsoleDriver;
use keyrealm_tests::fixtures::realm_entry;
use keyrealm_tests::{
    http_client, Checks, EchoUpstream, GatewayKind, GatewaySpec, RealmService, Reply, TOKEN_ENV,
};
use serde_json::{json, Value};

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

/// GET `path` in the admin API, expecting `status`.
async fn api_get(realm: &RealmService, path: &str, status: u16) -> anyhow::Result<Value> {
    realm.admin(reqwest::Method::GET, path, None, status).await
}

/// Looks `secret` up at realm `realm_id`'s identity endpoint with data-plane token `token`; the
/// status.
async fn authenticate(
    realm: &RealmService,
    realm_id: &str,
    token: &str,
    secret: &str,
) -> anyhow::Result<u16> {
    let answer = http_client()
        .post(format!(
            "http://{}/{realm_id}/v0/authenticate",
            realm.addr()
        ))
        .bearer_auth(token)
        .json(&json!({ "secret": secret }))
        .send()
        .await?;
    Ok(answer.status().as_u16())
}

/// A client outside the browser that does not follow redirects.
fn no_redirects() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
}

/// GET `url` outside the browser with console session `session` (redirects not followed).
async fn get_with_session(url: &str, session: &str) -> anyhow::Result<reqwest::Response> {
    Ok(no_redirects()?
        .get(url)
        .header("cookie", format!("krc_session={session}"))
        .send()
        .await?)
}

/// Header `name` of `answer` as text.
fn header<'a>(answer: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    answer.headers().get(name).and_then(|v| v.to_str().ok())
}

/// An operator token minted with `realm-service token create`'s function, signed in and used,
/// then revoked with `realm-service token revoke`'s while the service runs: its console session
/// ends at its next request (`what` ends the failure message).
async fn revoked_operator_session_ends(
    c: &ConsoleDriver<'_>,
    database: &realm_service::Database,
    what: &str,
) -> anyhow::Result<()> {
    let operator = realm_service::create_admin_token(database, "operator")
        .await
        .map_err(|e| anyhow::anyhow!("minting an admin token: {e}"))?;
    c.sign_in(&operator).await?;
    c.open("/console/realms").await?;
    ensure!(c.text("main h1").await? == "Realms");
    let revoked = realm_service::revoke_admin_token(database, "operator")
        .await
        .map_err(|e| anyhow::anyhow!("revoking the admin token: {e}"))?;
    ensure!(revoked == 1, "operator token not found to revoke");
    c.open("/console/realms").await?;
    ensure!(
        c.path().await? == "/console/sign-in",
        "the revoked token's session still works{what}"
    );
    let notice = c.text(".flash").await?;
    ensure!(notice.contains("no longer accepts"), "notice: {notice:?}");
    Ok(())
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
    let c = ConsoleDriver::new(b, realm.addr());

    // Signed out, the console sends the browser to the sign-in page.
    c.open("/console/").await?;
    ensure!(c.path().await? == "/console/sign-in", "not sent to sign-in");
    c.shot("01-sign-in").await?;
    c.sign_in(realm.admin_token()).await?;

    // The session cookie: HttpOnly, SameSite=Strict, expiring; the token is in no cookie.
    let cookie = c.client.get_named_cookie("krc_session").await?;
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
    for cookie in c.client.get_all_cookies().await? {
        ensure!(
            !cookie.value().contains(realm.admin_token()),
            "the admin token is in cookie {}",
            cookie.name()
        );
    }

    // A control plane and its data-plane token.
    c.open("/console/control-planes").await?;
    c.fill_and_submit(&[("#f-name", "cp")], "/console/control-planes")
        .await?;
    ensure!(c.flash().await? == "Control plane cp created.");
    let cp_id = c.text("dl.props dd code").await?;
    c.fill_and_submit(&[("#f-name", "edge-1")], "/tokens")
        .await?;
    let token = c.secret_on_page().await?;
    ensure!(token.starts_with("krdp_"), "data-plane token: {token:?}");
    ensure!(
        c.text(".secret-once")
            .await?
            .contains("only time it is shown"),
        "no shown-once warning"
    );
    ensure!(!c.url().await.contains(&token), "the token is in the URL");
    c.shot("03-data-plane-token-shown-once").await?;
    c.open("/console/control-planes").await?;
    c.shot("02-control-planes").await?;

    // Realm prod allowing the control plane.
    c.open("/console/realms/new").await?;
    c.fill("#f-name", "prod").await?;
    c.click(&format!(
        "input[name=allowed_control_planes][value='{cp_id}']"
    ))
    .await?;
    c.fill("#f-consumer_groups", "gold").await?;
    c.shot("04-realm-new").await?;
    c.submit("/console/realms/new").await?;
    ensure!(c.flash().await? == "Realm prod created.");
    let realm_id = c.text("#realm-id").await?;

    // Consumer Ariel.
    let consumer_id = c.create_consumer(&[("#f-username", "Ariel")]).await?;
    ensure!(c.flash().await? == "Consumer Ariel created.");

    // A key (type new is the default); its secret is shown once.
    let secret = c.create_key().await?;
    ensure!(secret.starts_with("krk_"), "key: {secret:?}");
    ensure!(!c.url().await.contains(&secret), "the key is in the URL");
    let key_id = c.text("#keys code.id").await?;
    ensure!(
        c.text(".secret-once")
            .await?
            .contains("cannot be shown again"),
        "no shown-once warning for the key"
    );
    // The key list: its type, created and expiry, never the secret.
    let row = c.text("#keys tbody tr").await?;
    ensure!(
        row.contains(&key_id) && row.contains("new") && row.contains("never"),
        "key row: {row:?}"
    );
    ensure!(
        !c.text("#keys").await?.contains(&secret),
        "the key list shows the secret"
    );
    c.shot("07-key-shown-once").await?;
    // The copy button puts the secret on the clipboard: pasted into a field, it is the secret.
    c.click("button[data-copy=secret]").await?;
    let copied = c.text("button[data-copy=secret]").await?;
    ensure!(copied == "Copied", "the copy button says {copied:?}");
    let field = c.client.find(Locator::Css("#f-tags")).await?;
    field.click().await?;
    field.send_keys("\u{E009}v\u{E000}").await?;
    let pasted = c.value("#f-tags").await?;
    ensure!(pasted == secret, "pasted after Copy: {pasted:?}");
    c.fill("#f-tags", "").await?;
    c.open(&format!("/console/realms/{realm_id}")).await?;
    c.shot("05-realm").await?;
    c.open(&format!(
        "/console/realms/{realm_id}/consumers/{consumer_id}"
    ))
    .await?;
    ensure!(
        !c.client.source().await?.contains(&secret),
        "the key is shown again"
    );
    c.shot("06-consumer").await?;

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
        let status = authenticate(realm, &realm_id, &token, &secret).await?;
        ensure!(status == 201, "identity: {status}");
    }

    // The overview counts it all and charts the authenticate calls from the service's metrics.
    c.open("/console/").await?;
    for (id, want) in [
        ("#count-realms", "1"),
        ("#count-consumers", "1"),
        ("#count-keys", "1"),
        ("#count-control-planes", "1"),
    ] {
        let got = c.text(id).await?;
        ensure!(got == want, "{id}: {got:?}, expected {want}");
    }
    let legend = c.text(".charts").await?;
    ensure!(
        legend.contains("found 3") && legend.contains("not found 1"),
        "the chart's totals do not show the look-ups: {legend:?}"
    );
    ensure!(
        c.has("svg.chart polyline.found").await?,
        "no authenticate line in the chart"
    );
    // Ariel's key: a miss, then two hits; another_key: a miss (2 of 4).
    ensure!(
        legend.contains("hit ratio 50.0%"),
        "the cache hit ratio: {legend:?}"
    );
    ensure!(
        c.has("svg.chart polyline.hit").await?,
        "no hit-ratio line in the chart"
    );
    c.shot("00-overview").await?;

    // Check a key: Ariel's, then an unknown one.
    c.check_key(&realm_id, &secret).await?;
    ensure!(c.text("#check-result h2").await? == "Valid key");
    ensure!(c.text("#result-username").await? == "Ariel");
    ensure!(c.text("#result-credential").await? == key_id);
    ensure!(
        !c.client.source().await?.contains(&secret),
        "the checked key is echoed into the page"
    );
    c.shot("08-check-key").await?;
    c.fill_and_submit(&[("#f-secret", "another_key")], "/console/check-key")
        .await?;
    ensure!(c.text("#check-result h2").await? == "Unknown key");

    // Revoke the key in the console: the identity endpoint answers 404 for it.
    c.open(&format!(
        "/console/realms/{realm_id}/consumers/{consumer_id}"
    ))
    .await?;
    let question = c.submit_confirmed("/revoke").await?;
    ensure!(
        question.contains("Revoke this key"),
        "confirm: {question:?}"
    );
    ensure!(c.flash().await? == format!("Key {key_id} revoked."));
    ensure!(!c.has("#keys").await?, "the key is still listed");
    let status = authenticate(realm, &realm_id, &token, &secret).await?;
    ensure!(
        status == 404,
        "identity endpoint after the revoke: {status}"
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
    let c = ConsoleDriver::new(b, realm.addr());
    let base = c.base();
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
    c.open("/console/sign-in").await?;
    c.fill_and_submit(&[("#f-token", "not-a-token")], "/console/sign-in")
        .await?;
    let error = c.field_error("token").await?;
    ensure!(
        error.contains("unknown admin token"),
        "sign-in error: {error:?}"
    );
    c.shot("10-sign-in-refused").await?;
    // The same authorization as the API: a data-plane token is not an admin token.
    let gateway_cp = realm.create_control_plane("gateways").await?;
    let dp_token = realm.create_data_plane_token(&gateway_cp).await?;
    c.open("/console/sign-in").await?;
    c.fill_and_submit(&[("#f-token", &dp_token)], "/console/sign-in")
        .await?;
    ensure!(
        c.field_error("token")
            .await?
            .contains("unknown admin token"),
        "a data-plane token signed in"
    );
    ensure!(
        c.client.get_named_cookie("krc_session").await.is_err(),
        "a session cookie after a refused sign-in"
    );
    c.sign_in(realm.admin_token()).await?;

    // Every console answer carries the Content-Security-Policy, and no page has inline script.
    let cookie = c.client.get_named_cookie("krc_session").await?;
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
        let answer = get_with_session(&format!("{base}{path}"), cookie.value()).await?;
        let csp = header(&answer, "content-security-policy")
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
    c.open(&format!("/console/realms/{prod}/consumers/new"))
        .await?;
    c.fill_and_submit(
        &[
            ("#f-username", "Ariel"),
            ("#f-custom_id", "typed-custom"),
            ("#f-type", "developer"),
            ("#f-tags", "a, b"),
        ],
        "/consumers/new",
    )
    .await?;
    let error = c.field_error("username").await?;
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
        let kept = c.value(field).await?;
        ensure!(
            kept == typed,
            "{field}: {kept:?} after the 409, typed {typed:?}"
        );
    }
    ensure!(
        c.text(".flash.bad").await?.contains("409"),
        "the banner names the 409"
    );
    c.shot("11-consumer-duplicate-username").await?;

    // Consumer edit to a taken username: the 409 next to the field.
    c.open(&format!("/console/realms/{prod}/consumers/{bob_id}/edit"))
        .await?;
    ensure!(
        c.value("#f-custom_id").await? == "crm-42",
        "edit form not filled in"
    );
    c.fill_and_submit(&[("#f-username", "Ariel")], "/edit")
        .await?;
    ensure!(c.field_error("username").await?.contains("already exists"));
    ensure!(c.value("#f-username").await? == "Ariel");

    // Realm create with an out-of-range ttl.
    c.open("/console/realms/new").await?;
    c.fill_and_submit(&[("#f-name", "eu"), ("#f-ttl", "3")], "/console/realms/new")
        .await?;
    let error = c.field_error("ttl").await?;
    ensure!(error.contains("5 to 525600"), "ttl error: {error:?}");
    ensure!(c.value("#f-name").await? == "eu");
    ensure!(c.value("#f-ttl").await? == "3");
    c.shot("12-realm-invalid-ttl").await?;

    // Realm create allowing a control plane deleted since the form was shown: the API's
    // `allowed_control_planes[0]` is shown at the picker, what was typed is kept.
    let doomed = realm.create_control_plane("doomed").await?;
    c.open("/console/realms/new").await?;
    c.fill("#f-name", "eu-2").await?;
    c.fill("#f-consumer_groups", "gold, silver").await?;
    c.click(&format!(
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
    c.submit("/console/realms/new").await?;
    let error = c.field_error("allowed_control_planes").await?;
    ensure!(
        error.contains(&doomed) && error.contains("does not exist"),
        "allowed_control_planes error: {error:?}"
    );
    ensure!(c.value("#f-name").await? == "eu-2");
    ensure!(c.value("#f-consumer_groups").await? == "gold, silver");

    // Realm edit with a negative_ttl that is not a number.
    c.open(&format!("/console/realms/{prod}/edit")).await?;
    c.fill_and_submit(&[("#f-negative_ttl", "soon")], "/edit")
        .await?;
    ensure!(
        c.has_field_error("negative_ttl").await?,
        "no negative_ttl error"
    );
    ensure!(c.value("#f-negative_ttl").await? == "soon");

    // Control plane and data-plane token names out of range.
    c.open("/console/control-planes").await?;
    c.fill_and_submit(&[("#f-name", "   ")], "/console/control-planes")
        .await?;
    ensure!(
        c.has_field_error("name").await?,
        "no error for a blank control plane name"
    );
    c.open(&format!("/console/control-planes/{cp}")).await?;
    let long = "x".repeat(300);
    c.fill_and_submit(&[("#f-name", &long)], "/tokens").await?;
    ensure!(c.field_error("name").await?.contains("255"));
    ensure!(c.value("#f-name").await? == long);
    ensure!(!c.has("#secret").await?, "a token was shown after an error");

    // Keys: a legacy key without a secret and a ttl of 0; then a legacy secret taken in the realm.
    let consumer_page = format!("/console/realms/{prod}/consumers/{}", ariel.id);
    c.open(&consumer_page).await?;
    c.click("input[name=type][value=legacy]").await?;
    c.fill_and_submit(&[("#f-ttl", "0")], "/keys").await?;
    ensure!(c.field_error("secret").await?.contains("required"));
    ensure!(c.has_field_error("ttl").await?, "no ttl error");
    ensure!(c.value("#f-ttl").await? == "0");
    c.shot("13-key-errors").await?;
    c.click("input[name=type][value=legacy]").await?;
    c.fill_and_submit(&[("#f-secret", "legacy-secret-1"), ("#f-ttl", "")], "/keys")
        .await?;
    ensure!(c.field_error("secret").await?.contains("already exists"));

    // Move Ariel into staging, which has an Ariel: the 409 at the target realm.
    c.open(&consumer_page).await?;
    c.select("#f-target", &staging).await?;
    c.submit("/move").await?;
    ensure!(c
        .field_error("target_realm_id")
        .await?
        .contains("already exists"));

    // The XSS case: a consumer named like a script shows as text.
    let evil = "<script>alert(1)</script>";
    c.open(&format!("/console/realms/{prod}/consumers/new"))
        .await?;
    c.fill_and_submit(
        &[("#f-username", evil), ("#f-tags", "<b>bold</b>")],
        "/consumers/new",
    )
    .await?;
    ensure!(
        c.text("main h1").await? == evil,
        "the name is not shown as text"
    );
    ensure!(
        c.client.get_alert_text().await.is_err(),
        "a script ran: an alert is open"
    );
    let source = c.client.source().await?;
    ensure!(
        !source.contains(evil) && source.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the name is not escaped in the page"
    );
    c.open(&format!("/console/realms/{prod}")).await?;
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
    ensure!(c.client.get_alert_text().await.is_err(), "a script ran");
    c.shot("14-xss-shown-as-text").await?;

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
    c.open(&format!("/console/realms/{big}")).await?;
    let rows = c.count("#consumers tbody tr").await?;
    ensure!(rows == 20, "first page: {} rows", rows);
    c.click_nav("nav.pager a").await?;
    let rows = c.count("#consumers tbody tr").await?;
    ensure!(rows == 5, "second page: {} rows", rows);
    ensure!(c.text("#consumers tbody tr a").await? == "user-20");
    c.search("cid-07").await?;
    let rows = c.count("#consumers tbody tr").await?;
    ensure!(rows == 1, "search by custom_id: {} rows", rows);
    ensure!(c.text("#consumers tbody tr a").await? == "user-07");
    ensure!(
        c.value("input[name=q]").await? == "cid-07",
        "the search is not kept"
    );
    c.shot("15-consumer-search").await?;
    c.search("user-19").await?;
    let rows = c.count("#consumers tbody tr").await?;
    ensure!(rows == 1, "search by username: {} rows", rows);
    ensure!(c.text("#consumers tbody tr td:nth-child(2)").await? == "cid-19");
    c.search("user-7").await?;
    ensure!(
        !c.has("#consumers").await?,
        "an inexact search found a consumer"
    );
    ensure!(c.text("p.empty").await?.contains("user-7"));
    // Back to the first page from the second one.
    c.open(&format!("/console/realms/{big}")).await?;
    c.click_nav("nav.pager a").await?;
    c.click_nav("nav.pager a").await?;
    let rows = c.count("#consumers tbody tr").await?;
    ensure!(rows == 20, "previous page: {} rows", rows);
    ensure!(c.text("#consumers tbody tr a").await? == "user-00");

    // The other forms succeed: edit a realm, move and delete a consumer, revoke a data-plane
    // token, delete a control plane.
    c.open(&format!("/console/realms/{big}/edit")).await?;
    c.fill_and_submit(&[("#f-ttl", "30")], "/edit").await?;
    ensure!(c.flash().await? == "Realm big saved.");
    let settings = c.text("dl.props").await?;
    ensure!(
        settings.contains("30 min (found)"),
        "realm after edit: {settings:?}"
    );
    c.open(&format!("/console/realms/{prod}/consumers/{bob_id}"))
        .await?;
    c.select("#f-target", &big).await?;
    c.submit("/move").await?;
    ensure!(c.flash().await? == "Consumer moved with its keys.");
    ensure!(
        c.path().await? == format!("/console/realms/{big}/consumers/{bob_id}"),
        "not on the moved consumer's page"
    );
    let question = c.submit_confirmed(&format!("{bob_id}/delete")).await?;
    ensure!(
        question.contains("Delete consumer Bob"),
        "confirm: {question:?}"
    );
    ensure!(c.flash().await? == "Consumer deleted with its keys.");
    api_get(realm, &format!("/v1/realms/{big}/consumers/{bob_id}"), 404).await?;
    realm.create_data_plane_token(&cp).await?;
    c.open(&format!("/console/control-planes/{cp}")).await?;
    c.submit_confirmed("/revoke").await?;
    ensure!(c.flash().await? == "Data-plane token revoked.");
    let tokens = api_get(
        realm,
        &format!("/v2/control-planes/{cp}/data-plane-tokens"),
        200,
    )
    .await?;
    ensure!(
        tokens["data"] == json!([]),
        "tokens after the revoke: {tokens}"
    );
    let spare = realm.create_control_plane("spare").await?;
    c.open(&format!("/console/control-planes/{spare}")).await?;
    c.submit_confirmed(&format!("{spare}/delete")).await?;
    ensure!(c.flash().await? == "Control plane deleted.");
    api_get(realm, &format!("/v2/control-planes/{spare}"), 404).await?;

    // Deleting a realm with consumers asks first and says what goes with it.
    let cleo = realm.consumer_with_key(&staging, "Cleo").await?;
    realm
        .create_key(&staging, &cleo.id, json!({"type": "new"}))
        .await?;
    c.open(&format!("/console/realms/{staging}")).await?;
    let question = c.submit_confirmed("/delete").await?;
    ensure!(question.contains("staging"), "confirm: {question:?}");
    let summary = c.text("#delete-summary").await?;
    ensure!(
        summary.contains("2 consumers") && summary.contains("3 keys"),
        "delete summary: {summary:?}"
    );
    ensure!(
        api_get(realm, &format!("/v1/realms/{staging}"), 200)
            .await
            .is_ok(),
        "the realm went before the confirmation"
    );
    c.shot("16-realm-delete-confirm").await?;
    c.click_nav("#confirm-delete").await?;
    ensure!(c.flash().await? == "Realm deleted.");
    api_get(realm, &format!("/v1/realms/{staging}"), 404).await?;

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
    c.check_key(&prod, "").await?;
    ensure!(
        c.has_field_error("secret").await?,
        "no error next to the empty key"
    );
    ensure!(
        c.value("#f-realm").await? == prod,
        "the realm picked is lost"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    c.fill_and_submit(&[("#f-secret", &short)], "/console/check-key")
        .await?;
    ensure!(c.text("#check-result h2").await? == "Expired key");
    ensure!(c.text("#result-username").await? == "Ariel");
    c.shot("19-check-key-expired").await?;

    // CSRF: a form whose token does not match the session is refused and changes nothing.
    c.open("/console/control-planes").await?;
    c.client
        .execute(
            "document.querySelector(\"form[action='/console/control-planes'] input[name=csrf]\").value = 'forged';",
            vec![],
        )
        .await?;
    c.fill_and_submit(&[("#f-name", "forged-cp")], "/console/control-planes")
        .await?;
    ensure!(
        c.text("main h1").await? == "Form refused",
        "CSRF not refused"
    );
    c.shot("17-csrf-refused").await?;
    let cps = api_get(realm, "/v2/control-planes", 200).await?;
    ensure!(
        !cps.to_string().contains("forged-cp"),
        "the forged form created a control plane"
    );

    // Sign-out ends the session on the server: the old cookie no longer works.
    c.open("/console/").await?;
    let old = c.client.get_named_cookie("krc_session").await?;
    let old = old.value().to_string();
    c.click_nav("form.signout button").await?;
    ensure!(c.text(".flash.ok").await? == "You have signed out.");
    c.open("/console/realms").await?;
    ensure!(
        c.path().await? == "/console/sign-in",
        "signed out, yet the realms show"
    );
    let replay = get_with_session(&format!("{base}/console/realms"), &old).await?;
    ensure!(
        replay.status().as_u16() == 303
            && header(&replay, "location") == Some("/console/sign-in?ended=expired"),
        "the signed-out session id still works: {}",
        replay.status()
    );

    // A revoked admin token ends its sessions at once: an operator token minted with
    // `realm-service token create`, used, then revoked with `realm-service token revoke` (the
    // library functions those commands run) while the service runs; the console asks the API,
    // which checks the token against the database, on every request.
    let database = realm_service::Database::from(realm.database_path());
    revoked_operator_session_ends(&c, &database, "").await?;
    c.shot("18-session-ended-token-revoked").await?;
    Ok(())
}

/// `--no-console` (`ServiceConfig::console = false`) serves no console; by default it is there.
#[tokio::test]
async fn the_console_can_be_turned_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let no_redirects = no_redirects().expect("client");
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
            let csp = header(&answer, "content-security-policy").unwrap_or("");
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
    let c = ConsoleDriver::new(b, first.addr());
    c.sign_in(first.admin_token()).await?;

    // Realm, consumer and key through the first replica's console.
    let realm_id = c.create_realm_allowing_all("prod").await?;
    let consumer_id = c
        .create_consumer(&[("#f-username", "Ariel"), ("#f-custom_id", "crm-7")])
        .await?;
    let secret = c.create_key().await?;
    let key_id = c.text("#keys code.id").await?;

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
    c.check_key(&realm_id, &secret).await?;
    ensure!(c.text("#check-result h2").await? == "Valid key");
    ensure!(c.text("#result-username").await? == "Ariel");
    c.open(&format!("/console/realms/{realm_id}")).await?;
    c.search("crm-7").await?;
    ensure!(c.text("#consumers tbody tr a").await? == "Ariel");

    // The session belongs to the first replica: the second one sends its cookie to sign-in.
    let cookie = c.client.get_named_cookie("krc_session").await?;
    for (replica, expected) in [
        (first, None),
        (second, Some("/console/sign-in?ended=expired")),
    ] {
        let url = format!("http://{}/console/realms", replica.addr());
        let answer = get_with_session(&url, cookie.value()).await?;
        let location = header(&answer, "location");
        ensure!(
            location == expected,
            "the session on replica {}: {} {location:?}",
            replica.addr(),
            answer.status()
        );
    }

    // An operator token minted and revoked with the `realm-service token` commands' functions,
    // while both replicas run: its console session ends at its next request.
    let database = realm_service::Database::parse(url);
    revoked_operator_session_ends(&c, &database, " on PostgreSQL").await
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
    let c = ConsoleDriver::new(b, realm.addr());
    c.sign_in(realm.admin_token()).await?;
    let realm_id = c.create_realm_allowing_all("prod").await?;
    let consumer_id = c.create_consumer(&[("#f-username", "Ariel")]).await?;
    let secret = c.create_key().await?;
    ensure!(secret.starts_with("krk_"), "key: {secret:?}");
    c.create_key().await?;
    let second = c.text("#keys tbody tr:nth-child(2) code.id").await?;

    // Revoking a key posts at once (no confirm dialog without JavaScript).
    c.open(&format!(
        "/console/realms/{realm_id}/consumers/{consumer_id}"
    ))
    .await?;
    c.click_nav("#keys tbody tr:nth-child(1) form[action$='/revoke'] button")
        .await?;
    ensure!(
        c.flash().await?.ends_with(" revoked."),
        "no revoke without JavaScript"
    );
    let rows = c.client.find_all(Locator::Css("#keys tbody tr")).await?;
    ensure!(rows.len() == 1, "keys after the revoke: {}", rows.len());
    ensure!(c.text("#keys code.id").await? == second);

    // The realm delete: with JavaScript a confirm dialog would open; without it, the server's
    // confirmation page says what goes with the realm, and nothing is deleted before it.
    c.open(&format!("/console/realms/{realm_id}")).await?;
    c.click_nav("form[action$='/delete'] button[type=submit]")
        .await?;
    ensure!(
        c.client.get_alert_text().await.is_err(),
        "a confirm dialog opened: JavaScript is on"
    );
    let summary = c.text("#delete-summary").await?;
    ensure!(
        summary.contains("1 consumer") && summary.contains("1 key"),
        "delete summary: {summary:?}"
    );
    api_get(realm, &format!("/v1/realms/{realm_id}"), 200).await?;
    c.screenshot("20-realm-delete-confirm-without-javascript")
        .await?;
    c.click_nav("#confirm-delete").await?;
    ensure!(c.flash().await? == "Realm deleted.");
    api_get(realm, &format!("/v1/realms/{realm_id}"), 404).await?;
    Ok(())
}
