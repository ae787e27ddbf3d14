//! identity_realms: realm look-ups through the realm service, their order, the per-worker cache,
//! one call per key, and what happens when a realm is unavailable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyrealm_filter::engine::Level;
use keyrealm_filter::metrics::Metric;
use support::{found, not_found, Harness, Outcome, Req};

const REALM_A: &str = "11111111-1111-4111-8111-111111111111";
const REALM_B: &str = "22222222-2222-4222-8222-222222222222";
const MINUTE: u64 = 60_000;

fn config(realms: &str, extra: &str) -> String {
    format!(
        r#"{{"identity_realms":[{realms}],
            "consumers":[{{"id":"c-cp","username":"cp-user",
                           "keyauth_credentials":[{{"id":"cred-cp","key":"cp-key"}}]}},
                         {{"id":"c-anon","username":"guest"}}],
            "realm_service":{{"clusters":{{"us":"realm_us","eu":"realm_eu","default":"realm_default"}},
                              "authority":"realm-service","token_env":"KEYREALM_DP_TOKEN",
                              "timeout_ms":800{extra}}}}}"#
    )
}

fn realm(id: &str, region: &str) -> String {
    format!(r#"{{"scope":"realm","id":"{id}","region":"{region}"}}"#)
}

const CP: &str = r#"{"scope":"cp","id":null}"#;

fn key(k: &str) -> Req {
    Req::get("/anything").header("apikey", k)
}

fn assert_realm_consumer(o: &Outcome) {
    assert_eq!(o.status(), 200, "{o:?}");
    assert_eq!(o.header("x-consumer-id"), Some("rc-1"));
    assert_eq!(o.header("x-consumer-username"), Some("ariel"));
    assert_eq!(o.header("x-consumer-custom-id"), None);
    assert_eq!(o.header("x-credential-identifier"), Some("rk-1"));
    assert_eq!(o.header("x-consumer-groups"), Some("gold,beta"));
    assert_eq!(o.header("x-anonymous-consumer"), None);
}

#[test]
fn a_realm_key_is_looked_up_with_one_authenticate_call() {
    let mut h = Harness::new(&config(&format!("{},{CP}", realm(REALM_A, "us")), ""));
    let ctx = h.start(key("realm-key"));
    assert_eq!(h.outcome(ctx), Outcome::Paused, "paused during the call");
    let call = h.last_call().clone();
    assert_eq!(call.cluster, "realm_us");
    assert_eq!(call.header(":method"), Some("POST"));
    assert_eq!(
        call.header(":path"),
        Some(&*format!("/{REALM_A}/v0/authenticate"))
    );
    assert_eq!(call.header(":authority"), Some("realm-service"));
    assert_eq!(call.header("authorization"), Some("Bearer dp-token"));
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(call.body, r#"{"secret":"realm-key"}"#);
    assert_eq!(call.timeout_ms, 800);
    h.answer(call.token, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    let o = h.outcome(ctx);
    assert_realm_consumer(&o);
    assert_eq!(o.header("apikey"), None);
    assert_eq!(h.metric(Metric::RealmCallsFound), 1);
    assert_eq!(h.metric(Metric::RequestsAuthenticatedRealm), 1);
    assert_eq!(h.worker.tracked_requests(), 0);
    assert_eq!(h.worker.lookups_in_flight(), 0);
}

#[test]
fn realm_then_cp_and_cp_then_realm() {
    // Realm first: a cp key costs a realm call (not found) before the cp consumers answer.
    let mut h = Harness::new(&config(&format!("{},{CP}", realm(REALM_A, "us")), ""));
    let ctx = h.start(key("cp-key"));
    let t = h.last_call().token;
    h.answer(t, Some(404), &not_found(5));
    let o = h.outcome(ctx);
    assert_eq!(o.status(), 200);
    assert_eq!(o.header("x-consumer-id"), Some("c-cp"));
    assert_eq!(o.header("x-consumer-groups"), None);

    // cp first: a cp key never calls the realm; a realm key does after cp misses.
    let mut h = Harness::new(&config(&format!("{CP},{}", realm(REALM_A, "us")), ""));
    assert_eq!(h.send(key("cp-key")).header("x-consumer-id"), Some("c-cp"));
    assert!(h.host.calls.is_empty());
    let ctx = h.start(key("realm-key"));
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_realm_consumer(&h.outcome(ctx));
}

#[test]
fn realm_only_and_cp_only() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    let ctx = h.start(key("cp-key"));
    let t = h.last_call().token;
    h.answer(t, Some(404), &not_found(5));
    let o = h.outcome(ctx);
    assert_eq!(o.status(), 401, "cp consumers are not consulted: {o:?}");
    assert_eq!(o.message(), "Unauthorized");
    assert_eq!(o.header("www-authenticate"), Some("Key"));

    let mut h = Harness::new(&config(CP, ""));
    let o = h.send(key("realm-key"));
    assert_eq!(o.status(), 401);
    assert!(h.host.calls.is_empty());
}

#[test]
fn two_realms_are_tried_in_order_on_their_own_clusters() {
    let mut h = Harness::new(&config(
        &format!("{},{}", realm(REALM_A, "us"), realm(REALM_B, "eu")),
        "",
    ));
    let ctx = h.start(key("key-of-b"));
    let first = h.last_call().clone();
    assert_eq!(first.cluster, "realm_us");
    h.answer(first.token, Some(404), &not_found(5));
    assert_eq!(h.outcome(ctx), Outcome::Paused);
    let second = h.last_call().clone();
    assert_eq!(second.cluster, "realm_eu");
    assert_eq!(
        second.header(":path"),
        Some(&*format!("/{REALM_B}/v0/authenticate"))
    );
    h.answer(second.token, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_realm_consumer(&h.outcome(ctx));
}

#[test]
fn a_key_of_another_realm_is_refused() {
    // Configured with realm B only; the realm service does not know the key there.
    let mut h = Harness::new(&config(&realm(REALM_B, "eu"), ""));
    let ctx = h.start(key("key-of-a"));
    let t = h.last_call().token;
    h.answer(t, Some(404), &not_found(5));
    assert_eq!(h.outcome(ctx).status(), 401);
}

#[test]
fn found_keys_are_cached_for_the_realm_ttl() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    let ctx = h.start(key("realm-key"));
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_realm_consumer(&h.outcome(ctx));
    for _ in 0..19 {
        assert_realm_consumer(&h.send(key("realm-key")));
    }
    assert_eq!(h.host.calls.len(), 1, "20 requests, 1 call");
    assert_eq!(h.metric(Metric::CacheHit), 19);
    assert_eq!(h.metric(Metric::CacheMiss), 1);
    // After the ttl, the key is looked up again.
    h.host.now += 10 * MINUTE;
    let ctx = h.start(key("realm-key"));
    assert_eq!(h.host.calls.len(), 2);
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_realm_consumer(&h.outcome(ctx));
}

#[test]
fn misses_are_cached_for_the_negative_ttl() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    let ctx = h.start(key("unknown"));
    let t = h.last_call().token;
    h.answer(t, Some(404), &not_found(7));
    assert_eq!(h.outcome(ctx).status(), 401);
    for _ in 0..19 {
        assert_eq!(h.send(key("unknown")).status(), 401);
    }
    assert_eq!(h.host.calls.len(), 1, "20 requests, 1 call");
    h.host.now += 7 * MINUTE - 1;
    assert_eq!(h.send(key("unknown")).status(), 401);
    assert_eq!(h.host.calls.len(), 1);
    h.host.now += 1;
    h.start(key("unknown"));
    assert_eq!(h.host.calls.len(), 2);
}

#[test]
fn a_credential_expiry_caps_the_cache_ttl() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    // now = 1_000_000 ms = 1970-01-01T00:16:40Z; the key expires 30 s later.
    let answer = serde_json::json!({
        "id": "rc-1", "username": "ariel", "custom_id": null, "type": "x", "tags": [],
        "consumer_group_names": [], "ttl": 10, "negative_ttl": 5,
        "credential": {"id": "rk-1", "created_at": "1970-01-01T00:00:00Z", "tags": [],
                       "expires_at": "1970-01-01T00:17:10Z"}
    })
    .to_string();
    let ctx = h.start(key("short-lived"));
    let t = h.last_call().token;
    h.answer(t, Some(201), &answer);
    let o = h.outcome(ctx);
    assert_eq!(o.status(), 200);
    assert_eq!(o.header("x-consumer-groups"), None, "no groups, no header");
    h.host.now += 29_999;
    assert_eq!(h.send(key("short-lived")).status(), 200);
    assert_eq!(h.host.calls.len(), 1);
    h.host.now += 1;
    h.start(key("short-lived"));
    assert_eq!(h.host.calls.len(), 2, "expired: asked again");
}

