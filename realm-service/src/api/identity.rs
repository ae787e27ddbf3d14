//! The identity endpoint data planes call: `POST /{realmId}/v0/authenticate`.
//!
//! Reads only. Look-ups go through [`AuthCache`](crate::cache::AuthCache): a warm key costs a
//! SHA-256 and two hash-map probes, no SQLite and no blocking thread.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use uuid::Uuid;

use super::{bearer, AUTHENTICATE_ROUTE};
use crate::cache::{KeyAnswer, RealmPolicy};
use crate::clock;
use crate::error::{to_problem, ApiError, Problem};
use crate::extract::{is_json_object, parse_id, parse_json, read_body};
use crate::metrics::AuthOutcome;
use crate::model::{AuthenticateRequest, Credential, Identity};
use crate::secrets::{self, SecretHash};
use crate::state::AppState;
use crate::store::KeyRecord;
use crate::validate::{dedup, MIN_REALM_TTL};

/// Look up a key for a data plane.
#[utoipa::path(post, path = "/{realmId}/v0/authenticate", tag = "identity",
    params(("realmId" = Uuid, Path)),
    request_body = AuthenticateRequest,
    responses(
        (status = 201, body = Identity, description = "the key belongs to this consumer"),
        (status = 400, body = Problem, description = "malformed body or realm id"),
        (status = 401, body = Problem, description = "no or unknown data-plane token"),
        (status = 403, body = Problem, description = "the token's control plane is not allowed by the realm"),
        (status = 404, body = Problem, description = "no such key in this realm (or it expired); `negative_ttl` says how long to cache that"),
        (status = 413, body = Problem)),
    security(("data_plane_token" = [])))]
pub async fn authenticate(State(state): State<AppState>, request: Request) -> Response {
    // The request is taken whole (not `Path` + `HeaderMap` + `Bytes`): nothing is copied, and
    // the hot path stays a SHA-256 and a hash-map probe.
    let uri = request.uri().clone();
    let realm = realm_of(uri.path());
    let token = bearer(request.headers()).map(secrets::hash);
    let body = read_body(request).await;
    let (outcome, response) = match answer(&state, realm, token, body).await {
        Ok(body) => (
            AuthOutcome::Found,
            (
                StatusCode::CREATED,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                Body::from(body),
            )
                .into_response(),
        ),
        Err(error) => {
            let outcome = match error.status {
                StatusCode::UNAUTHORIZED => AuthOutcome::Unauthorized,
                StatusCode::FORBIDDEN => AuthOutcome::Forbidden,
                StatusCode::NOT_FOUND => AuthOutcome::NotFound,
                status if status.is_server_error() => AuthOutcome::Error,
                _ => AuthOutcome::BadRequest,
            };
            (outcome, to_problem(error.into_response(), uri.path()).await)
        }
    };
    state.metrics().authenticate(outcome);
    state
        .metrics()
        .request(AUTHENTICATE_ROUTE, response.status().as_u16());
    response
}

/// The route's handlers: `POST` only; other methods get a 405 problem (this route is served
/// outside the shared middleware, so it renders and counts its own answers).
pub fn handlers() -> MethodRouter<AppState> {
    post(authenticate).fallback(|State(state): State<AppState>, uri: Uri| async move {
        state
            .metrics()
            .request(AUTHENTICATE_ROUTE, StatusCode::METHOD_NOT_ALLOWED.as_u16());
        let mut response = to_problem(
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
            .into_response(),
            uri.path(),
        )
        .await;
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        response
    })
}

/// The realm id: the first segment of the path `/{realmId}/v0/authenticate`.
fn realm_of(path: &str) -> Result<Uuid, ApiError> {
    let segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if segment.contains('%') {
        parse_id(
            "realmId",
            &percent_encoding::percent_decode_str(segment).decode_utf8_lossy(),
        )
    } else {
        parse_id("realmId", segment)
    }
}

