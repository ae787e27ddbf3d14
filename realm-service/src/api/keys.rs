//! Consumer keys (`/v1/realms/{realmId}/consumers/{consumerId}/keys`). Keys are immutable:
//! rotation is create-new, then delete-old.

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Json;

use super::Admin;
use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, QueryParams};
use crate::model::{CreateKey, CreatedKey, Key, KeyType, Page};
use crate::pagination::{self, PageRequest, PAGE_PARAMS};
use crate::secrets;
use crate::state::AppState;
use crate::store::NewKey;
use crate::validate::{Checks, MAX_KEY_TTL, MAX_SECRET, MAX_TAG};

/// Create a key. `type: new` generates the secret; `type: legacy` takes the one given. The
/// secret is in this answer only.
#[utoipa::path(post, path = "/v1/realms/{realmId}/consumers/{consumerId}/keys", tag = "keys",
    params(("realmId" = Uuid, Path), ("consumerId" = Uuid, Path)),
    request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem, description = "the legacy secret already exists in the realm"),
        (status = 413, body = Problem)),
    security(("admin_token" = [])))]
pub async fn create(
    _: Admin,
    State(state): State<AppState>,
    Path((realm_id, consumer_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let realm = parse_id("realmId", &realm_id)?;
    let consumer = parse_id("consumerId", &consumer_id)?;
    let mut checks = Checks::default();
    match (body.kind, &body.secret) {
        (KeyType::New, Some(_)) => checks.push(
            "secret",
            "forbidden",
            "is generated for type new; use type legacy to give one",
        ),
        (KeyType::Legacy, None) => checks.push("secret", "required", "is required for type legacy"),
        (KeyType::Legacy, Some(secret)) => {
            if secret.is_empty() {
                checks.push("secret", "min_length", "must not be empty");
            } else if secret.chars().count() > MAX_SECRET {
                checks.push(
                    "secret",
                    "max_length",
                    format!("must be at most {MAX_SECRET} characters"),
                );
            }
        }
        (KeyType::New, None) => {}
    }
    checks.list("tags", body.tags.as_deref(), MAX_TAG);
    checks.range("ttl", body.ttl, 1, MAX_KEY_TTL, "seconds");
    checks.finish()?;
    let secret = match body.secret {
        Some(secret) => secret,
        None => secrets::generate(secrets::KEY_PREFIX).map_err(ApiError::internal)?,
    };
    let key = state
        .store()
        .create_key(
            realm,
            consumer,
            NewKey {
                kind: body.kind,
                secret_hash: secrets::hash(&secret),
                tags: body.tags.unwrap_or_default(),
                ttl: body.ttl,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            id: key.id,
            kind: key.kind,
            secret,
            tags: key.tags,
            created_at: key.created_at,
            updated_at: key.updated_at,
            expires_at: key.expires_at,
        }),
    ))
}

/// List a consumer's keys (never the secrets).
#[utoipa::path(get, path = "/v1/realms/{realmId}/consumers/{consumerId}/keys", tag = "keys",
    params(("realmId" = Uuid, Path), ("consumerId" = Uuid, Path),
        ("page[size]" = Option<u32>, Query, description = "1 to 1000, default 100"),
        ("page[after]" = Option<String>, Query), ("page[before]" = Option<String>, Query)),
    responses((status = 200, body = Page<Key>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn list(
    _: Admin,
    State(state): State<AppState>,
    Path((realm_id, consumer_id)): Path<(String, String)>,
    uri: Uri,
) -> Result<Json<Page<Key>>, ApiError> {
    let realm = parse_id("realmId", &realm_id)?;
    let consumer = parse_id("consumerId", &consumer_id)?;
    let query = QueryParams::parse(uri.query(), &PAGE_PARAMS)?;
    let page = PageRequest::from_query(&query)?;
    let (rows, more) = state
        .store()
        .list_keys(realm, consumer, page.clone())
        .await?;
    Ok(Json(pagination::page(rows, more, &page, uri.path(), &[])))
}

/// Get a key (never the secret).
#[utoipa::path(get, path = "/v1/realms/{realmId}/consumers/{consumerId}/keys/{keyId}", tag = "keys",
    params(("realmId" = Uuid, Path), ("consumerId" = Uuid, Path), ("keyId" = Uuid, Path)),
    responses((status = 200, body = Key), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn get(
    _: Admin,
    State(state): State<AppState>,
    Path((realm_id, consumer_id, key_id)): Path<(String, String, String)>,
) -> Result<Json<Key>, ApiError> {
    let realm = parse_id("realmId", &realm_id)?;
    let consumer = parse_id("consumerId", &consumer_id)?;
    let id = parse_id("keyId", &key_id)?;
    Ok(Json(state.store().get_key(realm, consumer, id).await?))
}

/// Delete (revoke) a key: the service stops accepting it at once.
#[utoipa::path(delete, path = "/v1/realms/{realmId}/consumers/{consumerId}/keys/{keyId}", tag = "keys",
    params(("realmId" = Uuid, Path), ("consumerId" = Uuid, Path), ("keyId" = Uuid, Path)),
    responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn delete(
    _: Admin,
    State(state): State<AppState>,
    Path((realm_id, consumer_id, key_id)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let realm = parse_id("realmId", &realm_id)?;
    let consumer = parse_id("consumerId", &consumer_id)?;
    let id = parse_id("keyId", &key_id)?;
    state.store().delete_key(realm, consumer, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