#[test]
fn concurrent_requests_for_one_new_key_share_one_call() {
    let mut h = Harness::new(&config(&format!("{},{CP}", realm(REALM_A, "us")), ""));
    let ctxs: Vec<u32> = (0..20).map(|_| h.start(key("realm-key"))).collect();
    assert_eq!(h.host.calls.len(), 1, "one call for 20 concurrent requests");
    assert!(ctxs.iter().all(|c| h.outcome(*c) == Outcome::Paused));
    assert_eq!(h.metric(Metric::RealmCallsCoalesced), 19);
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    for c in &ctxs {
        assert_realm_consumer(&h.outcome(*c));
    }
    // Waiters on a miss all move on to the next entry (cp) without calling again.
    let ctxs: Vec<u32> = (0..5).map(|_| h.start(key("cp-key"))).collect();
    assert_eq!(h.host.calls.len(), 2);
    let t = h.last_call().token;
    h.answer(t, Some(404), &not_found(5));
    for c in &ctxs {
        assert_eq!(h.outcome(*c).header("x-consumer-id"), Some("c-cp"));
    }
    assert_eq!(h.worker.tracked_requests(), 0);
}

#[test]
fn an_unavailable_realm_is_503_never_401() {
    for (status, body) in [
        (None, ""),
        (Some(500), "oops"),
        (Some(503), ""),
        (Some(401), r#"{"status":401}"#),
        (Some(403), r#"{"status":403}"#),
        (Some(201), "not json"),
        // A 404 that is not the realm service's answer (no negative_ttl): a proxy's "no route",
        // a wrong service behind the cluster. Never "not found", which would be a 401.
        (Some(404), ""),
        (Some(404), "Not Found"),
        (Some(404), r#"{"status":404,"title":"Not Found"}"#),
        (Some(404), r#"{"status":404,"negative_ttl":"ten"}"#),
    ] {
        let mut h = Harness::new(&config(&format!("{},{CP}", realm(REALM_A, "us")), ""));
        let ctx = h.start(key("some-key"));
        let t = h.last_call().token;
        h.answer(t, status, body);
        let o = h.outcome(ctx);
        assert_eq!(o.status(), 503, "{status:?}: {o:?}");
        assert_eq!(o.message(), "Identity realm unavailable");
        assert_eq!(o.json()["request_id"], "req-1");
        assert_eq!(o.header("www-authenticate"), None);
        let (level, line) = h.host.logs.last().unwrap().clone();
        assert_eq!(level, Level::Error);
        assert!(
            line.contains(REALM_A) && line.contains("realm_us"),
            "{line}"
        );
        assert!(
            !line.contains("some-key"),
            "the key is never logged: {line}"
        );
        assert_eq!(h.metric(Metric::RealmCallsUnavailable), 1);
        // Unavailable is not cached: the next request asks again.
        h.start(key("some-key"));
        assert_eq!(h.host.calls.len(), 2);
    }
}

#[test]
fn a_403_is_logged_as_a_control_plane_the_realm_does_not_allow() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    let ctx = h.start(key("k"));
    let t = h.last_call().token;
    h.answer(t, Some(403), "{}");
    assert_eq!(h.outcome(ctx).status(), 503);
    assert!(h
        .host
        .logs
        .iter()
        .any(|(_, l)| l.contains("does not allow this control plane")));
}

#[test]
fn an_unavailable_realm_still_lets_a_later_entry_authenticate() {
    let mut h = Harness::new(&config(&format!("{},{CP}", realm(REALM_A, "us")), ""));
    let ctx = h.start(key("cp-key"));
    let t = h.last_call().token;
    h.answer(t, None, "");
    assert_eq!(h.outcome(ctx).header("x-consumer-id"), Some("c-cp"));
}

#[test]
fn a_call_that_cannot_start_is_unavailable() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    h.host.refuse_dispatch = Some("BadArgument".into());
    let o = h.send(key("k"));
    assert_eq!(o.status(), 503);
    assert!(h.host.logs.iter().any(|(_, l)| l.contains("BadArgument")));
}

#[test]
fn anonymous_covers_an_unavailable_realm() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), "").replacen(
        r#"{"identity_realms""#,
        r#"{"anonymous":"guest","identity_realms""#,
        1,
    ));
    let ctx = h.start(key("k"));
    let t = h.last_call().token;
    h.answer(t, None, "");
    let o = h.outcome(ctx);
    assert_eq!(o.status(), 200, "{o:?}");
    assert_eq!(o.header("x-anonymous-consumer"), Some("true"));
    assert_eq!(o.header("x-consumer-id"), Some("c-anon"));
}

