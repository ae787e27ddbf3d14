//! Consumer keys (`/v1/realms/{realmId}/consumers/{consumerId}/keys`). Keys are immutable:
//! rotation is create-new, then delete-old.

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Json;
use rusqlite::{Connection, Row};
use uuid::Uuid;

use super::consumers::require as require_consumer;
use super::{is_unique_violation, optional, strings_at, to_json, uuid_at, Admin};
use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, QueryParams};
use crate::model::{CreateKey, CreatedKey, Key, KeyType, Page};
use crate::pagination::{self, PageRequest, PAGE_PARAMS};
use crate::state::AppState;
use crate::validate::{Checks, MAX_KEY_TTL, MAX_SECRET, MAX_TAG};
use crate::{clock, secrets};

const KEY_SELECT: &str = "SELECT seq, id, type, tags, created_at, updated_at, expires_at FROM keys";

fn key(row: &Row) -> rusqlite::Result<Key> {
    let kind: String = row.get(2)?;
    Ok(Key {
        id: uuid_at(row, 1)?,
        kind: KeyType::parse(&kind),
        tags: strings_at(row, 3)?,
        created_at: clock::rfc3339(row.get(4)?),
        updated_at: clock::rfc3339(row.get(5)?),
        expires_at: row.get::<_, Option<i64>>(6)?.map(clock::rfc3339),
    })
}

fn load(conn: &Connection, consumer: &Uuid, id: &Uuid) -> Result<Key, ApiError> {
    optional(
        conn.prepare_cached(&format!("{KEY_SELECT} WHERE id = ?1 AND consumer_id = ?2"))?
            .query_row([id.to_string(), consumer.to_string()], key),
    )?
    .ok_or_else(|| not_found(consumer, id))
}

fn not_found(consumer: &Uuid, id: &Uuid) -> ApiError {
    ApiError::not_found(format!("key {id} not found for consumer {consumer}"))
}

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
    let hash = secrets::hash(&secret);
    let kind = body.kind;
    let tags = body.tags.unwrap_or_default();
    let ttl = body.ttl;
    let created = state
        .write(move |tx| {
            require_consumer(tx, &realm, &consumer)?;
            let now = clock::now();
            let id = Uuid::new_v4();
            let expires_at = ttl.map(|t| now + t);
            let inserted = tx.execute(
                "INSERT INTO keys (id, consumer_id, realm_id, type, secret_hash, tags, created_at,
                    updated_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
                rusqlite::params![
                    id.to_string(),
                    consumer.to_string(),
                    realm.to_string(),
                    kind.as_str(),
                    &hash[..],
                    to_json(&tags),
                    now,
                    expires_at
                ],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => Err(ApiError::conflict(format!(
                    "this secret already exists in realm {realm}"
                ))),
                other => other.map_err(ApiError::from),
            }?;
            Ok(CreatedKey {
                id,
                kind,
                secret,
                tags,
                created_at: clock::rfc3339(now),
                updated_at: clock::rfc3339(now),
                expires_at: expires_at.map(clock::rfc3339),
            })
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
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
    let path = uri.path().to_string();
    let answer = state
        .read(move |conn| {
            require_consumer(conn, &realm, &consumer)?;
            let sql = format!("{KEY_SELECT} WHERE consumer_id = ?1");
            let (rows, more) =
                pagination::fetch(conn, &sql, vec![consumer.to_string().into()], &page, key)?;
            Ok(pagination::page(rows, more, &page, &path, &[]))
        })
        .await?;
    Ok(Json(answer))
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
    let found = state
        .read(move |conn| {
            require_consumer(conn, &realm, &consumer)?;
            load(conn, &consumer, &id)
        })
        .await?;
    Ok(Json(found))
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
    state
        .write(move |tx| {
            require_consumer(tx, &realm, &consumer)?;
            let n = tx.execute(
                "DELETE FROM keys WHERE id = ?1 AND consumer_id = ?2",
                [id.to_string(), consumer.to_string()],
            )?;
            if n == 0 {
                return Err(not_found(&consumer, &id));
            }
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
