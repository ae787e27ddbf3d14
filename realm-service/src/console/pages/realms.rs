//! Realms: list, create, show (with its consumers), edit, delete.

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{call, done, encode, failed, ids, integer, list as list_of, FormData, Page, Posted};
use crate::console::client::Problem;
use crate::console::session::Signed;
use crate::console::views::{self, Errors, Section};
use crate::console::Console;

/// Consumers per page on a realm's page.
const PAGE_SIZE: u32 = 20;

pub async fn list(State(console): State<Console>, signed: Signed) -> Response {
    let api = console.api();
    let loaded: Result<_, Problem> = async {
        let realms = api.get_all(&signed.token, "/v1/realms", 1000).await?;
        let (cps, _) = api
            .get_all(&signed.token, "/v2/control-planes", 1000)
            .await?;
        Ok((realms, cps))
    }
    .await;
    let ((realms, more), cps) = match loaded {
        Ok(x) => x,
        Err(problem) => return failed(&console, &signed, problem),
    };
    let body = html! {
        (views::heading(&[], "Realms", html! { a.button.primary href="/console/realms/new" { "New realm" } }))
        p.muted { "A realm holds centrally-managed consumers and their keys. Gateways of the control planes a realm allows look keys up in it." }
        section.card {
            @if realms.is_empty() {
                p.empty { "No realms yet. " a href="/console/realms/new" { "Create the first one." } }
            } @else {
                table #realms {
                    thead { tr { th { "Name" } th { "Allowed control planes" } th { "TTL / negative TTL" } th { "Consumer groups" } th { "Created" } } }
                    tbody {
                        @for r in &realms {
                            tr {
                                td { a href=(format!("/console/realms/{}", views::text(r, "id"))) { (views::text(r, "name")) } br; code.id { (views::text(r, "id")) } }
                                td {
                                    @if r.get("allow_all_control_planes").and_then(Value::as_bool).unwrap_or(false) {
                                        span.tag.all { "all control planes" }
                                    } @else {
                                        @let allowed = views::strings(r, "allowed_control_planes");
                                        @if allowed.is_empty() { span.muted { "none" } }
                                        @for cp in &allowed { span.tag { (cp_name(&cps, cp)) } }
                                    }
                                }
                                td { (r.get("ttl").and_then(Value::as_i64).unwrap_or(0)) " / " (r.get("negative_ttl").and_then(Value::as_i64).unwrap_or(0)) " min" }
                                td { (views::tags(&views::strings(r, "consumer_groups"))) }
                                td { (views::when(views::text(r, "created_at"))) }
                            }
                        }
                    }
                }
                @if more { p.muted { "Showing the first 1000." } }
            }
        }
    };
    views::page("Realms", Section::Realms, &signed, body)
}

/// What the realm form holds, as typed.
#[derive(Default)]
struct RealmValues {
    name: String,
    allow_all: bool,
    control_planes: Vec<String>,
    ttl: String,
    negative_ttl: String,
    groups: String,
}

impl RealmValues {
    fn from_form(form: &FormData) -> RealmValues {
        RealmValues {
            name: form.get("name").to_string(),
            allow_all: form.has("allow_all_control_planes"),
            control_planes: form
                .all("allowed_control_planes")
                .into_iter()
                .map(str::to_string)
                .collect(),
            ttl: form.get("ttl").to_string(),
            negative_ttl: form.get("negative_ttl").to_string(),
            groups: form.get("consumer_groups").to_string(),
        }
    }

    fn from_realm(realm: &Value) -> RealmValues {
        let number = |k: &str| {
            realm
                .get(k)
                .and_then(Value::as_i64)
                .map(|n| n.to_string())
                .unwrap_or_default()
        };
        RealmValues {
            name: views::text(realm, "name").to_string(),
            allow_all: realm
                .get("allow_all_control_planes")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            control_planes: views::strings(realm, "allowed_control_planes"),
            ttl: number("ttl"),
            negative_ttl: number("negative_ttl"),
            groups: views::strings(realm, "consumer_groups").join(", "),
        }
    }

    fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("name".into(), json!(self.name));
        body.insert("allow_all_control_planes".into(), json!(self.allow_all));
        body.insert("allowed_control_planes".into(), json!(self.control_planes));
        for (key, value) in [("ttl", &self.ttl), ("negative_ttl", &self.negative_ttl)] {
            if !value.trim().is_empty() {
                body.insert(key.into(), integer(value));
            }
        }
        body.insert("consumer_groups".into(), list_of(&self.groups));
        Value::Object(body)
    }
}

const REALM_FIELDS: &[&str] = &[
    "name",
    "allow_all_control_planes",
    "allowed_control_planes",
    "ttl",
    "negative_ttl",
    "consumer_groups",
];

/// A control plane's name (its id when it is not among `cps`).
fn cp_name(cps: &[Value], cp_id: &str) -> String {
    cps.iter()
        .find(|c| views::text(c, "id") == cp_id)
        .map(|c| views::text(c, "name").to_string())
        .unwrap_or_else(|| cp_id.to_string())
}

async fn control_planes(console: &Console, signed: &Signed) -> Result<Vec<Value>, Problem> {
    Ok(console
        .api()
        .get_all(&signed.token, "/v2/control-planes", 1000)
        .await?
        .0)
}

fn realm_form(
    signed: &Signed,
    action: &str,
    submit: &str,
    values: &RealmValues,
    cps: &[Value],
    errors: &Errors,
) -> Markup {
    html! {
        (errors.banner())
        form.realm-form method="post" action=(action) {
            (views::csrf(signed))
            (views::field("Name", "name", "text", &values.name, "1-255 characters, e.g. prod.", errors))
            fieldset class=(views::field_class(errors, "allowed_control_planes")) {
                legend { "Control planes allowed to look keys up" }
                label.check {
                    input type="checkbox" name="allow_all_control_planes" value="true" checked[values.allow_all];
                    " All control planes"
                }
                @if cps.is_empty() {
                    p.hint { "No control planes exist yet. " a href="/console/control-planes" { "Create one" } " first, or allow all." }
                }
                @for cp in cps {
                    @let cp_id = views::text(cp, "id");
                    label.check {
                        input type="checkbox" name="allowed_control_planes" value=(cp_id) checked[values.control_planes.iter().any(|c| c == cp_id)];
                        " " (views::text(cp, "name")) " " code.id { (cp_id) }
                    }
                }
                (views::field_error(errors, "allowed_control_planes"))
            }
            div.row {
                (views::field("TTL (minutes)", "ttl", "text", &values.ttl, "How long gateways may cache a found key; 5-525600, default 10.", errors))
                (views::field("Negative TTL (minutes)", "negative_ttl", "text", &values.negative_ttl, "How long gateways may cache a miss; 5-525600, default 10.", errors))
            }
            (views::field("Consumer groups", "consumer_groups", "text", &values.groups, "Comma-separated; every consumer of the realm is in these groups.", errors))
            (views::field_error(errors, "allow_all_control_planes"))
            div.form-actions { button.button.primary type="submit" { (submit) } }
        }
    }
}

pub async fn new_form(State(console): State<Console>, signed: Signed) -> Page {
    let cps = control_planes(&console, &signed)
        .await
        .map_err(|problem| failed(&console, &signed, problem))?;
    let values = RealmValues::default();
    Ok(render_form(
        &signed,
        None,
        &values,
        &cps,
        &Errors::none(),
        StatusCode::OK,
    ))
}

/// The new-realm form, or the edit form of `realm`.
fn render_form(
    signed: &Signed,
    realm: Option<&str>,
    values: &RealmValues,
    cps: &[Value],
    errors: &Errors,
    status: StatusCode,
) -> Response {
    let mut crumbs = vec![("Realms", "/console/realms".to_string())];
    let (title, action, submit) = match realm {
        None => (
            "New realm",
            "/console/realms/new".to_string(),
            "Create realm",
        ),
        Some(realm) => {
            crumbs.push((values.name.as_str(), format!("/console/realms/{realm}")));
            (
                "Edit realm",
                format!("/console/realms/{realm}/edit"),
                "Save changes",
            )
        }
    };
    let body = html! {
        (views::heading(&crumbs, title, html! {}))
        section.card.form-card { (realm_form(signed, &action, submit, values, cps, errors)) }
    };
    views::page_with_status(status, title, Section::Realms, signed, body)
}