#[test]
fn stale_entries_serve_while_the_realm_is_unavailable() {
    let mut h = Harness::new(&config(
        &realm(REALM_A, "us"),
        r#","stale_if_error_seconds":60"#,
    ));
    let ctx = h.start(key("realm-key"));
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_realm_consumer(&h.outcome(ctx));
    // Past the ttl, the realm fails: the stale entry authenticates.
    h.host.now += 10 * MINUTE + 30_000;
    let ctx = h.start(key("realm-key"));
    let t = h.last_call().token;
    h.answer(t, None, "");
    assert_realm_consumer(&h.outcome(ctx));
    assert_eq!(h.metric(Metric::CacheStale), 1);
    // Beyond ttl + stale_if_error_seconds it does not.
    h.host.now += 30_000;
    let ctx = h.start(key("realm-key"));
    let t = h.last_call().token;
    h.answer(t, Some(500), "");
    assert_eq!(h.outcome(ctx).status(), 503);
    // A key the realm no longer knows is not served stale.
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    let ctx = h.start(key("realm-key"));
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 1));
    assert_eq!(h.outcome(ctx).status(), 200);
    h.host.now += MINUTE;
    let ctx = h.start(key("realm-key"));
    let t = h.last_call().token;
    h.answer(t, Some(404), &not_found(1));
    assert_eq!(h.outcome(ctx).status(), 401);
    h.host.now += MINUTE;
    let ctx = h.start(key("realm-key"));
    let t = h.last_call().token;
    h.answer(t, None, "");
    assert_eq!(h.outcome(ctx).status(), 503);
}

