//! Consumers of a realm and their keys.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use serde_json::{json, Map, Value};

use super::{
    call, delete_then, done, failed, ids, integer, list as list_of, realm_choices, FormData, Page,
    Posted,
};
use crate::console::client::Problem;
use crate::console::session::Signed;
use crate::console::views::{self, Errors, Section};
use crate::console::Console;

/// What the consumer form holds, as typed.
#[derive(Default)]
struct ConsumerValues {
    username: String,
    custom_id: String,
    kind: String,
    tags: String,
    groups: String,
}

impl ConsumerValues {
    fn from_form(form: &FormData) -> ConsumerValues {
        ConsumerValues {
            username: form.get("username").to_string(),
            custom_id: form.get("custom_id").to_string(),
            kind: form.get("type").to_string(),
            tags: form.get("tags").to_string(),
            groups: form.get("consumer_groups").to_string(),
        }
    }

    fn from_consumer(c: &Value) -> ConsumerValues {
        ConsumerValues {
            username: views::text(c, "username").to_string(),
            custom_id: views::opt_text(c, "custom_id").unwrap_or("").to_string(),
            kind: views::opt_text(c, "type").unwrap_or("").to_string(),
            tags: views::strings(c, "tags").join(", "),
            groups: views::strings(c, "consumer_groups").join(", "),
        }
    }

    /// The API body. On edit an emptied `custom_id` / `type` is `null` (cleared); on create it is
    /// left out.
    fn body(&self, edit: bool) -> Value {
        let mut body = Map::new();
        body.insert("username".into(), json!(self.username));
        for (key, value) in [("custom_id", &self.custom_id), ("type", &self.kind)] {
            if !value.is_empty() {
                body.insert(key.into(), json!(value));
            } else if edit {
                body.insert(key.into(), Value::Null);
            }
        }
        body.insert("tags".into(), list_of(&self.tags));
        body.insert("consumer_groups".into(), list_of(&self.groups));
        Value::Object(body)
    }
}

const CONSUMER_FIELDS: &[&str] = &["username", "custom_id", "type", "tags", "consumer_groups"];

fn consumer_form(
    signed: &Signed,
    action: &str,
    submit: &str,
    values: &ConsumerValues,
    errors: &Errors,
) -> Markup {
    html! {
        (errors.banner())
        form method="post" action=(action) {
            (views::csrf(signed))
            (views::field("Username", "username", "text", &values.username, "Unique in the realm, 1-255 characters.", errors))
            div.row {
                (views::field("Custom id (optional)", "custom_id", "text", &values.custom_id, "Your own identifier, e.g. from a CRM.", errors))
                (views::field("Type (optional)", "type", "text", &values.kind, "Free text, e.g. developer or application.", errors))
            }
            (views::field("Tags", "tags", "text", &values.tags, "Comma-separated.", errors))
            (views::field("Consumer groups", "consumer_groups", "text", &values.groups, "Comma-separated; added to the realm's groups.", errors))
            div.form-actions { button.button.primary type="submit" { (submit) } }
        }
    }
}

async fn realm_name(console: &Console, signed: &Signed, realm: &str) -> Result<String, Problem> {
    let r = console
        .api()
        .get(&signed.token, &format!("/v1/realms/{realm}"))
        .await?;
    Ok(views::text(&r, "name").to_string())
}

pub async fn new_form(
    State(console): State<Console>,
    signed: Signed,
    Path(realm): Path<String>,
) -> Page {
    let [realm] = ids([&realm])?;
    let name = realm_name(&console, &signed, &realm)
        .await
        .map_err(|problem| failed(&console, &signed, problem))?;
    let values = ConsumerValues::default();
    Ok(render_form(
        &signed,
        &realm,
        &name,
        None,
        &values,
        &Errors::none(),
        StatusCode::OK,
    ))
}

/// The new-consumer form of `realm`, or the edit form of `consumer`.
fn render_form(
    signed: &Signed,
    realm: &str,
    realm_name: &str,
    consumer: Option<&str>,
    values: &ConsumerValues,
    errors: &Errors,
    status: StatusCode,
) -> Response {
    let mut crumbs = vec![
        ("Realms", "/console/realms".to_string()),
        (realm_name, format!("/console/realms/{realm}")),
    ];
    let (title, action, submit) = match consumer {
        None => (
            "New consumer",
            format!("/console/realms/{realm}/consumers/new"),
            "Create consumer",
        ),
        Some(consumer) => {
            let page = format!("/console/realms/{realm}/consumers/{consumer}");
            crumbs.push((values.username.as_str(), page.clone()));
            ("Edit consumer", format!("{page}/edit"), "Save changes")
        }
    };
    let body = html! {
        (views::heading(&crumbs, title, html! {}))
        section.card.form-card { (consumer_form(signed, &action, submit, values, errors)) }
    };
    views::page_with_status(status, title, Section::Realms, signed, body)
}

