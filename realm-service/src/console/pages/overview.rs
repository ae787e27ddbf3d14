//! The overview: counts, and the authenticate chart from the service's metrics.

use axum::extract::State;
use axum::response::Response;
use maud::html;
use serde_json::Value;

use super::failed;
use crate::console::client::Problem;
use crate::console::metrics;
use crate::console::session::Signed;
use crate::console::views::{self, Section};
use crate::console::Console;

/// Counting walks the lists through the API; beyond these it says "at least".
const MAX_COUNTED: usize = 10_000;
const MAX_CONSUMERS_FOR_KEYS: usize = 500;

struct Count {
    n: usize,
    more: bool,
}

impl Count {
    fn show(&self) -> String {
        if self.more {
            format!("≥ {}", self.n)
        } else {
            self.n.to_string()
        }
    }
}

struct Counts {
    realms: Count,
    consumers: Count,
    keys: Count,
    control_planes: Count,
}

async fn count(console: &Console, token: &str) -> Result<Counts, Problem> {
    let api = console.api();
    let (realms, realms_more) = api.get_all(token, "/v1/realms", MAX_COUNTED).await?;
    let (cps, cps_more) = api
        .get_all(token, "/v2/control-planes", MAX_COUNTED)
        .await?;
    let mut consumers: Vec<(String, Value)> = Vec::new();
    let mut consumers_more = realms_more;
    for realm in &realms {
        let realm_id = views::text(realm, "id");
        let left = MAX_COUNTED.saturating_sub(consumers.len());
        if left == 0 {
            consumers_more = true;
            break;
        }
        let (list, more) = api
            .get_all(token, &format!("/v1/realms/{realm_id}/consumers"), left)
            .await?;
        consumers_more |= more;
        consumers.extend(list.into_iter().map(|c| (realm_id.to_string(), c)));
    }
    let mut keys = 0;
    let mut keys_more = consumers_more || consumers.len() > MAX_CONSUMERS_FOR_KEYS;
    for (realm_id, consumer) in consumers.iter().take(MAX_CONSUMERS_FOR_KEYS) {
        let consumer_id = views::text(consumer, "id");
        let (list, more) = api
            .get_all(
                token,
                &format!("/v1/realms/{realm_id}/consumers/{consumer_id}/keys"),
                MAX_COUNTED,
            )
            .await?;
        keys += list.len();
        keys_more |= more;
    }
    Ok(Counts {
        realms: Count {
            n: realms.len(),
            more: realms_more,
        },
        consumers: Count {
            n: consumers.len(),
            more: consumers_more,
        },
        keys: Count {
            n: keys,
            more: keys_more,
        },
        control_planes: Count {
            n: cps.len(),
            more: cps_more,
        },
    })
}

async fn page_handler(console: Console, signed: Signed) -> Response {
    let counts = match count(&console, &signed.token).await {
        Ok(c) => c,
        Err(problem) => return failed(&console, &signed, problem),
    };
    let now = metrics::read(console.api()).await;
    let samples = console.sampler().with(now);
    let body = html! {
        (views::heading(&[], "Overview", html! {
            a.button href="/console/realms/new" { "New realm" }
            a.button href="/console/check-key" { "Check a key" }
        }))
        div.stats {
            a.stat href="/console/realms" { span.value #count-realms { (counts.realms.show()) } span.label { "realms" } }
            div.stat { span.value #count-consumers { (counts.consumers.show()) } span.label { "consumers" } }
            div.stat { span.value #count-keys { (counts.keys.show()) } span.label { "keys" } }
            a.stat href="/console/control-planes" { span.value #count-control-planes { (counts.control_planes.show()) } span.label { "control planes" } }
        }
        (metrics::charts(&samples))
    };
    views::page("Overview", Section::Overview, &signed, body)
}

pub async fn page(State(console): State<Console>, signed: Signed) -> Response {
    page_handler(console, signed).await
}
