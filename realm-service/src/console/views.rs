//! Page layout and form pieces (maud: every value is escaped unless it is `PreEscaped`).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use super::client::Problem;
use super::session::{Flash, Signed};

/// Which top-level section a page belongs to (highlighted in the navigation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Realms,
    ControlPlanes,
    CheckKey,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            title { (title) " · keyrealm console" }
            link rel="stylesheet" href="/console/assets/console.css";
            script src="/console/assets/console.js" defer {}
        }
    }
}

/// A signed-in page.
pub fn page(title: &str, section: Section, signed: &Signed, body: Markup) -> Response {
    let nav = [
        (Section::Overview, "/console/", "Overview"),
        (Section::Realms, "/console/realms", "Realms"),
        (
            Section::ControlPlanes,
            "/console/control-planes",
            "Control planes",
        ),
        (Section::CheckKey, "/console/check-key", "Check a key"),
    ];
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.topbar {
                    a.brand href="/console/" { span.logo { "k" } "keyrealm" span.sub { "realm console" } }
                    nav {
                        @for (s, href, label) in nav {
                            a href=(href) class=[(s == section).then_some("active")] { (label) }
                        }
                    }
                    form.signout method="post" action="/console/sign-out" {
                        input type="hidden" name="csrf" value=(signed.csrf);
                        button.link type="submit" { "Sign out" }
                    }
                }
                main {
                    @if let Some(flash) = &signed.flash { (flash_box(flash)) }
                    (body)
                }
                footer { "realm-service " (env!("CARGO_PKG_VERSION")) " · " a href="/openapi.json" { "API (OpenAPI)" } }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// A signed-in page answered with `status` (a form shown again with the API's errors, a secret
/// just created).
pub fn page_with_status(
    status: StatusCode,
    title: &str,
    section: Section,
    signed: &Signed,
    body: Markup,
) -> Response {
    (status, page(title, section, signed, body)).into_response()
}

/// A page outside a session (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main.narrow {
                    div.brand-big { span.logo { "k" } "keyrealm" span.sub { "realm console" } }
                    (body)
                }
            }
        }
    }
}

pub fn bare_page(title: &str, text: &str) -> Html<String> {
    Html(
        bare(
            title,
            html! {
                section.card {
                    h1 { (title) }
                    p { (text) }
                    p { a href="/console/" { "Back to the console" } }
                }
            },
        )
        .into_string(),
    )
}

/// An API failure that is not about a form (e.g. the realm does not exist).
pub fn error_page(problem: &Problem) -> Response {
    let status = if problem.status.is_client_error() || problem.status.is_server_error() {
        problem.status
    } else {
        StatusCode::BAD_GATEWAY
    };
    let title = status.canonical_reason().unwrap_or("Error");
    (status, bare_page(title, &problem.detail)).into_response()
}

fn flash_box(flash: &Flash) -> Markup {
    html! {
        div class={ "flash " (if flash.ok { "ok" } else { "bad" }) } role="status" { (flash.text) }
    }
}

/// Page heading with an optional breadcrumb trail and actions on the right.
pub fn heading(crumbs: &[(&str, String)], title: &str, actions: Markup) -> Markup {
    html! {
        div.heading {
            div {
                @if !crumbs.is_empty() {
                    div.crumbs {
                        @for (label, href) in crumbs {
                            a href=(href) { (label) } span.sep { "/" }
                        }
                    }
                }
                h1 { (title) }
            }
            div.actions { (actions) }
        }
    }
}

/// Errors of a form: by field, plus the problem's detail when no field is named.
#[derive(Default)]
pub struct Errors {
    pub fields: BTreeMap<String, String>,
    pub general: Option<String>,
    /// The API's status, e.g. `409 Conflict`.
    pub status: Option<String>,
}

impl Errors {
    pub fn none() -> Errors {
        Errors::default()
    }