/// The consumer form posted: a new consumer of `realm`, or `consumer` edited. Saved, it redirects
/// to the consumer's page; refused, the form is shown again with the API's errors at its fields.
async fn save(
    console: &Console,
    signed: &Signed,
    realm: &str,
    consumer: Option<&str>,
    form: &FormData,
) -> Page {
    let values = ConsumerValues::from_form(form);
    let (method, path) = match consumer {
        None => (Method::POST, format!("/v1/realms/{realm}/consumers")),
        Some(c) => (Method::PATCH, format!("/v1/realms/{realm}/consumers/{c}")),
    };
    let body = values.body(consumer.is_some());
    match call(console, signed, method, &path, Some(&body)).await {
        Ok(c) => {
            let username = views::text(&c, "username");
            let (id, notice) = match consumer {
                None => (
                    views::text(&c, "id"),
                    format!("Consumer {username} created."),
                ),
                Some(id) => (id, format!("Consumer {username} saved.")),
            };
            let to = format!("/console/realms/{realm}/consumers/{id}");
            Ok(done(console, signed, &to, notice))
        }
        Err(problem) if problem.is_unauthorized() || problem.status == StatusCode::NOT_FOUND => {
            Err(failed(console, signed, problem))
        }
        Err(problem) => {
            // A 409 names no field: it is about the username.
            let problem = problem.conflict_on("username");
            let name = realm_name(console, signed, realm)
                .await
                .map_err(|p| failed(console, signed, p))?;
            let errors = Errors::from_problem(&problem, CONSUMER_FIELDS);
            Ok(render_form(
                signed,
                realm,
                &name,
                consumer,
                &values,
                &errors,
                problem.status,
            ))
        }
    }
}

pub async fn create(
    State(console): State<Console>,
    Path(realm): Path<String>,
    Posted { signed, form }: Posted,
) -> Page {
    let [realm] = ids([&realm])?;
    save(&console, &signed, &realm, None, &form).await
}

/// The consumer page's forms and their state after a submit.
#[derive(Default)]
struct ShowState<'a> {
    created_key: Option<&'a Value>,
    key_values: Option<(&'a str, &'a str, &'a str, &'a str)>,
    key_errors: Errors,
    move_target: &'a str,
    move_errors: Errors,
}

