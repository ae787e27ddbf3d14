//! Check a key: paste a secret, pick a realm, see whose it is (`POST /v1/realms/{id}/check-key`).
//! The secret is posted in the form body, sent to the API in a JSON body, never put in a URL,
//! never logged, and not echoed back into the page.

use axum::extract::State;
use axum::http::Method;
use axum::response::Response;
use maud::{html, Markup};
use serde_json::{json, Value};

use super::{failed, id, realm_choices, Posted};
use crate::console::session::Signed;
use crate::console::views::{self, Errors, Section};
use crate::console::Console;

pub async fn form(State(console): State<Console>, signed: Signed) -> Response {
    let realms = match realm_choices(&console, &signed).await {
        Ok(r) => r,
        Err(problem) => return failed(&console, &signed, problem),
    };
    render(&signed, &realms, "", &Errors::none(), None)
}

fn render(
    signed: &Signed,
    realms: &[(String, String)],
    realm: &str,
    errors: &Errors,
    result: Option<Markup>,
) -> Response {
    let body = html! {
        (views::heading(&[], "Check a key", html! {}))
        div.grid2 {
            section.card {
                p.muted { "Paste a key that a client presents and pick the realm it should belong to. The console says which consumer and credential it is, or that it is unknown or expired. The key is not stored, logged or shown again." }
                (errors.banner())
                form method="post" action="/console/check-key" autocomplete="off" {
                    (views::csrf(signed))
                    div class=(views::field_class(errors, "realm")) {
                        label for="f-realm" { "Realm" }
                        select #f-realm name="realm" {
                            @for (rid, name) in realms {
                                option value=(rid) selected[rid == realm] { (name) " — " (rid) }
                            }
                        }
                        (views::field_error(errors, "realm"))
                    }
                    (views::field("Key", "secret", "password", "", "", errors))
                    button.button.primary type="submit" { "Check" }
                }
            }
            @if let Some(result) = result { (result) }
        }
    };
    views::page("Check a key", Section::CheckKey, signed, body)
}

pub async fn submit(State(console): State<Console>, posted: Posted) -> Response {
    let Posted { signed, form } = posted;
    let realms = match realm_choices(&console, &signed).await {
        Ok(r) => r,
        Err(problem) => return failed(&console, &signed, problem),
    };
    let realm = form.get("realm");
    if id(realm).is_err() {
        let mut errors = Errors::none();
        errors.fields.insert("realm".into(), "pick a realm".into());
        return render(&signed, &realms, realm, &errors, None);
    }
    let answer = console
        .api()
        .call(
            Some(&signed.token),
            Method::POST,
            &format!("/v1/realms/{realm}/check-key"),
            Some(&json!({ "secret": form.get("secret") })),
        )
        .await;
    match answer {
        Ok(check) => {
            let realm_name = realms
                .iter()
                .find(|(rid, _)| rid == realm)
                .map(|(_, n)| n.as_str())
                .unwrap_or(realm);
            let result = result_card(&check, realm, realm_name);
            render(&signed, &realms, realm, &Errors::none(), Some(result))
        }
        Err(problem) if problem.is_unauthorized() => failed(&console, &signed, problem),
        Err(problem) => render(
            &signed,
            &realms,
            realm,
            &Errors::from_problem(&problem.on_field("realm"), &["secret", "realm"]),
            None,
        ),
    }
}

fn result_card(check: &Value, realm: &str, realm_name: &str) -> Markup {
    let result = views::text(check, "result");
    let consumer = check.get("consumer").unwrap_or(&Value::Null);
    let credential = check.get("credential").unwrap_or(&Value::Null);
    let (class, title) = match result {
        "valid" => ("ok", "Valid key"),
        "expired" => ("warn", "Expired key"),
        _ => ("bad", "Unknown key"),
    };
    html! {
        section class={ "card result " (class) } #check-result data-result=(result) {
            h2 { (title) }
            @if result == "unknown" {
                p { "No key of realm " strong { (realm_name) } " has this secret. A gateway asking this realm would get 404 (and answer its client 401)." }
            } @else {
                @if result == "expired" {
                    p { "This key belonged to the consumer below but expired at " (views::when(views::text(credential, "expires_at"))) ". A gateway asking this realm gets 404." }
                } @else {
                    p { "A gateway asking realm " strong { (realm_name) } " (when its control plane is allowed) authenticates this key as:" }
                }
                dl.props {
                    dt { "Consumer" }
                    dd { a href=(format!("/console/realms/{realm}/consumers/{}", views::text(consumer, "id"))) #result-username { (views::text(consumer, "username")) } }
                    dt { "Consumer id" } dd { code { (views::text(consumer, "id")) } }
                    @if let Some(custom) = views::opt_text(consumer, "custom_id") { dt { "Custom id" } dd { (custom) } }
                    dt { "Credential id" } dd { code #result-credential { (views::text(credential, "id")) } }
                    dt { "Type" } dd { (views::text(credential, "type")) }
                    dt { "Created" } dd { (views::when(views::text(credential, "created_at"))) }
                    dt { "Expires" } dd { (views::opt_text(credential, "expires_at").map(views::when).unwrap_or_else(|| "never".into())) }
                }
            }
        }
    }
}
