use std::collections::HashSet;

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn walking_250_consumers_by_100_returns_each_exactly_once() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    let mut created = HashSet::new();
    for i in 0..250 {
        created.insert(app.consumer(&realm, &format!("user-{i:03}")).await);
    }
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut next = Some(format!("/v1/realms/{realm}/consumers?page[size]=100"));
    let mut pages = Vec::new();
    while let Some(path) = next {
        let body = app.get(&path).await.ok(200);
        assert_eq!(body["meta"]["page"]["size"], 100);
        let data = body["data"].as_array().unwrap();
        sizes.push(data.len());
        seen.extend(data.iter().map(id));
        next = body["meta"]["page"]["next"].as_str().map(str::to_string);
        pages.push(body);
        assert!(pages.len() <= 3, "more pages than expected");
    }
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(seen.len(), 250);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), created);
    // Creation order.
    assert_eq!(pages[0]["data"][0]["username"], "user-000");
    assert_eq!(pages[2]["data"][49]["username"], "user-249");
    assert_eq!(
        pages[0]["meta"]["page"]["previous"],
        serde_json::Value::Null
    );

    // `previous` of the last page leads back to the second page.
    let previous = pages[2]["meta"]["page"]["previous"]
        .as_str()
        .unwrap()
        .to_string();
    let back = app.get(&previous).await.ok(200);
    assert_eq!(back["data"], pages[1]["data"]);
}

#[tokio::test]
async fn filters_are_kept_in_next_links() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "prod"})).await;
    for i in 0..3 {
        app.post(
            &format!("/v1/realms/{realm}/consumers"),
            json!({"username": format!("u{i}"), "custom_id": "same"}),
        )
        .await
        .ok(201);
    }
    app.post(
        &format!("/v1/realms/{realm}/consumers"),
        json!({"username": "x", "custom_id": "other"}),
    )
    .await
    .ok(201);
    let first = app
        .get(&format!(
            "/v1/realms/{realm}/consumers?filter[custom_id]=same&page[size]=2"
        ))
        .await
        .ok(200);
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    let next = first["meta"]["page"]["next"].as_str().unwrap();
    assert!(
        next.starts_with(&format!("/v1/realms/{realm}/consumers?")),
        "{next}"
    );
    let second = app.get(next).await.ok(200);
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_eq!(second["data"][0]["username"], "u2");
    assert_eq!(second["meta"]["page"]["next"], serde_json::Value::Null);
}

#[tokio::test]
async fn every_list_has_the_same_page_shape() {
    let app = TestApp::new().await;
    let w = app.world().await;
    for path in [
        "/v2/control-planes".to_string(),
        format!("/v2/control-planes/{}/data-plane-tokens", w.cp),
        "/v1/realms".to_string(),
        format!("/v1/realms/{}/consumers", w.realm),
        format!("/v1/realms/{}/consumers/{}/keys", w.realm, w.consumer),
    ] {
        let body = app.get(&path).await.ok(200);
        assert_eq!(body["data"].as_array().unwrap().len(), 1, "{path}");
        assert_eq!(
            body["meta"],
            json!({"page": {"next": null, "previous": null, "size": 100}}),
            "{path}"
        );
        let sized = app.get(&format!("{path}?page[size]=1000")).await.ok(200);
        assert_eq!(sized["meta"]["page"]["size"], 1000);
        for bad in ["0", "1001", "-1", "ten", ""] {
            app.get(&format!("{path}?page[size]={bad}"))
                .await
                .invalid("page[size]");
        }
        app.get(&format!("{path}?page[after]=not-a-cursor"))
            .await
            .invalid("page[after]");
        app.get(&format!("{path}?page[size]=1&page[size]=2"))
            .await
            .invalid("page[size]");
        app.get(&format!("{path}?sort=name")).await.invalid("sort");
    }
}