async fn render_show(
    console: &Console,
    signed: &Signed,
    realm: &str,
    consumer: &str,
    state: ShowState<'_>,
    status: StatusCode,
) -> Page {
    let api = console.api();
    let loaded: Result<_, Problem> = async {
        let r = api
            .get(&signed.token, &format!("/v1/realms/{realm}"))
            .await?;
        let c = api
            .get(
                &signed.token,
                &format!("/v1/realms/{realm}/consumers/{consumer}"),
            )
            .await?;
        let (keys, _) = api
            .get_all(
                &signed.token,
                &format!("/v1/realms/{realm}/consumers/{consumer}/keys"),
                1000,
            )
            .await?;
        let realms = realm_choices(console, signed).await?;
        Ok((r, c, keys, realms))
    }
    .await;
    let (r, c, keys, realms) = loaded.map_err(|problem| failed(console, signed, problem))?;
    let realm_name = views::text(&r, "name");
    let username = views::text(&c, "username");
    let now = crate::clock::rfc3339(crate::clock::now());
    let (key_type, key_secret, key_ttl, key_tags) = state.key_values.unwrap_or(("new", "", "", ""));
    let base = format!("/console/realms/{realm}/consumers/{consumer}");
    let body = html! {
        (views::heading(&[("Realms", "/console/realms".to_string()), (realm_name, format!("/console/realms/{realm}"))], username, html! {
            a.button href=(format!("{base}/edit")) { "Edit" }
            (views::post_button(signed, &format!("{base}/delete"), "Delete consumer", "button danger",
                &format!("Delete consumer {username}? Its keys are deleted and stop working at once.")))
        }))
        @if let Some(created) = state.created_key {
            (views::secret_once("key", views::text(created, "secret")))
        }
        section.card {
            dl.props.wide {
                dt { "Id" } dd { code #consumer-id { (consumer) } }
                dt { "Custom id" } dd { (views::opt_text(&c, "custom_id").unwrap_or("—")) }
                dt { "Type" } dd { (views::opt_text(&c, "type").unwrap_or("—")) }
                dt { "Tags" } dd { (views::tags(&views::strings(&c, "tags"))) }
                dt { "Consumer groups" } dd { (views::tags(&views::strings(&c, "consumer_groups"))) " " span.muted { "plus the realm's: " } (views::tags(&views::strings(&r, "consumer_groups"))) }
                dt { "Created" } dd { (views::when(views::text(&c, "created_at"))) }
            }
        }
        h2 { "Keys" }
        div.grid2 {
            section.card {
                @if keys.is_empty() {
                    p.empty { "No keys. Create one to let this consumer call APIs." }
                } @else {
                    table #keys {
                        thead { tr { th { "Id" } th { "Type" } th { "Created" } th { "Expires" } th { "Tags" } th {} } }
                        tbody {
                            @for k in &keys {
                                @let kid = views::text(k, "id");
                                @let expires = views::opt_text(k, "expires_at");
                                tr {
                                    td { code.id { (kid) } }
                                    td { (views::text(k, "type")) }
                                    td { (views::when(views::text(k, "created_at"))) }
                                    td {
                                        @match expires {
                                            None => span.muted { "never" },
                                            Some(e) if e <= now.as_str() => { span.tag.expired { "expired" } " " (views::when(e)) },
                                            Some(e) => (views::when(e)),
                                        }
                                    }
                                    td { (views::tags(&views::strings(k, "tags"))) }
                                    td.right { (views::post_button(signed, &format!("{base}/keys/{kid}/revoke"), "Revoke", "button small danger",
                                        "Revoke this key? Requests with it are refused at once.")) }
                                }
                            }
                        }
                    }
                }
            }
            section.card {
                h2 { "New key" }
                (state.key_errors.banner())
                form method="post" action=(format!("{base}/keys")) autocomplete="off" {
                    (views::csrf(signed))
                    fieldset.field {
                        legend { "Type" }
                        label.check { input type="radio" name="type" value="new" checked[key_type != "legacy"]; " New — the service generates a strong key (" code { "krk_…" } ")" }
                        label.check { input type="radio" name="type" value="legacy" checked[key_type == "legacy"]; " Legacy — bring an existing secret" }
                        (views::field_error(&state.key_errors, "type"))
                    }
                    (views::field("Legacy secret", "secret", "password", key_secret, "Only for legacy keys; 1-1024 characters, unique in the realm.", &state.key_errors))
                    div.row {
                        (views::field("TTL (seconds, optional)", "ttl", "text", key_ttl, "The key expires this long after it is created.", &state.key_errors))
                        (views::field("Tags", "tags", "text", key_tags, "Comma-separated.", &state.key_errors))
                    }
                    button.button.primary type="submit" { "Create key" }
                }
            }
        }
        section.card.move {
            h2 { "Move to another realm" }
            p.muted { "The consumer and its keys move; gateways find the keys in the target realm from the next look-up." }
            (state.move_errors.banner())
            form.inline-form method="post" action=(format!("{base}/move")) {
                (views::csrf(signed))
                div class=(views::field_class(&state.move_errors, "target_realm_id")) {
                    label for="f-target" { "Target realm" }
                    select #f-target name="target_realm_id" {
                        @for (rid, name) in realms.iter().filter(|(rid, _)| rid != realm) {
                            option value=(rid) selected[rid == state.move_target] { (name) " — " (rid) }
                        }
                    }
                    (views::field_error(&state.move_errors, "target_realm_id"))
                }
                button.button type="submit" disabled[realms.len() < 2] { "Move consumer" }
            }
        }
    };
    Ok(views::page_with_status(
        status,
        username,
        Section::Realms,
        signed,
        body,
    ))
}

pub async fn show(
    State(console): State<Console>,
    signed: Signed,
    Path((realm, consumer)): Path<(String, String)>,
) -> Page {
    let [realm, consumer] = ids([&realm, &consumer])?;
    let state = ShowState::default();
    render_show(&console, &signed, &realm, &consumer, state, StatusCode::OK).await
}

pub async fn edit_form(
    State(console): State<Console>,
    signed: Signed,
    Path((realm, consumer)): Path<(String, String)>,
) -> Page {
    let [realm, consumer] = ids([&realm, &consumer])?;
    let loaded: Result<_, Problem> = async {
        let name = realm_name(&console, &signed, &realm).await?;
        let c = console
            .api()
            .get(
                &signed.token,
                &format!("/v1/realms/{realm}/consumers/{consumer}"),
            )
            .await?;
        Ok((name, c))
    }
    .await;
    let (name, c) = loaded.map_err(|problem| failed(&console, &signed, problem))?;
    let values = ConsumerValues::from_consumer(&c);
    let errors = Errors::none();
    Ok(render_form(
        &signed,
        &realm,
        &name,
        Some(&consumer),
        &values,
        &errors,
        StatusCode::OK,
    ))
}

