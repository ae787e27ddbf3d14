//! The HTTP API: the router, admin authentication, request metrics, and one module per resource.

pub mod consumers;
pub mod control_planes;
pub mod identity;
pub mod key_check;
pub mod keys;
pub mod ops;
pub mod realms;

use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::routing::{get, post, MethodRouter};
use axum::Router;

use crate::error::{to_problem, ApiError};
use crate::secrets;
use crate::state::AppState;

/// Largest accepted request body: 1 MiB (larger → 413). Every body is read through
/// [`crate::extract::read_body`], which enforces it.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How long a request body may take to arrive once the handler starts reading it (408 after).
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The identity endpoint's route template.
pub const AUTHENTICATE_ROUTE: &str = "/{realmId}/v0/authenticate";

/// Every route of the service: (path template, handlers). The OpenAPI test walks this table.
pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/health", get(ops::health)),
        ("/metrics", get(ops::metrics)),
        ("/openapi.json", get(ops::openapi)),
        (
            "/v2/control-planes",
            post(control_planes::create).get(control_planes::list),
        ),
        (
            "/v2/control-planes/{cpId}",
            get(control_planes::get).delete(control_planes::delete),
        ),
        (
            "/v2/control-planes/{cpId}/data-plane-tokens",
            post(control_planes::create_token).get(control_planes::list_tokens),
        ),
        (
            "/v2/control-planes/{cpId}/data-plane-tokens/{tokenId}",
            axum::routing::delete(control_planes::delete_token),
        ),
        ("/v1/realms", post(realms::create).get(realms::list)),
        (
            "/v1/realms/{realmId}",
            get(realms::get)
                .patch(realms::update)
                .delete(realms::delete),
        ),
        (
            "/v1/realms/{realmId}/consumers",
            post(consumers::create).get(consumers::list),
        ),
        (
            "/v1/realms/{realmId}/consumers/{consumerId}",
            get(consumers::get)
                .patch(consumers::update)
                .delete(consumers::delete),
        ),
        (
            "/v1/realms/{realmId}/consumers/{consumerId}/move",
            post(consumers::move_consumer),
        ),
        (
            "/v1/realms/{realmId}/consumers/{consumerId}/keys",
            post(keys::create).get(keys::list),
        ),
        (
            "/v1/realms/{realmId}/consumers/{consumerId}/keys/{keyId}",
            get(keys::get).delete(keys::delete),
        ),
        ("/v1/realms/{realmId}/check-key", post(key_check::check)),
        (AUTHENTICATE_ROUTE, identity::handlers()),
    ]
}

/// The service's router, ready to serve or to drive with `oneshot` in tests.
pub fn app(state: AppState) -> Router {
    let mut observed = Router::new();
    let mut direct = Router::new();
    for (path, handlers) in routes() {
        if path == AUTHENTICATE_ROUTE {
            // The hot path renders its problems and counts itself: no per-request middleware.
            direct = direct.route(path, handlers);
        } else {
            observed = observed.route(path, handlers);
        }
    }
    observed
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(from_fn_with_state(state.clone(), observe))
        .merge(direct)
        .with_state(state)
}

/// Turns error answers into problem+json, counts every request by route template and status,
/// and logs it at debug level (never headers or bodies: they may hold keys and tokens).
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = tracing::enabled!(tracing::Level::DEBUG).then(Instant::now);
    let uri = request.uri().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = to_problem(next.run(request).await, uri.path()).await;
    let route = route
        .as_ref()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    let status = response.status().as_u16();
    state.metrics().request(route, status);
    if let Some(started) = started {
        let elapsed_us = started.elapsed().as_micros() as u64;
        tracing::debug!(route, status, elapsed_us, "request");
    }
    response
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Proof that the request carries a valid admin token. Every admin handler takes it first.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, ApiError> {
        let Some(token) = bearer(&parts.headers) else {
            return Err(ApiError::unauthorized(
                "an admin token is required: Authorization: Bearer <token>",
            ));
        };
        let hash = secrets::hash(token);
        if state.is_bootstrap_admin(&hash) {
            return Ok(Admin);
        }
        // Not cached: admin calls are rare, and a token revoked by `realm-service token revoke`
        // (another process, even on SQLite) must stop working at once.
        if state.store().is_admin_token(hash).await? {
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized("unknown admin token"))
        }
    }
}
