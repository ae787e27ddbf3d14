//! The console's pages and form handlers, one module per section.

pub mod check_key;
pub mod consumers;
pub mod control_planes;
pub mod overview;
pub mod realms;
pub mod sign_in;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::Value;
use uuid::Uuid;

use super::client::Problem;
use super::session::Signed;
use super::views;
use super::Console;

/// An `application/x-www-form-urlencoded` body, with repeated names kept (multi-selects).
pub struct FormData(Vec<(String, String)>);

impl<S: Send + Sync> FromRequest<S> for FormData {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(FormData(
            form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}

impl FormData {
    /// The first value of `name`, or "".
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn csrf(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}

/// What a page handler answers. `Err` is an answer too (the 404 page for a bad id, the CSRF
/// refusal, an error page), so that `?` ends a handler early.
pub type Page = Result<Response, Response>;

/// A form posted from a signed-in session with a matching CSRF token: the session and the form.
/// Its checks run in this order: the session (else the sign-in page), then the CSRF token (else
/// the 403 page).
pub struct Posted {
    pub signed: Signed,
    pub form: FormData,
}

impl FromRequest<Console> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, console: &Console) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let signed = Signed::from_request_parts(&mut parts, console).await?;
        let form = FormData::from_request(Request::from_parts(parts, body), console).await?;
        signed.check_csrf(form.csrf())?;
        Ok(Posted { signed, form })
    }
}

/// Path segments that must all be ids, checked in order (else the 404 page of the first bad one).
pub fn ids<const N: usize>(segments: [&str; N]) -> Result<[String; N], Response> {
    let mut checked: [String; N] = std::array::from_fn(|_| String::new());
    for (slot, segment) in checked.iter_mut().zip(segments) {
        *slot = id(segment)?.to_string();
    }
    Ok(checked)
}

/// One API call with the session's token.
pub async fn call(
    console: &Console,
    signed: &Signed,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, Problem> {
    console
        .api()
        .call(Some(&signed.token), method, path, body)
        .await
}

/// A DELETE in the API, then a notice and a redirect to `to`; a refusal is an error page.
pub async fn delete_then(
    console: &Console,
    signed: &Signed,
    path: &str,
    to: &str,
    notice: impl Into<String>,
) -> Response {
    match call(console, signed, Method::DELETE, path, None).await {
        Ok(_) => done(console, signed, to, notice),
        Err(problem) => failed(console, signed, problem),
    }
}

/// A path segment that must be an id (so nothing else can be spliced into an API path).
pub fn id(segment: &str) -> Result<Uuid, Response> {
    Uuid::parse_str(segment).map_err(|_| {
        (
            StatusCode::NOT_FOUND,
            views::bare_page("Not Found", "There is no such page in the console."),
        )
            .into_response()
    })
}

/// What an API failure outside a form becomes: the sign-in page for a refused token, else an
/// error page.
pub fn failed(console: &Console, signed: &Signed, problem: Problem) -> Response {
    if problem.is_unauthorized() {
        console.sessions().end(&signed.id);
        return Redirect::to("/console/sign-in?ended=revoked").into_response();
    }
    views::error_page(&problem)
}

/// After a successful form: a one-time notice and a redirect (303: the browser GETs `to`).
pub fn done(console: &Console, signed: &Signed, to: &str, notice: impl Into<String>) -> Response {
    console.sessions().flash(&signed.id, true, notice);
    Redirect::to(to).into_response()
}

/// A comma-separated list ("gold, silver") as the API's array; blanks are dropped.
pub fn list(text: &str) -> Value {
    Value::Array(
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Value::String(s.to_string()))
            .collect(),
    )
}

/// An integer field as typed: a number when it is one, else the text itself, so that the API
/// names the field in its 400 (`must be an integer`) and the console shows it there.
pub fn integer(text: &str) -> Value {
    let text = text.trim();
    match text.parse::<i64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::String(text.to_string()),
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The realms, for pickers (name and id), at most 1000.
pub async fn realm_choices(
    console: &Console,
    signed: &Signed,
) -> Result<Vec<(String, String)>, Problem> {
    let (realms, _) = console
        .api()
        .get_all(&signed.token, "/v1/realms", 1000)
        .await?;
    Ok(realms
        .iter()
        .map(|r| {
            (
                views::text(r, "id").to_string(),
                views::text(r, "name").to_string(),
            )
        })
        .collect())
}
