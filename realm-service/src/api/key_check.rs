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

use super::{optional, uuid_at, Admin};
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
    let hash = secrets::hash(&body.secret);
    let found = state
        .read(move |conn| {
            if super::realms::load(conn, &realm)?.is_none() {
                return Err(ApiError::not_found(format!("realm {realm} not found")));
            }
            let row = optional(
                conn.prepare_cached(
                    "SELECT k.id, k.type, k.created_at, k.expires_at, k.secret_hash,
                            c.id, c.username, c.custom_id
                     FROM keys k JOIN consumers c ON c.id = k.consumer_id
                     WHERE k.realm_id = ?1 AND k.secret_hash = ?2",
                )?
                .query_row(rusqlite::params![realm.to_string(), &hash[..]], |r| {
                    let stored: Vec<u8> = r.get(4)?;
                    let expires_at: Option<i64> = r.get(3)?;
                    Ok((
                        stored,
                        expires_at,
                        KeyCheckCredential {
                            id: uuid_at(r, 0)?,
                            kind: r.get(1)?,
                            created_at: clock::rfc3339(r.get(2)?),
                            expires_at: expires_at.map(clock::rfc3339),
                        },
                        KeyCheckConsumer {
                            id: uuid_at(r, 5)?,
                            username: r.get(6)?,
                            custom_id: r.get(7)?,
                        },
                    ))
                }),
            )?;
            Ok(row.filter(|(stored, ..)| secrets::hashes_equal(stored, &hash)))
        })
        .await?;
    Ok(Json(match found {
        Some((_, expires_at, credential, consumer)) => KeyCheck {
            result: if expires_at.is_some_and(|t| t <= clock::now()) {
                KeyCheckResult::Expired
            } else {
                KeyCheckResult::Valid
            },
            consumer: Some(consumer),
            credential: Some(credential),
        },
        None => KeyCheck {
            result: KeyCheckResult::Unknown,
            consumer: None,
            credential: None,
        },
    }))
}
