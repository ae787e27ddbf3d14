//! Console sessions, kept server-side in this process's memory.
//!
//! The browser gets only a random session id (about 256 bits) in the `krc_session` cookie
//! (`HttpOnly`, `SameSite=Strict`, `Path=/console`, expiring). The admin token the operator signed
//! in with stays here, keyed by the SHA-256 of the session id, and is sent to the API as the
//! Bearer token of every call the session makes. Sessions end after [`IDLE`] without a request,
//! after [`LIFETIME`] in any case, at sign-out, when the service restarts, and at once when the
//! API stops accepting their token (every request re-checks it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use parking_lot::Mutex;
use subtle::ConstantTimeEq;

use super::views;
use super::Console;
use crate::secrets::{self, SecretHash};

pub const COOKIE: &str = "krc_session";
/// The sign-in form's own CSRF cookie (there is no session yet).
pub const SIGN_IN_COOKIE: &str = "krc_sign_in";
/// A session ends this long after its last request.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, whatever happens.
pub const LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);
/// At most this many live sessions; signing in beyond it drops the oldest.
const MAX_SESSIONS: usize = 10_000;

/// A one-time notice shown on the next page of a session (after a redirect).
#[derive(Clone)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

struct Session {
    token: String,
    csrf: String,
    started: Instant,
    seen: Instant,
    flash: Option<Flash>,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<SecretHash, Session>>,
}

/// A new random value (session ids, CSRF tokens).
pub fn random() -> String {
    // 43 base62 characters from the OS random source. Failing to get randomness is fatal for
    // security, so an empty string is never used: the caller gets a 500.
    secrets::generate("").unwrap_or_default()
}

impl Sessions {
    /// Starts a session for `token`; returns its id (for the cookie).
    pub fn start(&self, token: String) -> Option<String> {
        let id = random();
        let csrf = random();
        if id.is_empty() || csrf.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut map = self.map.lock();
        map.retain(|_, s| alive(s, now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            secrets::hash(&id),
            Session {
                token,
                csrf,
                started: now,
                seen: now,
                flash: None,
            },
        );
        Some(id)
    }

    pub fn end(&self, id: &str) {
        self.map.lock().remove(&secrets::hash(id));
    }

    /// The token and CSRF token of a live session (and marks it seen), or `None`.
    fn touch(&self, id: &str) -> Option<(String, String, Option<Flash>)> {
        let key = secrets::hash(id);
        let now = Instant::now();
        let mut map = self.map.lock();
        let session = map.get_mut(&key)?;
        if !alive(session, now) {
            map.remove(&key);
            return None;
        }
        session.seen = now;
        Some((
            session.token.clone(),
            session.csrf.clone(),
            session.flash.take(),
        ))
    }

    pub fn flash(&self, id: &str, ok: bool, text: impl Into<String>) {
        if let Some(session) = self.map.lock().get_mut(&secrets::hash(id)) {
            session.flash = Some(Flash {
                ok,
                text: text.into(),
            });
        }
    }
}

fn alive(session: &Session, now: Instant) -> bool {
    now.duration_since(session.seen) < IDLE && now.duration_since(session.started) < LIFETIME
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for a console cookie; `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    )
}

/// Constant-time comparison of a submitted CSRF token with the expected one.
pub fn csrf_matches(expected: &str, submitted: Option<&str>) -> bool {
    match submitted {
        Some(s) if !expected.is_empty() => expected.as_bytes().ct_eq(s.as_bytes()).into(),
        _ => false,
    }
}

/// A signed-in request: its session id, admin token and CSRF token. Extracting it re-checks the
/// token through the API; without a live session, or when the API refuses the token, the request
/// is redirected to the sign-in page (the session is ended).
pub struct Signed {
    pub id: String,
    pub token: String,
    pub csrf: String,
    pub flash: Option<Flash>,
}

impl Signed {
    /// The 403 page for a form whose CSRF token is missing or wrong.
    pub fn check_csrf(&self, submitted: Option<&str>) -> Result<(), Response> {
        if csrf_matches(&self.csrf, submitted) {
            Ok(())
        } else {
            Err(csrf_refused())
        }
    }
}

pub fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        views::bare_page(
            "Form refused",
            "This form was refused: its security token (CSRF) is missing or does not match \
             your session. Nothing was changed. Go back, reload the page and try again.",
        ),
    )
        .into_response()
}

impl FromRequestParts<Console> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Signed, Response> {
        let Some(id) = cookie(&parts.headers, COOKIE).map(str::to_string) else {
            return Err(Redirect::to("/console/sign-in").into_response());
        };
        let Some((token, csrf, flash)) = console.sessions().touch(&id) else {
            return Err(sign_in_again("/console/sign-in?ended=expired", &id).into_response());
        };
        // The API decides, on every request: a revoked token ends the session here and now.
        match console
            .api()
            .get(&token, "/v2/control-planes?page%5Bsize%5D=1")
            .await
        {
            Ok(_) => Ok(Signed {
                id,
                token,
                csrf,
                flash,
            }),
            Err(problem) if problem.is_unauthorized() => {
                console.sessions().end(&id);
                Err(sign_in_again("/console/sign-in?ended=revoked", &id))
            }
            Err(problem) => Err(views::error_page(&problem)),
        }
    }
}

fn sign_in_again(to: &str, _id: &str) -> Response {
    (
        [(header::SET_COOKIE, set_cookie(COOKIE, "", Duration::ZERO))],
        Redirect::to(to),
    )
        .into_response()
}
