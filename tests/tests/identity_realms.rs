//! `identity_realms` order: realm then cp, cp then realm, realm only, cp only, the default, two
//! realms (one through a region's cluster, one through `default`), and a key of realm A refused
//! through a configuration that names only realm B. Also: the realm consumer's headers (groups,
//! custom id, credential id) reach the upstream and client-sent copies do not.

use keyrealm_tests::fixtures::{cp_entry, realm_entry, RealmWorld};
use keyrealm_tests::{
    gateway_test, http_client, Checks, EchoUpstream, GatewayKind, GatewaySpec, Reply,
};
use serde_json::json;

const CP_USER_ID: &str = "c0c0c0c0-0000-4000-8000-0000000c0c0c";
const CP_CREDENTIAL_ID: &str = "c0c0c0c0-0000-4000-8000-0000000cc001";
const CP_SHARED_CREDENTIAL_ID: &str = "c0c0c0c0-0000-4000-8000-0000000cc002";
const CP_KEY: &str = "cp-key-of-cp-user";
/// A key that both realm A (consumer `shared-a`) and the control plane (`cp-user`) know.
const SHARED_KEY: &str = "shared-key-in-realm-a-and-cp";

async fn identity_realm_orders(kind: GatewayKind) {
    let world = RealmWorld::start().await.expect("realm world");
    let svc = &world.service;
    let realm_a = world.realm_id.clone();
    let realm_b = world.another_realm("realm-b").await.expect("realm B");
    let alice = svc
        .consumer_with_key_body(
            &realm_a,
            json!({"username": "alice", "custom_id": "alice-custom", "consumer_groups": ["gold", "silver"]}),
            json!({"type": "new"}),
        )
        .await
        .expect("alice in realm A");
    let shared_a = svc
        .consumer_with_key_body(
            &realm_a,
            json!({"username": "shared-a"}),
            json!({"type": "legacy", "secret": SHARED_KEY}),
        )
        .await
        .expect("shared-a in realm A");
    let bea = svc
        .consumer_with_key(&realm_b, "bea")
        .await
        .expect("bea in realm B");

    let echo = EchoUpstream::start().await.expect("echo upstream");
    let mut spec = GatewaySpec::new(echo.addr());
    for cluster in ["realm_us", "realm_eu", "realm_default"] {
        spec.cluster(cluster, svc.addr());
    }
    let realm_service = world.realm_service_config(
        json!({"us": "realm_us", "eu": "realm_eu", "default": "realm_default"}),
    );
    let consumers = json!([{
        "id": CP_USER_ID, "username": "cp-user",
        "keyauth_credentials": [
            {"id": CP_CREDENTIAL_ID, "key": CP_KEY},
            {"id": CP_SHARED_CREDENTIAL_ID, "key": SHARED_KEY},
        ],
    }]);
    let mut listener = |identity_realms: Option<serde_json::Value>| {
        let mut config = json!({"consumers": consumers, "realm_service": realm_service});
        if let Some(realms) = identity_realms {
            config["identity_realms"] = realms;
        }
        spec.listener(config)
    };
    let a_us = realm_entry(&realm_a, Some("us"));
    let realm_then_cp = listener(Some(json!([a_us, cp_entry()])));
    let cp_then_realm = listener(Some(json!([cp_entry(), a_us])));
    let realm_only = listener(Some(json!([a_us])));
    let cp_only = listener(Some(json!([cp_entry()])));
    let two_realms = listener(Some(json!([a_us, realm_entry(&realm_b, None)])));
    let only_b = listener(Some(json!([realm_entry(&realm_b, Some("eu"))])));
    let default_realms = listener(None);
    let gateway = kind.start(&spec).await.expect("gateway");
    let http = http_client();
    let mut c = Checks::new();

    // Sends `key` to `listener`; checks the answer is 200 as `username`, or 401 `Unauthorized`.
    let expect =
        async |c: &mut Checks, case: &str, listener: usize, key: &str, username: Option<&str>| {
            let r = Reply::send(
                case,
                http.get(gateway.url(listener, "/request"))
                    .header("apikey", key),
            )
            .await;
            match username {
                Some(username) => {
                    c.status(&format!("{case} → 200"), &r, 200);
                    c.eq(
                        &format!("{case}: X-Consumer-Username"),
                        r.upstream().header("x-consumer-username"),
                        Some(username.to_string()),
                    );
                }
                None => c.error(&format!("{case} → 401"), &r, 401, "Unauthorized"),
            }
            r
        };

    // realm then cp
    let r = expect(
        &mut c,
        "realm,cp: realm key",
        realm_then_cp,
        &alice.secret,
        Some("alice"),
    )
    .await;
    let up = r.upstream();
    c.eq(
        "realm consumer: X-Consumer-ID",
        up.header("x-consumer-id"),
        Some(alice.id.clone()),
    );
    c.eq(
        "realm consumer: X-Consumer-Custom-ID",
        up.header("x-consumer-custom-id"),
        Some("alice-custom".to_string()),
    );
    c.eq(
        "realm consumer: X-Credential-Identifier is the key's id",
        up.header("x-credential-identifier"),
        Some(alice.key_id.clone()),
    );
    let mut groups: Vec<String> = up
        .header("x-consumer-groups")
        .unwrap_or_default()
        .split(',')
        .map(|g| g.trim().to_string())
        .collect();
    groups.sort();
    c.eq(
        "realm consumer: X-Consumer-Groups",
        groups,
        vec!["gold".to_string(), "silver".to_string()],
    );
    c.eq(
        "realm consumer: no X-Anonymous-Consumer",
        up.header("x-anonymous-consumer"),
        None,
    );
    expect(
        &mut c,
        "realm,cp: cp key",
        realm_then_cp,
        CP_KEY,
        Some("cp-user"),
    )
    .await;
    let r = expect(
        &mut c,
        "realm,cp: key known to both → the realm's",
        realm_then_cp,
        SHARED_KEY,
        Some("shared-a"),
    )
    .await;
    c.eq(
        "realm,cp: key known to both → the realm's consumer id",
        r.upstream().header("x-consumer-id"),
        Some(shared_a.id.clone()),
    );
    expect(
        &mut c,
        "realm,cp: key of another realm",
        realm_then_cp,
        &bea.secret,
        None,
    )
    .await;
    expect(
        &mut c,
        "realm,cp: unknown key",
        realm_then_cp,
        "unknown-key",
        None,
    )
    .await;

    // cp then realm
    let r = expect(
        &mut c,
        "cp,realm: key known to both → the cp's",
        cp_then_realm,
        SHARED_KEY,
        Some("cp-user"),
    )
    .await;
    c.eq(
        "cp,realm: key known to both → the cp credential",
        r.upstream().header("x-credential-identifier"),
        Some(CP_SHARED_CREDENTIAL_ID.to_string()),
    );
    expect(
        &mut c,
        "cp,realm: realm key",
        cp_then_realm,
        &alice.secret,
        Some("alice"),
    )
    .await;
    let r = expect(
        &mut c,
        "cp,realm: cp key",
        cp_then_realm,
        CP_KEY,
        Some("cp-user"),
    )
    .await;
    c.eq(
        "cp consumer: X-Credential-Identifier",
        r.upstream().header("x-credential-identifier"),
        Some(CP_CREDENTIAL_ID.to_string()),
    );

    // realm only, cp only, default
    expect(
        &mut c,
        "realm only: realm key",
        realm_only,
        &alice.secret,
        Some("alice"),
    )
    .await;
    expect(&mut c, "realm only: cp key", realm_only, CP_KEY, None).await;
    expect(&mut c, "cp only: cp key", cp_only, CP_KEY, Some("cp-user")).await;
    expect(&mut c, "cp only: realm key", cp_only, &alice.secret, None).await;
    expect(
        &mut c,
        "default identity_realms: cp key",
        default_realms,
        CP_KEY,
        Some("cp-user"),
    )
    .await;
    expect(
        &mut c,
        "default identity_realms: realm key",
        default_realms,
        &alice.secret,
        None,
    )
    .await;

    // two realms
    expect(
        &mut c,
        "two realms: key of the first",
        two_realms,
        &alice.secret,
        Some("alice"),
    )
    .await;
    expect(
        &mut c,
        "two realms: key of the second (default cluster)",
        two_realms,
        &bea.secret,
        Some("bea"),
    )
    .await;
    expect(&mut c, "two realms: cp key", two_realms, CP_KEY, None).await;

    // a key of realm A through a configuration naming only realm B
    expect(
        &mut c,
        "only realm B: key of realm B",
        only_b,
        &bea.secret,
        Some("bea"),
    )
    .await;
    expect(
        &mut c,
        "only realm B: key of realm A is refused",
        only_b,
        &alice.secret,
        None,
    )
    .await;

    // spoofed consumer headers with realm consumers
    let spoof = |listener: usize, key: &str| {
        http.get(gateway.url(listener, "/request"))
            .header("apikey", key)
            .header("x-consumer-groups", "admins")
            .header("x-consumer-custom-id", "spoofed-custom")
            .header("x-anonymous-consumer", "true")
            .header("x-credential-identifier", "spoofed-credential")
    };
    let r = Reply::send("spoof alice", spoof(realm_then_cp, &alice.secret)).await;
    c.status("spoofed headers with alice's key: 200", &r, 200);
    let up = r.upstream();
    let groups = up.header("x-consumer-groups").unwrap_or_default();
    c.check(
        "spoof: X-Consumer-Groups is alice's only",
        !groups.contains("admins") && groups.contains("gold"),
        || format!("upstream saw {groups:?}"),
    );
    c.eq(
        "spoof: X-Consumer-Custom-ID is alice's",
        up.header("x-consumer-custom-id"),
        Some("alice-custom".to_string()),
    );
    c.eq(
        "spoof: no X-Anonymous-Consumer",
        up.header("x-anonymous-consumer"),
        None,
    );
    c.eq(
        "spoof: X-Credential-Identifier is alice's key id",
        up.header("x-credential-identifier"),
        Some(alice.key_id.clone()),
    );
    let r = Reply::send("spoof bea", spoof(only_b, &bea.secret)).await;
    c.status("spoofed headers with bea's key: 200", &r, 200);
    let up = r.upstream();
    c.eq(
        "spoof: bea has no groups",
        up.header("x-consumer-groups"),
        None,
    );
    c.eq(
        "spoof: bea has no custom id",
        up.header("x-consumer-custom-id"),
        None,
    );

    c.finish();
}

gateway_test!(identity_realm_orders);
