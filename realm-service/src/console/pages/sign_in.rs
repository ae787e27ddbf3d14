//! Signing in with an admin token, and out.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::{FormData, Posted};
use crate::console::session::{
    self, cookie, csrf_matches, set_cookie, COOKIE, LIFETIME, SIGN_IN_COOKIE,
};
use crate::console::views::{self, Errors};
use crate::console::Console;

#[derive(Deserialize)]
pub struct SignInQuery {
    ended: Option<String>,
}

pub async fn form(Query(query): Query<SignInQuery>) -> Response {
    let notice = match query.ended.as_deref() {
        Some("revoked") => Some((false, "Your session has ended: the API no longer accepts its admin token. Sign in with a valid token.")),
        Some("expired") => Some((false, "Your session has expired. Sign in again.")),
        Some("signed-out") => Some((true, "You have signed out.")),
        _ => None,
    };
    render(notice, &Errors::none(), StatusCode::OK)
}

fn render(notice: Option<(bool, &str)>, errors: &Errors, status: StatusCode) -> Response {
    let csrf = session::random();
    let body = html! {
        section.card.sign-in {
            h1 { "Sign in" }
            p.muted { "Use an admin token of this realm service: " code { "REALM_ADMIN_TOKEN" } " or one made with " code { "realm-service token create" } ". The token stays on the server; your browser only gets a session cookie." }
            @if let Some((ok, text)) = notice {
                div class={ "flash " (if ok { "ok" } else { "bad" }) } role="status" { (text) }
            }
            (errors.banner())
            form method="post" action="/console/sign-in" {
                input type="hidden" name="csrf" value=(csrf);
                (views::field("Admin token", "token", "password", "", "", errors))
                button.button.primary type="submit" { "Sign in" }
            }
        }
    };
    (
        status,
        [(
            header::SET_COOKIE,
            set_cookie(SIGN_IN_COOKIE, &csrf, std::time::Duration::from_secs(3600)),
        )],
        Html(views::bare("Sign in", body).into_string()),
    )
        .into_response()
}

pub async fn submit(
    State(console): State<Console>,
    headers: HeaderMap,
    form: FormData,
) -> Response {
    let expected = cookie(&headers, SIGN_IN_COOKIE).unwrap_or("");
    if !csrf_matches(expected, form.csrf()) {
        return session::csrf_refused();
    }
    let token = form.get("token").trim().to_string();
    if token.is_empty() {
        let mut errors = Errors::none();
        errors
            .fields
            .insert("token".into(), "enter an admin token".into());
        return render(None, &errors, StatusCode::BAD_REQUEST);
    }
    match console
        .api()
        .get(&token, "/v2/control-planes?page%5Bsize%5D=1")
        .await
    {
        Ok(_) => {}
        Err(problem) => {
            let problem = problem.on_field("token");
            return render(
                None,
                &Errors::from_problem(&problem, &["token"]),
                if problem.is_unauthorized() {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::BAD_GATEWAY
                },
            );
        }
    }
    let Some(id) = console.sessions().start(token) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            views::bare_page("Error", "No random source for a session id."),
        )
            .into_response();
    };
    let mut response = Redirect::to("/console/").into_response();
    let headers = response.headers_mut();
    if let Ok(v) = set_cookie(COOKIE, &id, LIFETIME).parse() {
        headers.append(header::SET_COOKIE, v);
    }
    if let Ok(v) = set_cookie(SIGN_IN_COOKIE, "", std::time::Duration::ZERO).parse() {
        headers.append(header::SET_COOKIE, v);
    }
    response
}

pub async fn sign_out(State(console): State<Console>, Posted { signed, .. }: Posted) -> Response {
    console.sessions().end(&signed.id);
    (
        [(
            header::SET_COOKIE,
            set_cookie(COOKIE, "", std::time::Duration::ZERO),
        )],
        Redirect::to("/console/sign-in?ended=signed-out"),
    )
        .into_response()
}