    /// Field errors of `problem`; `fields` are the form's field names. A reason for a field the
    /// form does not have (or for an indexed entry, `tags[2]`) goes to the form's own field of
    /// that name when there is one, otherwise to the general message.
    pub fn from_problem(problem: &Problem, fields: &[&str]) -> Errors {
        let mut errors = Errors {
            status: Some(format!(
                "{} {}",
                problem.status.as_u16(),
                problem.status.canonical_reason().unwrap_or("")
            )),
            ..Errors::default()
        };
        let mut unplaced = Vec::new();
        for (field, reason) in &problem.fields {
            let base = field.split('[').next().unwrap_or(field);
            if fields.contains(&base) {
                let text = if base == field {
                    reason.clone()
                } else {
                    format!("{}: {reason}", &field[base.len()..])
                };
                errors
                    .fields
                    .entry(base.to_string())
                    .and_modify(|r| {
                        r.push_str("; ");
                        r.push_str(&text);
                    })
                    .or_insert(text);
            } else {
                unplaced.push(format!("{field}: {reason}"));
            }
        }
        if errors.fields.is_empty() || !unplaced.is_empty() {
            let mut general = format!(
                "{} {}",
                problem.status.as_u16(),
                problem.status.canonical_reason().unwrap_or("")
            );
            general.push_str(" — ");
            if unplaced.is_empty() {
                general.push_str(&problem.detail);
            } else {
                general.push_str(&unplaced.join("; "));
            }
            errors.general = Some(general);
        }
        errors
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    pub fn banner(&self) -> Markup {
        html! {
            @if let Some(text) = &self.general {
                div.flash.bad role="alert" { (text) }
            } @else if !self.fields.is_empty() {
                div.flash.bad role="alert" { (self.status.as_deref().unwrap_or("Refused")) " — the API refused this form; see the fields marked below." }
            }
        }
    }
}

/// A labelled input with its error (if any) right below it.
pub fn field(
    label: &str,
    name: &str,
    kind: &str,
    value: &str,
    hint: &str,
    errors: &Errors,
) -> Markup {
    let error = errors.get(name);
    html! {
        div class=(field_class(errors, name)) {
            label for=(format!("f-{name}")) { (label) }
            input id=(format!("f-{name}")) type=(kind) name=(name) value=(value)
                autocomplete="off" spellcheck="false"
                aria-invalid=[error.map(|_| "true")];
            (field_error(errors, name))
            @if !hint.is_empty() { div.hint { (hint) } }
        }
    }
}

/// The class of the element around form field `name`: `field`, plus `invalid` when the API
/// named it.
pub fn field_class(errors: &Errors, name: &str) -> &'static str {
    if errors.get(name).is_some() {
        "field invalid"
    } else {
        "field"
    }
}

/// The API's error for form field `name` (`#error-<name>`), or nothing.
pub fn field_error(errors: &Errors, name: &str) -> Markup {
    html! {
        @if let Some(error) = errors.get(name) {
            div.error id=(format!("error-{name}")) { (error) }
        }
    }
}

pub fn csrf(signed: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(signed.csrf); }
}

/// A small form with one button that POSTs to `action` (asks first when JavaScript is on).
pub fn post_button(
    signed: &Signed,
    action: &str,
    label: &str,
    class: &str,
    confirm: &str,
) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[(!confirm.is_empty()).then_some(confirm)] {
            (csrf(signed))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// A secret shown once, with a copy button and the warning.
pub fn secret_once(what: &str, secret: &str) -> Markup {
    html! {
        div.secret-once role="alert" {
            h2 { "Copy the " (what) " now" }
            p { "This is the only time it is shown: only its SHA-256 is stored, so it cannot be shown again. If you lose it, create a new one and revoke this one." }
            div.secret-row {
                code #secret.secret { (secret) }
                button.button.copy type="button" data-copy="secret" { "Copy" }
            }
        }
    }
}

// JSON helpers for API answers.

pub fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub fn opt_text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

pub fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `2026-11-29T03:43:15Z` → `2026-11-29 03:43 UTC`.
pub fn when(rfc3339: &str) -> String {
    if rfc3339.len() >= 16 && rfc3339.ends_with('Z') {
        format!("{} {} UTC", &rfc3339[..10], &rfc3339[11..16])
    } else {
        rfc3339.to_string()
    }
}

pub fn tags(list: &[String]) -> Markup {
    html! {
        @if list.is_empty() { span.muted { "—" } }
        @for t in list { span.tag { (t) } }
    }
}
