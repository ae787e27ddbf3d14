//! Checking a key as an operator: `POST /v1/realms/{realmId}/check-key` (admin token).
//!
//! Answers which consumer and credential a secret belongs to in a realm, or that it is unknown or
//! expired. Read-only: nothing is written and nothing is cached; the secret travels in the body
//! (never in a URL) and is never logged — it is hashed at once and only the hash is looked up.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Admin;
use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson};
use crate::model::AuthenticateRequest;
use crate::state::AppState;
use crate::{clock, secrets};

/// What a secret is in a realm.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyCheckResult {
    /// A key of this realm that has not expired: the identity endpoint would find it.
    Valid,
    /// A key of this realm whose `expires_at` has passed: the identity endpoint answers 404.
    Expired,
    /// No key of this realm has this secret.
    Unknown,
}

/// The consumer a checked key belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCheckConsumer {
    pub id: Uuid,
    pub username: String,
    pub custom_id: Option<String>,
}

/// The checked key (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCheckCredential {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at: String,
    pub expires_at: Option<String>,
}

/// The answer of `check-key`: `consumer` and `credential` are null when `result` is `unknown`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCheck {
    pub result: KeyCheckResult,
    pub consumer: Option<KeyCheckConsumer>,
    pub credential: Option<KeyCheckCredential>,
}

/// Check a key: which consumer and credential of the realm it belongs to, or that it is unknown
/// or expired. Read-only; the secret is never logged.
#[utoipa::path(post, path = "/v1/realms/{realmId}/check-key", tag = "keys",
    params(("realmId" = Uuid, Path)),
    request_body = AuthenticateRequest,
    responses((status = 200, body = KeyCheck), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem, description = "no such realm"), (status = 413, body = Problem)),
    security(("admin_token" = [])))]
pub async fn check(
    _: Admin,
    State(state): State<AppState>,
    Path(realm_id): Path<String>,
    ApiJson(body): ApiJson<AuthenticateRequest>,
) -> Result<Json<KeyCheck>, ApiError> {
    let realm = parse_id("realmId", &realm_id)?;
    if body.secret.is_empty() {
        return Err(ApiError::invalid_field(
            "secret",
            "min_length",
            "must not be empty",
        ));
    }
    let found = state
        .store()
        .check_key(realm, secrets::hash(&body.secret))
        .await?;
    Ok(Json(match found {
        Some(record) => KeyCheck {
            result: if record.expires_at.is_some_and(|t| t <= clock::now()) {
                KeyCheckResult::Expired
            } else {
                KeyCheckResult::Valid
            },
            consumer: Some(KeyCheckConsumer {
                id: record.consumer_id,
                username: record.username,
                custom_id: record.custom_id,
            }),
            credential: Some(KeyCheckCredential {
                id: record.key_id,
                kind: record.key_type.as_str().to_string(),
                created_at: clock::rfc3339(record.key_created_at),
                expires_at: record.expires_at.map(clock::rfc3339),
            }),
        },
        None => KeyCheck {
            result: KeyCheckResult::Unknown,
            consumer: None,
            credential: None,
        },
    }))
}