/// The form of `realm` (or the new one) shown again with the API's `problem` at its fields.
async fn form_again(
    console: &Console,
    signed: &Signed,
    realm: Option<&str>,
    values: &RealmValues,
    problem: &Problem,
) -> Page {
    let cps = control_planes(console, signed)
        .await
        .map_err(|problem| failed(console, signed, problem))?;
    let errors = Errors::from_problem(problem, REALM_FIELDS);
    Ok(render_form(
        signed,
        realm,
        values,
        &cps,
        &errors,
        problem.status,
    ))
}

pub async fn create(State(console): State<Console>, posted: Posted) -> Page {
    let Posted { signed, form } = posted;
    let values = RealmValues::from_form(&form);
    match call(
        &console,
        &signed,
        Method::POST,
        "/v1/realms",
        Some(&values.body()),
    )
    .await
    {
        Ok(realm) => Ok(done(
            &console,
            &signed,
            &format!("/console/realms/{}", views::text(&realm, "id")),
            format!("Realm {} created.", views::text(&realm, "name")),
        )),
        Err(problem) if problem.is_unauthorized() => Err(failed(&console, &signed, problem)),
        Err(problem) => form_again(&console, &signed, None, &values, &problem).await,
    }
}

pub async fn edit_form(
    State(console): State<Console>,
    signed: Signed,
    Path(realm): Path<String>,
) -> Page {
    let [realm] = ids([&realm])?;
    let loaded: Result<_, Problem> = async {
        let r = console
            .api()
            .get(&signed.token, &format!("/v1/realms/{realm}"))
            .await?;
        Ok((r, control_planes(&console, &signed).await?))
    }
    .await;
    let (r, cps) = loaded.map_err(|problem| failed(&console, &signed, problem))?;
    let values = RealmValues::from_realm(&r);
    Ok(render_form(
        &signed,
        Some(&realm),
        &values,
        &cps,
        &Errors::none(),
        StatusCode::OK,
    ))
}

pub async fn update(
    State(console): State<Console>,
    Path(realm): Path<String>,
    Posted { signed, form }: Posted,
) -> Page {
    let [realm] = ids([&realm])?;
    let values = RealmValues::from_form(&form);
    let path = format!("/v1/realms/{realm}");
    match call(
        &console,
        &signed,
        Method::PATCH,
        &path,
        Some(&values.body()),
    )
    .await
    {
        Ok(r) => Ok(done(
            &console,
            &signed,
            &format!("/console/realms/{realm}"),
            format!("Realm {} saved.", views::text(&r, "name")),
        )),
        Err(problem) if problem.is_unauthorized() || problem.status == StatusCode::NOT_FOUND => {
            Err(failed(&console, &signed, problem))
        }
        Err(problem) => form_again(&console, &signed, Some(&realm), &values, &problem).await,
    }
}

#[derive(Deserialize, Default)]
pub struct ConsumerQuery {
    q: Option<String>,
    after: Option<String>,
    before: Option<String>,
}