#[test]
fn misses_cannot_evict_found_entries() {
    let mut h = Harness::new(&config(
        &realm(REALM_A, "us"),
        r#","max_cached_found":2,"max_cached_not_found":3"#,
    ));
    let ctx = h.start(key("good"));
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_eq!(h.outcome(ctx).status(), 200);
    for i in 0..50 {
        let ctx = h.start(key(&format!("random-{i}")));
        let t = h.last_call().token;
        h.answer(t, Some(404), &not_found(5));
        assert_eq!(h.outcome(ctx).status(), 401);
    }
    let calls = h.host.calls.len();
    assert_eq!(h.send(key("good")).status(), 200);
    assert_eq!(
        h.host.calls.len(),
        calls,
        "the found entry survived the flood"
    );
}

#[test]
fn the_cache_is_per_realm() {
    let mut h = Harness::new(&config(
        &format!("{},{}", realm(REALM_A, "us"), realm(REALM_B, "eu")),
        "",
    ));
    let ctx = h.start(key("k"));
    let t = h.last_call().token;
    h.answer(t, Some(404), &not_found(5));
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_realm_consumer(&h.outcome(ctx));
    // Cached: A says not found, B found: no call at all.
    assert_realm_consumer(&h.send(key("k")));
    assert_eq!(h.host.calls.len(), 2);
}

#[test]
fn a_lost_answer_is_asked_again_from_the_root_context() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    let owner = h.start(key("realm-key"));
    let waiter = h.start(key("realm-key"));
    assert_eq!(h.host.calls.len(), 1);
    // The request that made the call goes away: its answer will never be delivered.
    h.done(owner);
    h.tick();
    assert_eq!(h.host.calls.len(), 2, "asked again");
    let retry = h.last_call().clone();
    assert_eq!(retry.receiver, support::ROOT);
    // A late answer to the first call is ignored.
    let first = h.host.calls[0].token;
    h.answer(first, Some(500), "");
    assert_eq!(h.outcome(waiter), Outcome::Paused);
    h.answer(retry.token, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_realm_consumer(&h.outcome(waiter));
}

