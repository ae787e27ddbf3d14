//! The seed's story in real Envoy with the realm cluster on two realm-service replicas on one
//! PostgreSQL database (a throwaway cluster), one of them stopped halfway: the key keeps
//! working, and keys Envoy has never looked up are found through the surviving replica.

#[path = "../../realm-service/tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use keyrealm_tests::fixtures::RealmWorld;
use keyrealm_tests::{
    http_client, Checks, EchoUpstream, GatewayKind, RealmService, Reply, TOKEN_ENV,
};

const ADMIN: &str = "e2e-replicas-admin-token-0123456789abc";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_story_on_two_postgresql_replicas_survives_losing_one() {
    let cluster = pg::Cluster::start();
    let url = cluster.create_database().await;
    let first = RealmService::start_on(&url, ADMIN)
        .await
        .expect("replica 1");
    let mut second = RealmService::start_on(&url, ADMIN)
        .await
        .expect("replica 2");

    // The seed's calls, through the first replica.
    let world = RealmWorld::on(first).await.expect("realm world");
    let (first, realm_id) = (&world.service, &world.realm_id);
    let ariel = first
        .consumer_with_key(realm_id, "Ariel")
        .await
        .expect("consumer Ariel with a key");
    // Made through the second replica: every replica serves every write.
    let bob = second
        .consumer_with_key(realm_id, "Bob")
        .await
        .expect("consumer Bob with a key");

    let echo = EchoUpstream::start().await.expect("echo upstream");
    let mut spec = world.spec(echo.addr());
    spec.listener(world.seed_listener());
    spec.cluster("realm_us", second.addr())
        .env(TOKEN_ENV, &world.token);
    let gateway = GatewayKind::Envoy.start(&spec).await.expect("envoy");
    // Both replicas in the rotation before the first request (the stop below is what is tested).
    let both_healthy = gateway
        .wait_for_healthy_hosts("realm_us", 2, std::time::Duration::from_secs(10))
        .await
        .expect("envoy /clusters");
    assert!(
        both_healthy,
        "Envoy's health checks never passed for both replicas"
    );
    let http = http_client();
    let mut checks = Checks::new();

    let get = |secret: String, what: &'static str| {
        let request = http
            .get(gateway.url(0, "/anything"))
            .header("apikey", secret);
        Reply::send(what, request)
    };
    let ok = get(ariel.secret.clone(), "Ariel's key, both replicas up").await;
    checks.status("Ariel's key → 200 (both replicas up)", &ok, 200);
    checks.eq(
        "X-Consumer-Username",
        ok.upstream().header("x-consumer-username"),
        Some("Ariel".to_string()),
    );

    // Halfway: one replica goes away.
    second.stop().await;
    // Envoy's health check (every second) takes it out of the rotation.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;

    for round in 0..3 {
        let ok = get(ariel.secret.clone(), "Ariel's key, one replica left").await;
        checks.status(
            &format!("Ariel's key → 200 after the loss ({round})"),
            &ok,
            200,
        );
    }
    // Bob's key was never looked up by Envoy: found through the surviving replica.
    let ok = get(bob.secret.clone(), "Bob's key, one replica left").await;
    checks.status("Bob's key (never looked up) → 200 after the loss", &ok, 200);
    checks.eq(
        "Bob's X-Consumer-Username",
        ok.upstream().header("x-consumer-username"),
        Some("Bob".to_string()),
    );
    // And a key created after the loss, through the survivor.
    let carol = first
        .consumer_with_key(realm_id, "Carol")
        .await
        .expect("consumer Carol");
    for n in 0..4 {
        let ok = get(carol.secret.clone(), "Carol's new key").await;
        checks.status(
            &format!("Carol's key, created after the loss → 200 ({n})"),
            &ok,
            200,
        );
    }
    let wrong = get("another_key".to_string(), "another_key").await;
    checks.error("another_key → 401", &wrong, 401, "Unauthorized");
    checks.finish();
}