pub async fn update(
    State(console): State<Console>,
    Path((realm, consumer)): Path<(String, String)>,
    Posted { signed, form }: Posted,
) -> Page {
    let [realm, consumer] = ids([&realm, &consumer])?;
    save(&console, &signed, &realm, Some(&consumer), &form).await
}

pub async fn move_consumer(
    State(console): State<Console>,
    Path((realm, consumer)): Path<(String, String)>,
    Posted { signed, form }: Posted,
) -> Page {
    let [realm, consumer] = ids([&realm, &consumer])?;
    let target = form.get("target_realm_id");
    let path = format!("/v1/realms/{realm}/consumers/{consumer}/move");
    let body = json!({ "target_realm_id": target });
    match call(&console, &signed, Method::POST, &path, Some(&body)).await {
        Ok(_) => Ok(done(
            &console,
            &signed,
            &format!("/console/realms/{target}/consumers/{consumer}"),
            "Consumer moved with its keys.",
        )),
        Err(problem) if problem.is_unauthorized() => Err(failed(&console, &signed, problem)),
        Err(problem) => {
            let problem = problem.on_field("target_realm_id");
            let state = ShowState {
                move_target: target,
                move_errors: Errors::from_problem(&problem, &["target_realm_id"]),
                ..ShowState::default()
            };
            render_show(&console, &signed, &realm, &consumer, state, problem.status).await
        }
    }
}

pub async fn delete(
    State(console): State<Console>,
    Path((realm, consumer)): Path<(String, String)>,
    Posted { signed, .. }: Posted,
) -> Page {
    let [realm, consumer] = ids([&realm, &consumer])?;
    let path = format!("/v1/realms/{realm}/consumers/{consumer}");
    let to = format!("/console/realms/{realm}");
    Ok(delete_then(
        &console,
        &signed,
        &path,
        &to,
        "Consumer deleted with its keys.",
    )
    .await)
}

pub async fn create_key(
    State(console): State<Console>,
    Path((realm, consumer)): Path<(String, String)>,
    Posted { signed, form }: Posted,
) -> Page {
    let [realm, consumer] = ids([&realm, &consumer])?;
    let kind = form.get("type");
    let secret = form.get("secret");
    let ttl = form.get("ttl");
    let tags = form.get("tags");
    let mut body = Map::new();
    body.insert("type".into(), json!(kind));
    // The secret field is only for legacy keys: left empty it is not sent (the API then says it
    // is required for legacy); typed for a new key, it is the API's to refuse.
    if !secret.is_empty() {
        body.insert("secret".into(), json!(secret));
    }
    if !ttl.trim().is_empty() {
        body.insert("ttl".into(), integer(ttl));
    }
    body.insert("tags".into(), list_of(tags));
    let path = format!("/v1/realms/{realm}/consumers/{consumer}/keys");
    match call(
        &console,
        &signed,
        Method::POST,
        &path,
        Some(&Value::Object(body)),
    )
    .await
    {
        // Shown in this answer only (never redirected: the secret must not be in a URL).
        Ok(created) => {
            let state = ShowState {
                created_key: Some(&created),
                ..ShowState::default()
            };
            let status = StatusCode::CREATED;
            render_show(&console, &signed, &realm, &consumer, state, status).await
        }
        Err(problem) if problem.is_unauthorized() || problem.status == StatusCode::NOT_FOUND => {
            Err(failed(&console, &signed, problem))
        }
        Err(problem) => {
            let problem = problem.conflict_on("secret");
            let state = ShowState {
                // A legacy secret that was refused is kept so it can be corrected.
                key_values: Some((kind, secret, ttl, tags)),
                key_errors: Errors::from_problem(&problem, &["type", "secret", "ttl", "tags"]),
                ..ShowState::default()
            };
            render_show(&console, &signed, &realm, &consumer, state, problem.status).await
        }
    }
}

pub async fn revoke_key(
    State(console): State<Console>,
    Path((realm, consumer, key)): Path<(String, String, String)>,
    Posted { signed, .. }: Posted,
) -> Page {
    let [realm, consumer, key] = ids([&realm, &consumer, &key])?;
    let path = format!("/v1/realms/{realm}/consumers/{consumer}/keys/{key}");
    let to = format!("/console/realms/{realm}/consumers/{consumer}");
    Ok(delete_then(&console, &signed, &path, &to, format!("Key {key} revoked.")).await)
}