#[test]
fn a_call_without_an_answer_is_given_up_after_its_timeout() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    let ctx = h.start(key("realm-key"));
    h.host.now += 800;
    h.tick();
    assert_eq!(
        h.outcome(ctx),
        Outcome::Paused,
        "the proxy's own timeout comes first"
    );
    h.host.now += 600;
    h.tick();
    assert_eq!(h.outcome(ctx).status(), 503);
    assert_eq!(h.worker.lookups_in_flight(), 0);
}

#[test]
fn requests_that_go_away_are_forgotten() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    let a = h.start(key("realm-key"));
    let b = h.start(key("realm-key"));
    h.done(b);
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_realm_consumer(&h.outcome(a));
    assert_eq!(
        h.outcome(b),
        Outcome::Paused,
        "not resumed after it was gone"
    );
    assert_eq!(h.worker.tracked_requests(), 0);
}

#[test]
fn a_realm_key_in_the_body_is_looked_up_too() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), "").replacen(
        r#"{"identity_realms""#,
        r#"{"key_in_body":true,"identity_realms""#,
        1,
    ));
    let ctx =
        h.start(Req::new("POST", "/").body("application/json", r#"{"apikey":"realm-key","x":1}"#));
    assert_eq!(h.outcome(ctx), Outcome::Paused);
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    let o = h.outcome(ctx);
    assert_eq!(o.status(), 200);
    assert_eq!(o.body(), r#"{"x":1}"#);
}

#[test]
fn reconfiguration_keeps_the_cache_of_the_same_realm() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    let ctx = h.start(key("realm-key"));
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_eq!(h.outcome(ctx).status(), 200);
    h.new_root(&config(&format!("{CP},{}", realm(REALM_A, "eu")), ""));
    assert_realm_consumer(&h.send(key("realm-key")));
    assert_eq!(h.host.calls.len(), 1);
}

#[test]
fn a_body_edit_waits_for_the_realm_answer() {
    for with_paused_headers in [true, false] {
        let mut h = Harness::new(&config(&realm(REALM_A, "us"), "").replacen(
            r#"{"identity_realms""#,
            r#"{"key_in_body":true,"identity_realms""#,
            1,
        ));
        h.body_with_paused_headers = with_paused_headers;
        let ctx = h.start(
            Req::new("POST", "/")
                .header("apikey", "realm-key")
                .body("application/x-www-form-urlencoded", "a=1&apikey=zzz"),
        );
        assert_eq!(h.outcome(ctx), Outcome::Paused);
        let t = h.last_call().token;
        h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
        let o = h.outcome(ctx);
        assert_realm_consumer(&o);
        assert_eq!(o.body(), "a=1", "with_paused_headers={with_paused_headers}");
        assert_eq!(o.header("content-length"), None);
    }
}

#[test]
fn a_dead_look_up_is_not_joined() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    let first = h.start(key("realm-key"));
    // The client goes away and no answer ever comes; the tick has not cleaned up yet.
    h.done(first);
    h.host.now += 2_000;
    let ctx = h.start(key("realm-key"));
    assert_eq!(
        h.host.calls.len(),
        2,
        "a new call, not a wait on the dead one"
    );
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_realm_consumer(&h.outcome(ctx));
    // Look-ups whose requests are all gone are dropped by the tick.
    let gone = h.start(key("other-key"));
    h.done(gone);
    h.host.now += 2_000;
    h.tick();
    assert_eq!(h.worker.lookups_in_flight(), 0);
}

