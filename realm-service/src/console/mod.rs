//! The realm console: a web UI at `/console/` for realms, consumers, keys, control planes and
//! data-plane tokens, served by the service itself (`--no-console` turns it off).
//!
//! The console is a *client of the service's own HTTP API*, in-process: every page and form turns
//! into API calls sent through a clone of the API [`Router`] with `tower::ServiceExt::oneshot`,
//! with the session's admin token as the Bearer token. So it has exactly the API's authorization
//! and validation, and shows the API's problem+json errors on its forms (`invalid_parameters`
//! next to the field they name). It never touches storage itself.
//!
//! - Pages are rendered on the server with [`maud`] (everything is escaped); plain HTML forms that
//!   work without JavaScript. The only script, embedded like the stylesheet, copies a shown
//!   secret and asks before a delete. The Content-Security-Policy allows no inline script.
//! - Sign-in takes an admin token. The session is server-side ([`session`]): the browser holds
//!   only a random session id in an `HttpOnly`, `SameSite=Strict`, expiring cookie; the token is
//!   kept in this process's memory (sessions end when the service restarts). Every request
//!   re-checks the token through the API, so a revoked admin token ends its sessions at once.
//! - Every state-changing form carries the session's CSRF token.
//! - The overview's chart comes from the service's own `/metrics`, sampled into a small ring
//!   buffer ([`metrics`]) and drawn as inline SVG.

// Handlers return early with a finished page (`Result<_, Response>`): a large `Err` is the point.
#![allow(clippy::result_large_err)]

mod client;
mod metrics;
mod pages;
mod session;
mod views;

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use client::Api;
use metrics::Sampler;
use session::Sessions;

/// Where the console lives.
pub const BASE: &str = "/console";

/// The console's state: the API it is a client of, the sessions and the metrics samples.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    api: Api,
    sessions: Sessions,
    sampler: Sampler,
}

impl Console {
    fn api(&self) -> &Api {
        &self.inner.api
    }
    fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }
    fn sampler(&self) -> &Sampler {
        &self.inner.sampler
    }
}

/// Adds the console's routes to the API router `api` (which the console calls in-process) and
/// starts its metrics sampler (it stops once the router is dropped). Needs a tokio runtime.
pub fn mount(api: Router) -> Router {
    let console = Console {
        inner: Arc::new(Inner {
            api: Api::new(api.clone()),
            sessions: Sessions::default(),
            sampler: Sampler::default(),
        }),
    };
    metrics::spawn_sampler(Arc::downgrade(&console.inner));
    api.merge(routes(console))
}

fn routes(console: Console) -> Router {
    use pages::*;
    Router::new()
        .route(BASE, get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(overview::page))
        .route("/console/assets/console.css", get(assets::css))
        .route("/console/assets/console.js", get(assets::js))
        .route("/console/sign-in", get(sign_in::form).post(sign_in::submit))
        .route("/console/sign-out", post(sign_in::sign_out))
        .route(
            "/console/check-key",
            get(check_key::form).post(check_key::submit),
        )
        .route(
            "/console/control-planes",
            get(control_planes::list).post(control_planes::create),
        )
        .route("/console/control-planes/{cp}", get(control_planes::show))
        .route(
            "/console/control-planes/{cp}/delete",
            post(control_planes::delete),
        )
        .route(
            "/console/control-planes/{cp}/tokens",
            post(control_planes::create_token),
        )
        .route(
            "/console/control-planes/{cp}/tokens/{token}/revoke",
            post(control_planes::revoke_token),
        )
        .route("/console/realms", get(realms::list))
        .route(
            "/console/realms/new",
            get(realms::new_form).post(realms::create),
        )
        .route("/console/realms/{realm}", get(realms::show))
        .route(
            "/console/realms/{realm}/edit",
            get(realms::edit_form).post(realms::update),
        )
        .route("/console/realms/{realm}/delete", post(realms::delete))
        .route(
            "/console/realms/{realm}/consumers/new",
            get(consumers::new_form).post(consumers::create),
        )
        .route(
            "/console/realms/{realm}/consumers/{consumer}",
            get(consumers::show),
        )
        .route(
            "/console/realms/{realm}/consumers/{consumer}/edit",
            get(consumers::edit_form).post(consumers::update),
        )
        .route(
            "/console/realms/{realm}/consumers/{consumer}/move",
            post(consumers::move_consumer),
        )
        .route(
            "/console/realms/{realm}/consumers/{consumer}/delete",
            post(consumers::delete),
        )
        .route(
            "/console/realms/{realm}/consumers/{consumer}/keys",
            post(consumers::create_key),
        )
        .route(
            "/console/realms/{realm}/consumers/{consumer}/keys/{key}/revoke",
            post(consumers::revoke_key),
        )
        .layer(map_response(security_headers))
        .with_state(console)
}

/// Every console answer: no inline script, no framing, no caching (pages may show a secret once).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The embedded stylesheet and script.
mod assets {
    use super::*;

    pub async fn css() -> Response {
        (
            [
                (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                (header::CACHE_CONTROL, "max-age=300"),
            ],
            include_str!("assets/console.css"),
        )
            .into_response()
    }

    pub async fn js() -> Response {
        (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "max-age=300"),
            ],
            include_str!("assets/console.js"),
        )
            .into_response()
    }
}
