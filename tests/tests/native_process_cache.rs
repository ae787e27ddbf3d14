//! The native module keeps one cache per Envoy process: realm answers, negative entries and
//! look-ups in flight are shared by all worker threads. With 2 workers, a key costs one
//! authenticate call per ttl per process, not per worker (counted by the realm service's own
//! `realm_service_authenticate_total`).

use keyrealm_tests::fixtures::RealmWorld;
use keyrealm_tests::{http_client, Checks, EchoUpstream, GatewayKind, Reply};

const REQUESTS: usize = 20;

/// `listener.<addr>.worker_<n>.downstream_cx_total` of the gateway's listener 0.
fn worker_connections(stats: &str, worker: u32) -> f64 {
    let suffix = format!("worker_{worker}.downstream_cx_total");
    stats
        .lines()
        .filter(|l| l.starts_with("listener.127.0.0.1_") && l.contains(&suffix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_cache_per_envoy_process() {
    let world = RealmWorld::start().await.expect("realm world");
    let svc = &world.service;
    let crowd = svc
        .consumer_with_key(&world.realm_id, "crowd")
        .await
        .expect("consumer");
    let echo = EchoUpstream::start().await.expect("echo upstream");
    let mut spec = world.spec(echo.addr());
    spec.workers = Some(2);
    spec.listener(world.realm_listener());
    let gateway = GatewayKind::EnvoyNative
        .start(&spec)
        .await
        .expect("gateway");
    let mut c = Checks::new();
    let calls = || async { svc.authenticate_calls().await.expect("realm metrics") };
    // One client (one connection) per request, so that connections spread over both workers.
    let burst = |key: String| {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..REQUESTS {
            let request = http_client()
                .get(gateway.url(0, "/request"))
                .header("apikey", key.clone());
            tasks.spawn(async move { Reply::send("burst", request).await.status });
        }
        tasks.join_all()
    };

    let before = calls().await;
    let statuses = burst(crowd.secret.clone()).await;
    c.eq(
        "20 concurrent first requests for a new key: all 200",
        statuses,
        vec![200; REQUESTS],
    );
    c.eq(
        "20 concurrent first requests over 2 workers → 1 realm call",
        calls().await - before,
        1,
    );

    let before = calls().await;
    let statuses = burst(crowd.secret.clone()).await;
    c.eq("the same key again: all 200", statuses, vec![200; REQUESTS]);
    c.eq(
        "the same key again on both workers → no realm call (one cache per process)",
        calls().await - before,
        0,
    );

    let before = calls().await;
    let statuses = burst("no-such-key-anywhere".to_string()).await;
    c.eq("an unknown key: all 401", statuses, vec![401; REQUESTS]);
    let statuses = burst("no-such-key-anywhere".to_string()).await;
    c.eq(
        "the unknown key again: all 401",
        statuses,
        vec![401; REQUESTS],
    );
    c.eq(
        "40 requests with an unknown key over 2 workers → 1 realm call (negative entry shared)",
        calls().await - before,
        1,
    );

    // The test means something only if both workers took connections.
    let stats = reqwest::get(format!("http://{}/stats", gateway.admin_addr()))
        .await
        .expect("admin stats")
        .text()
        .await
        .expect("stats text");
    for worker in [0, 1] {
        let n = worker_connections(&stats, worker);
        c.check(
            &format!("worker {worker} served some of the connections"),
            n >= 1.0,
            || format!("worker_{worker}.downstream_cx_total = {n}"),
        );
    }
    c.finish();
}