async fn answer(
    state: &AppState,
    realm: Result<Uuid, ApiError>,
    token: Option<SecretHash>,
    body: Result<Bytes, ApiError>,
) -> Result<Bytes, ApiError> {
    let Some(token) = token else {
        return Err(ApiError::unauthorized(
            "a data-plane token is required: Authorization: Bearer <token>",
        ));
    };
    // Parsed now, reported after the token check (an unknown token is 401 whatever the body).
    let request = parse_request(realm, body);
    let cache = state.cache();
    let generation = cache.generation();
    let snapshot = cache.lookup(
        &token,
        request.as_ref().ok().map(|(realm, secret)| (realm, secret)),
    );
    let control_plane = match snapshot.control_plane {
        Some(cp) => cp,
        None => control_plane_of(state, token).await?,
    };
    let (realm, secret) = request?;

    let policy = match snapshot.realm {
        Some(policy) => policy,
        None => {
            let policy = load_policy(state, realm).await?;
            cache.store_realm(generation, realm, policy.clone());
            policy
        }
    };
    let Some(policy) = policy else {
        let mut error = ApiError::not_found(format!("realm {realm} not found"));
        error.negative_ttl = Some(MIN_REALM_TTL);
        return Err(error);
    };
    // Refused before the key is looked up or cached: a token the realm does not allow can
    // neither probe its keys nor fill (and so flush) the key cache.
    if !policy.allows(&control_plane) {
        return Err(ApiError::forbidden(format!(
            "realm {realm} does not allow this data plane's control plane"
        )));
    }
    state.metrics().cache(snapshot.key.is_some());
    let key = match snapshot.key {
        Some(key) => key,
        None => {
            let record = state.store().key_by_secret(realm, secret).await?;
            let key = match record {
                Some(record) => found(record, &policy)?,
                None => KeyAnswer::NotFound,
            };
            cache.store_key(generation, realm, secret, key.clone());
            key
        }
    };
    let not_found = || {
        let mut error = ApiError::not_found("no such key in this realm");
        error.negative_ttl = Some(policy.negative_ttl);
        error
    };
    match key {
        KeyAnswer::Found { expires_at, .. } if expires_at.is_some_and(|t| t <= clock::now()) => {
            Err(not_found())
        }
        KeyAnswer::Found { body, .. } => Ok(body),
        KeyAnswer::NotFound => Err(not_found()),
    }
}

/// The realm id and the SHA-256 of the secret, or the 400/413 that the request deserves.
fn parse_request(
    realm: Result<Uuid, ApiError>,
    body: Result<Bytes, ApiError>,
) -> Result<(Uuid, SecretHash), ApiError> {
    let realm = realm?;
    let body = body?;
    // The common case straight through serde_json; the slower path only to name what is wrong
    // (and to refuse an array, which serde would take for the struct's fields in order).
    let fast = is_json_object(&body)
        .then(|| serde_json::from_slice::<AuthenticateRequest>(&body).ok())
        .flatten();
    let request: AuthenticateRequest = match fast {
        Some(request) => request,
        None => parse_json(&body)?,
    };
    if request.secret.is_empty() {
        return Err(ApiError::invalid_field(
            "secret",
            "min_length",
            "must not be empty",
        ));
    }
    Ok((realm, secrets::hash(&request.secret)))
}

/// The control plane a data-plane token belongs to (401 for an unknown token).
async fn control_plane_of(state: &AppState, hash: SecretHash) -> Result<Uuid, ApiError> {
    if let Some(cp) = state.cache().token(&hash) {
        return Ok(cp);
    }
    let generation = state.cache().generation();
    match state.store().control_plane_of_token(hash).await? {
        Some(cp) => {
            state.cache().store_token(generation, hash, cp);
            Ok(cp)
        }
        None => Err(ApiError::unauthorized("unknown data-plane token")),
    }
}

async fn load_policy(state: &AppState, realm: Uuid) -> Result<Option<Arc<RealmPolicy>>, ApiError> {
    Ok(state.store().find_realm(realm).await?.map(|r| {
        Arc::new(RealmPolicy {
            allow_all_control_planes: r.allow_all_control_planes,
            allowed_control_planes: r.allowed_control_planes.into_iter().collect::<HashSet<_>>(),
            ttl: r.ttl,
            negative_ttl: r.negative_ttl,
            consumer_groups: r.consumer_groups,
        })
    }))
}

/// The finished 201 body for a key found by its secret.
fn found(record: KeyRecord, policy: &RealmPolicy) -> Result<KeyAnswer, ApiError> {
    let mut groups = policy.consumer_groups.clone();
    groups.extend(record.consumer_groups);
    let identity = Identity {
        id: record.consumer_id,
        username: record.username,
        custom_id: record.custom_id,
        kind: record.kind,
        tags: record.tags,
        consumer_group_names: dedup(&groups),
        ttl: policy.ttl,
        negative_ttl: policy.negative_ttl,
        credential: Credential {
            id: record.key_id,
            created_at: clock::rfc3339(record.key_created_at),
            tags: record.key_tags,
            expires_at: record.expires_at.map(clock::rfc3339),
        },
    };
    let body = serde_json::to_vec(&identity).map_err(ApiError::internal)?;
    Ok(KeyAnswer::Found {
        body: Bytes::from(body),
        expires_at: record.expires_at,
    })
}