#[test]
fn requests_waiting_on_a_dead_look_up_are_answered_when_a_new_request_replaces_it() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    // A request waits for a call whose answer never comes (its receiver is still there).
    let waiter = h.start(key("realm-key"));
    // Past the deadline, a new request for the same key arrives before the tick.
    h.host.now += 2_000;
    let later = h.start(key("realm-key"));
    assert_eq!(
        h.host.calls.len(),
        2,
        "a new call, not a wait on the dead one"
    );
    // The waiter is not left paused until the proxy's stream timeout: it is given up like the
    // tick gives up a dead look-up (503), at the latest on the next tick.
    h.tick();
    assert_eq!(h.outcome(waiter).status(), 503, "{:?}", h.outcome(waiter));
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_realm_consumer(&h.outcome(later));
    h.done(waiter);
    h.done(later);
    assert_eq!(h.worker.tracked_requests(), 0);
    assert_eq!(h.worker.lookups_in_flight(), 0);
}

#[test]
fn a_reused_context_id_never_gets_the_answer_for_its_predecessor_s_key() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    let owner = h.start(key("key-of-ariel"));
    let gone = h.start(key("key-of-ariel"));
    h.done(gone);
    // The host gives the finished stream's id to a new request with another key.
    h.start_as(gone, key("key-of-nobody"));
    assert_eq!(h.host.calls.len(), 2);
    let (first, second) = (h.host.calls[0].token, h.host.calls[1].token);
    h.answer(first, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_realm_consumer(&h.outcome(owner));
    assert_eq!(
        h.outcome(gone),
        Outcome::Paused,
        "still waiting for the answer about its own key"
    );
    h.answer(second, Some(404), &not_found(5));
    assert_eq!(h.outcome(gone).status(), 401);

    // Nor is its key asked again under its predecessor's look-up (whose answer would then be
    // cached for the other key) when that look-up has lost its receiver.
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    let owner = h.start(key("key-of-ariel"));
    let gone = h.start(key("key-of-ariel"));
    h.done(gone);
    h.start_as(gone, key("key-of-nobody"));
    h.done(owner);
    h.tick();
    assert_eq!(h.host.calls.len(), 2, "{:?}", h.host.calls);
    let second = h.host.calls[1].token;
    h.answer(second, Some(201), &found("rc-2", "nobody", "rk-2", 10));
    assert_eq!(h.outcome(gone).header("x-consumer-id"), Some("rc-2"));
    // ariel's key was never answered: it costs a call of its own.
    let later = h.start(key("key-of-ariel"));
    assert_eq!(h.host.calls.len(), 3);
    assert_eq!(h.last_call().body, r#"{"secret":"key-of-ariel"}"#);
    h.answer(
        h.last_call().token,
        Some(201),
        &found("rc-1", "ariel", "rk-1", 10),
    );
    assert_realm_consumer(&h.outcome(later));
}

/// Review fix 2: key_in_body + hide_credentials, the key in a header and in the body, a cache
/// miss, the body in chunks and the realm answer arriving mid-upload. The filter must not resume
/// the request before the body edit is complete: Envoy would forward the chunk it holds (with
/// the key) and the edit at the end would only see the tail.
#[test]
fn a_body_in_chunks_with_the_answer_mid_upload_never_leaks_the_key() {
    for with_paused_headers in [true, false] {
        let mut h = Harness::new(&config(&realm(REALM_A, "us"), "").replacen(
            r#"{"identity_realms""#,
            r#"{"key_in_body":true,"hide_credentials":true,"identity_realms""#,
            1,
        ));
        h.body_with_paused_headers = with_paused_headers;
        let ctx = h.start(Req::new("POST", "/").header("apikey", "realm-key").chunks(
            "application/x-www-form-urlencoded",
            &["apikey=realm-key&a=1", "&b=2", "&c=3"],
        ));
        assert_eq!(h.outcome(ctx), Outcome::Paused);
        let t = h.last_call().token;
        h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
        let so_far = h.upstream_so_far(ctx).unwrap_or_default();
        assert!(
            !so_far.contains("realm-key"),
            "with_paused_headers={with_paused_headers}: the key went upstream: {so_far:?}"
        );
        h.next_chunk(ctx);
        h.next_chunk(ctx);
        let o = h.outcome(ctx);
        assert_realm_consumer(&o);
        assert_eq!(o.header("apikey"), None);
        assert_eq!(
            o.body(),
            "a=1&b=2&c=3",
            "with_paused_headers={with_paused_headers}"
        );
        assert_eq!(h.worker.tracked_requests(), 0);
    }
}

/// The same body, with the answer before any of the body reached the filter and after all of
/// it did: both end with the key removed.
#[test]
fn a_body_in_chunks_is_edited_whenever_the_answer_comes() {
    for answer_after_chunk in 0..3 {
        let mut h = Harness::new(&config(&realm(REALM_A, "us"), "").replacen(
            r#"{"identity_realms""#,
            r#"{"key_in_body":true,"hide_credentials":true,"identity_realms""#,
            1,
        ));
        let ctx = h.start(Req::new("POST", "/").header("apikey", "realm-key").chunks(
            "application/json",
            &[r#"{"x":1,"#, r#""apikey":"realm-key","#, r#""y":2}"#],
        ));
        let t = h.last_call().token;
        for sent in 0..2 {
            if sent == answer_after_chunk {
                h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
            }
            h.next_chunk(ctx);
        }
        if answer_after_chunk == 2 {
            h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 10));
        }
        let o = h.outcome(ctx);
        assert_realm_consumer(&o);
        assert_eq!(
            o.body(),
            r#"{"x":1,"y":2}"#,
            "answer after chunk {answer_after_chunk}"
        );
    }
}