/// The `page[after]` / `page[before]` cursor in an API `next` / `previous` link.
fn cursor(link: Option<&str>, name: &str) -> Option<String> {
    let query = link?.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn cursor_ok(c: &str) -> bool {
    !c.is_empty() && c.len() <= 16 && c.bytes().all(|b| b.is_ascii_hexdigit())
}

pub async fn show(
    State(console): State<Console>,
    signed: Signed,
    Path(realm): Path<String>,
    Query(query): Query<ConsumerQuery>,
) -> Page {
    let [realm] = ids([&realm])?;
    let api = console.api();
    let q = query.q.as_deref().map(str::trim).unwrap_or("");
    let loaded: Result<_, Problem> = async {
        let r = api
            .get(&signed.token, &format!("/v1/realms/{realm}"))
            .await?;
        let cps = control_planes(&console, &signed).await?;
        let base = format!("/v1/realms/{realm}/consumers");
        let (consumers, prev, next) = if !q.is_empty() {
            // Search: an exact username or custom_id (the API's filters), both asked.
            let mut found = Vec::new();
            for filter in ["username", "custom_id"] {
                let page = api
                    .get(
                        &signed.token,
                        &format!(
                            "{base}?filter%5B{filter}%5D={}&page%5Bsize%5D=100",
                            encode(q)
                        ),
                    )
                    .await?;
                for c in page
                    .get("data")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if !found
                        .iter()
                        .any(|f: &Value| views::text(f, "id") == views::text(c, "id"))
                    {
                        found.push(c.clone());
                    }
                }
            }
            (found, None, None)
        } else {
            let mut url = format!("{base}?page%5Bsize%5D={PAGE_SIZE}");
            if let Some(after) = query.after.as_deref().filter(|c| cursor_ok(c)) {
                url.push_str(&format!("&page%5Bafter%5D={after}"));
            } else if let Some(before) = query.before.as_deref().filter(|c| cursor_ok(c)) {
                url.push_str(&format!("&page%5Bbefore%5D={before}"));
            }
            let page = api.get(&signed.token, &url).await?;
            let data = page
                .get("data")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let prev = cursor(
                page.pointer("/meta/page/previous").and_then(Value::as_str),
                "page[before]",
            );
            let next = cursor(
                page.pointer("/meta/page/next").and_then(Value::as_str),
                "page[after]",
            );
            (data, prev, next)
        };
        Ok((r, cps, consumers, prev, next))
    }
    .await;
    let (r, cps, consumers, prev, next) =
        loaded.map_err(|problem| failed(&console, &signed, problem))?;
    let name = views::text(&r, "name");
    let body = html! {
        (views::heading(&[("Realms", "/console/realms".to_string())], name, html! {
            a.button href=(format!("/console/realms/{realm}/edit")) { "Edit" }
            (views::post_button(&signed, &format!("/console/realms/{realm}/delete"), "Delete realm", "button danger",
                &format!("Delete realm {name}?")))
        }))
        section.card {
            dl.props.wide {
                dt { "Id" } dd { code #realm-id { (realm) } }
                dt { "Allowed control planes" }
                dd {
                    @if r.get("allow_all_control_planes").and_then(Value::as_bool).unwrap_or(false) {
                        span.tag.all { "all control planes" }
                    } @else {
                        @let allowed = views::strings(&r, "allowed_control_planes");
                        @if allowed.is_empty() { span.muted { "none: no gateway can look keys up yet" } }
                        @for cp in &allowed { a.tag href=(format!("/console/control-planes/{cp}")) { (cp_name(&cps, cp)) } }
                    }
                }
                dt { "TTL" } dd { (r.get("ttl").and_then(Value::as_i64).unwrap_or(0)) " min (found), " (r.get("negative_ttl").and_then(Value::as_i64).unwrap_or(0)) " min (not found)" }
                dt { "Consumer groups" } dd { (views::tags(&views::strings(&r, "consumer_groups"))) }
                dt { "Created" } dd { (views::when(views::text(&r, "created_at"))) }
            }
        }
        div.section-head {
            h2 { "Consumers" }
            form.search method="get" action=(format!("/console/realms/{realm}")) {
                input type="search" name="q" value=(q) placeholder="Username or custom id (exact)" aria-label="Search consumers";
                button.button type="submit" { "Search" }
                @if !q.is_empty() { a.button href=(format!("/console/realms/{realm}")) { "Clear" } }
            }
            a.button.primary href=(format!("/console/realms/{realm}/consumers/new")) { "New consumer" }
        }
        section.card {
            @if consumers.is_empty() {
                p.empty {
                    @if q.is_empty() { "No consumers in this realm yet." } @else { "No consumer has the username or custom id “" (q) "”." }
                }
            } @else {
                table #consumers {
                    thead { tr { th { "Username" } th { "Custom id" } th { "Type" } th { "Tags" } th { "Groups" } th { "Created" } } }
                    tbody {
                        @for c in &consumers {
                            tr {
                                td { a.username href=(format!("/console/realms/{realm}/consumers/{}", views::text(c, "id"))) { (views::text(c, "username")) } }
                                td { (views::opt_text(c, "custom_id").unwrap_or("—")) }
                                td { (views::opt_text(c, "type").unwrap_or("—")) }
                                td { (views::tags(&views::strings(c, "tags"))) }
                                td { (views::tags(&views::strings(c, "consumer_groups"))) }
                                td { (views::when(views::text(c, "created_at"))) }
                            }
                        }
                    }
                }
            }
            @if prev.is_some() || next.is_some() {
                nav.pager {
                    @if let Some(p) = &prev { a.button href=(format!("/console/realms/{realm}?before={p}")) { "← Previous" } }
                    @if let Some(n) = &next { a.button href=(format!("/console/realms/{realm}?after={n}")) { "Next →" } }
                }
            }
        }
    };
    Ok(views::page(name, Section::Realms, &signed, body))
}