/// Only cursors of the shape the service issues (and `/openapi.json` states) are accepted;
/// anything else, such as a sign or upper case that a lenient number parser would take, is a
/// 400 naming the parameter. `page[size]` is digits only.
#[tokio::test]
async fn cursors_and_sizes_of_another_shape_are_400() {
    let app = TestApp::new().await;
    for i in 0..3 {
        app.realm(json!({"name": format!("r{i}")})).await;
    }
    let first = app.get("/v1/realms?page[size]=1").await.ok(200);
    let next = first["meta"]["page"]["next"].as_str().unwrap().to_string();
    let second = app.get(&next).await.ok(200);
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_ne!(second["data"][0]["id"], first["data"][0]["id"]);

    let document = app.call("GET", "/openapi.json", None, None).await.ok(200);
    let parameters = document["paths"]["/v1/realms"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let schema_of = |name: &str| {
        parameters
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["schema"].clone())
            .unwrap()
    };
    assert_eq!(
        schema_of("page[after]")["pattern"],
        "^[0-7]?[0-9a-f]{1,15}$"
    );
    assert_eq!(
        schema_of("page[before]")["pattern"],
        "^[0-7]?[0-9a-f]{1,15}$"
    );
    assert_eq!(schema_of("page[size]")["minimum"], 1);
    assert_eq!(schema_of("page[size]")["maximum"], 1000);

    for name in ["page%5Bafter%5D", "page%5Bbefore%5D"] {
        for cursor in [
            "",
            "%2B1",
            "-0",
            "-1",
            "A",
            "0x1",
            "%201",
            "8000000000000000",
            "g",
        ] {
            let field = if name.contains("after") {
                "page[after]"
            } else {
                "page[before]"
            };
            app.get(&format!("/v1/realms?{name}={cursor}"))
                .await
                .invalid(field);
        }
    }
    for size in ["%2B5", "0", "-1", "1001", "1e2", "", "4294967297"] {
        app.get(&format!("/v1/realms?page%5Bsize%5D={size}"))
            .await
            .invalid("page[size]");
    }
    app.get("/v1/realms?page[size]=1000&page[after]=0")
        .await
        .ok(200);
    app.get("/v1/realms?page[after]=7fffffffffffffff")
        .await
        .ok(200);
}

#[tokio::test]
async fn a_walk_that_races_creates_deletes_and_moves_sees_each_stable_row_once() {
    let app = TestApp::new().await;
    let realm = app.realm(json!({"name": "walked"})).await;
    let elsewhere = app.realm(json!({"name": "elsewhere"})).await;
    // An older consumer of another realm, moved in during the walk: its position is older
    // than the cursor, so this walk may miss it, but never returns anything twice.
    let incoming = app.consumer(&elsewhere, "incoming").await;
    let mut stable = Vec::new();
    for i in 0..12 {
        stable.push(app.consumer(&realm, &format!("user-{i:02}")).await);
    }
    let doomed = [stable.remove(4), stable.remove(8)];
    let outgoing = stable.remove(9);
    let mut seen = Vec::new();
    let mut next = Some(format!("/v1/realms/{realm}/consumers?page[size]=3"));
    let mut added = Vec::new();
    let mut pages = 0;
    while let Some(path) = next {
        let body = app.get(&path).await.ok(200);
        seen.extend(body["data"].as_array().unwrap().iter().map(id));
        next = body["meta"]["page"]["next"].as_str().map(str::to_string);
        pages += 1;
        assert!(pages <= 10, "the walk does not end");
        match pages {
            1 => {
                for doomed in &doomed {
                    app.delete(&format!("/v1/realms/{realm}/consumers/{doomed}"))
                        .await
                        .ok(204);
                }
                added.push(app.consumer(&realm, "late-1").await);
            }
            2 => {
                app.post(
                    &format!("/v1/realms/{elsewhere}/consumers/{incoming}/move"),
                    json!({"target_realm_id": realm}),
                )
                .await
                .ok(201);
                app.post(
                    &format!("/v1/realms/{realm}/consumers/{outgoing}/move"),
                    json!({"target_realm_id": elsewhere}),
                )
                .await
                .ok(201);
                added.push(app.consumer(&realm, "late-2").await);
            }
            _ => {}
        }
    }
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a row came twice: {seen:?}");
    for consumer in stable.iter().chain(&added) {
        assert!(unique.contains(consumer), "{consumer} was skipped");
    }
    for doomed in &doomed {
        assert!(!unique.contains(doomed), "deleted {doomed} was listed");
    }
    assert!(
        !unique.contains(&outgoing),
        "the moved-out consumer was listed"
    );
    // Items come in creation order.
    let listed = app
        .get(&format!("/v1/realms/{realm}/consumers"))
        .await
        .ok(200);
    let names: Vec<_> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["username"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("incoming"));
    assert_eq!(names.last().map(String::as_str), Some("late-2"));
}