/// Review fix 4: the same realm under two regions. A request never joins a look-up made in
/// another region: its answer says nothing about whether this region could answer.
#[test]
fn a_request_never_joins_a_look_up_made_in_another_region() {
    let mut h = Harness::new(&config(
        &format!("{},{}", realm(REALM_A, "us"), realm(REALM_A, "eu")),
        "",
    ));
    let first = h.start(key("realm-key"));
    let us = h.last_call().clone();
    assert_eq!(us.cluster, "realm_us");
    h.answer(us.token, Some(503), "down");
    let eu = h.last_call().clone();
    assert_eq!(eu.cluster, "realm_eu", "us unavailable: eu is asked");
    // A second request for the key starts with the "us" entry: it asks "us" itself rather
    // than waiting for the "eu" call.
    let second = h.start(key("realm-key"));
    assert_eq!(h.host.calls.len(), 3);
    let second_us = h.last_call().clone();
    assert_eq!(second_us.cluster, "realm_us");
    h.answer(eu.token, Some(201), &found("rc-1", "ariel", "rk-1", 10));
    assert_realm_consumer(&h.outcome(first));
    h.answer(
        second_us.token,
        Some(201),
        &found("rc-1", "ariel", "rk-1", 10),
    );
    assert_realm_consumer(&h.outcome(second));
}

/// Review fix 1: a configuration change makes Envoy create a new root context in the same VM.
/// The cache (and stale-if-error with it) and the look-ups in flight survive it.
#[test]
fn a_new_root_context_keeps_the_cache_and_the_look_ups_in_flight() {
    let mut h = Harness::new(&config(&realm(REALM_A, "us"), ""));
    let cached = h.start(key("cached-key"));
    let t = h.last_call().token;
    h.answer(t, Some(201), &found("rc-1", "ariel", "rk-1", 1));
    assert_realm_consumer(&h.outcome(cached));
    let waiting = h.start(key("realm-key"));
    let in_flight = h.last_call().clone();

    // The configuration changes (another key name, the same realm and token).
    h.new_root(&config(&realm(REALM_A, "us"), "").replacen(
        r#"{"identity_realms""#,
        r#"{"key_names":["apikey","x-key"],"identity_realms""#,
        1,
    ));
    let joined = h.start(key("realm-key"));
    assert_eq!(
        h.host.calls.len(),
        2,
        "joined the look-up of the old root context"
    );
    h.answer(
        in_flight.token,
        Some(201),
        &found("rc-1", "ariel", "rk-1", 10),
    );
    assert_realm_consumer(&h.outcome(waiting));
    assert_realm_consumer(&h.outcome(joined));

    // Past the cached key's ttl, with the realm down: stale-if-error serves it under the new
    // root context.
    h.host.now += 2 * MINUTE;
    let stale = h.start(key("cached-key"));
    let t = h.last_call().token;
    h.answer(t, None, "");
    assert_realm_consumer(&h.outcome(stale));
    assert_eq!(h.metric(Metric::CacheStale), 1);
}