pub async fn delete(
    State(console): State<Console>,
    Path(realm): Path<String>,
    Posted { signed, form }: Posted,
) -> Page {
    let [realm] = ids([&realm])?;
    let force = form.get("force") == "true";
    let path = format!("/v1/realms/{realm}?force={force}");
    match call(&console, &signed, Method::DELETE, &path, None).await {
        Ok(_) => Ok(done(&console, &signed, "/console/realms", "Realm deleted.")),
        // Not empty: ask explicitly, saying what goes with it.
        Err(problem) if !force && problem.fields.contains_key("force") => {
            Ok(confirm_delete(&console, &signed, &realm).await)
        }
        Err(problem) => Err(failed(&console, &signed, problem)),
    }
}

async fn confirm_delete(console: &Console, signed: &Signed, realm: &str) -> Response {
    let api = console.api();
    let loaded: Result<_, Problem> = async {
        let r = api
            .get(&signed.token, &format!("/v1/realms/{realm}"))
            .await?;
        let (consumers, more) = api
            .get_all(
                &signed.token,
                &format!("/v1/realms/{realm}/consumers"),
                10_000,
            )
            .await?;
        let mut keys = 0;
        for c in consumers.iter().take(500) {
            keys += api
                .get_all(
                    &signed.token,
                    &format!("/v1/realms/{realm}/consumers/{}/keys", views::text(c, "id")),
                    10_000,
                )
                .await?
                .0
                .len();
        }
        Ok((r, consumers.len(), keys, more || consumers.len() > 500))
    }
    .await;
    let (r, consumers, keys, more) = match loaded {
        Ok(x) => x,
        Err(problem) => return failed(console, signed, problem),
    };
    let name = views::text(&r, "name");
    let at_least = if more { "at least " } else { "" };
    let body = html! {
        (views::heading(&[("Realms", "/console/realms".to_string()), (name, format!("/console/realms/{realm}"))], "Delete realm?", html! {}))
        section.card.danger-zone {
            p #delete-summary { "Realm " strong { (name) } " still has " strong { (at_least) (consumers) " consumer" (if consumers == 1 { "" } else { "s" }) } " with " strong { (at_least) (keys) " key" (if keys == 1 { "" } else { "s" }) } ". Deleting the realm deletes them too; their keys stop working at every gateway at once. This cannot be undone." }
            form method="post" action=(format!("/console/realms/{realm}/delete")) {
                (views::csrf(signed))
                input type="hidden" name="force" value="true";
                div.form-actions {
                    a.button href=(format!("/console/realms/{realm}")) { "Cancel" }
                    button.button.danger #confirm-delete type="submit" { "Delete realm, " (consumers) (if consumers == 1 { " consumer" } else { " consumers" }) " and " (keys) (if keys == 1 { " key" } else { " keys" }) }
                }
            }
        }
    };
    views::page("Delete realm?", Section::Realms, signed, body)
}
