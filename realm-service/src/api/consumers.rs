//! Consumers of a realm (`/v1/realms/{realmId}/consumers`).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Json;
use rusqlite::types::Value;
use rusqlite::{Connection, Row};
use uuid::Uuid;

use super::realms::require as require_realm;
use super::{is_unique_violation, optional, strings_at, to_json, uuid_at, Admin};
use crate::clock;
use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, QueryParams};
use crate::model::{Consumer, CreateConsumer, MoveConsumer, MovedConsumer, Page, UpdateConsumer};
use crate::pagination::{self, PageRequest, PAGE_PARAMS};
use crate::state::AppState;
use crate::validate::{dedup, Checks, MAX_NAME, MAX_TAG};

const CONSUMER_SELECT: &str = "SELECT seq, id, username, custom_id, type, tags, consumer_groups,
    created_at, updated_at FROM consumers";

fn consumer(row: &Row) -> rusqlite::Result<Consumer> {
    Ok(Consumer {
        id: uuid_at(row, 1)?,
        username: row.get(2)?,
        custom_id: row.get(3)?,
        kind: row.get(4)?,
        tags: strings_at(row, 5)?,
        consumer_groups: strings_at(row, 6)?,
        created_at: clock::rfc3339(row.get(7)?),
        updated_at: clock::rfc3339(row.get(8)?),
    })
}

fn load(conn: &Connection, realm: &Uuid, id: &Uuid) -> Result<Consumer, ApiError> {
    optional(
        conn.prepare_cached(&format!(
            "{CONSUMER_SELECT} WHERE id = ?1 AND realm_id = ?2"
        ))?
        .query_row([id.to_string(), realm.to_string()], consumer),
    )?
    .ok_or_else(|| not_found(realm, id))
}

fn not_found(realm: &Uuid, id: &Uuid) -> ApiError {
    ApiError::not_found(format!("consumer {id} not found in realm {realm}"))
}

/// The consumer must exist in this realm (404 otherwise, also when it lives in another realm).
pub(crate) fn require(conn: &Connection, realm: &Uuid, id: &Uuid) -> Result<(), ApiError> {
    let found = optional(
        conn.prepare_cached("SELECT 1 FROM consumers WHERE id = ?1 AND realm_id = ?2")?
            .query_row([id.to_string(), realm.to_string()], |_| Ok(())),
    )?;
    found.ok_or_else(|| not_found(realm, id))
}

fn username_taken(username: &str, realm: &Uuid) -> ApiError {
    ApiError::conflict(format!(
        "a consumer with username '{username}' already exists in realm {realm}"
    ))
}

fn check_fields(
    checks: &mut Checks,
    username: Option<&str>,
    custom_id: Option<&str>,
    kind: Option<&str>,
    tags: Option<&[String]>,
    groups: Option<&[String]>,
) {
    checks.opt_text("username", username, MAX_NAME);
    checks.opt_text("custom_id", custom_id, MAX_NAME);
    checks.opt_text("type", kind, MAX_NAME);
    checks.list("tags", tags, MAX_TAG);
    checks.list("consumer_groups", groups, MAX_NAME);
}

/// Create a consumer in a realm.
#[utoipa::path(post, path = "/v1/realms/{realmId}/consumers", tag = "consumers",
    params(("realmId" = Uuid, Path)),
    request_body = CreateConsumer,
    responses((status = 201, body = Consumer), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem)),
    security(("admin_token" = [])))]
pub async fn create(
    _: Admin,
    State(state): State<AppState>,
    Path(realm_id): Path<String>,
    ApiJson(body): ApiJson<CreateConsumer>,
) -> Result<(StatusCode, Json<Consumer>), ApiError> {
    let realm = parse_id("realmId", &realm_id)?;
    let mut checks = Checks::default();
    checks.text("username", &body.username, MAX_NAME);
    check_fields(
        &mut checks,
        None,
        body.custom_id.as_deref(),
        body.kind.as_deref(),
        body.tags.as_deref(),
        body.consumer_groups.as_deref(),
    );
    checks.finish()?;
    let created = state
        .write(move |tx| {
            require_realm(tx, &realm)?;
            let now = clock::now();
            let id = Uuid::new_v4();
            let inserted = tx.execute(
                "INSERT INTO consumers (id, realm_id, username, custom_id, type, tags,
                    consumer_groups, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                rusqlite::params![
                    id.to_string(),
                    realm.to_string(),
                    body.username,
                    body.custom_id,
                    body.kind,
                    to_json(&body.tags.unwrap_or_default()),
                    to_json(&dedup(&body.consumer_groups.unwrap_or_default())),
                    now
                ],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => Err(username_taken(&body.username, &realm)),
                other => other.map_err(ApiError::from),
            }?;
            load(tx, &realm, &id)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// List a realm's consumers, optionally filtered by exact `username` or `custom_id`.
#[utoipa::path(get, path = "/v1/realms/{realmId}/consumers", tag = "consumers",
    params(("realmId" = Uuid, Path),
        ("filter[username]" = Option<String>, Query, description = "exact match"),
        ("filter[custom_id]" = Option<String>, Query, description = "exact match"),
        ("page[size]" = Option<u32>, Query, description = "1 to 1000, default 100"),
        ("page[after]" = Option<String>, Query), ("page[before]" = Option<String>, Query)),
    responses((status = 200, body = Page<Consumer>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn list(
    _: Admin,
    State(state): State<AppState>,
    Path(realm_id): Path<String>,
    uri: Uri,
) -> Result<Json<Page<Consumer>>, ApiError> {
    let realm = parse_id("realmId", &realm_id)?;
    let mut allowed = PAGE_PARAMS.to_vec();
    allowed.extend(["filter[username]", "filter[custom_id]"]);
    let query = QueryParams::parse(uri.query(), &allowed)?;
    let page = PageRequest::from_query(&query)?;
    let username = query.get("filter[username]").map(str::to_string);
    let custom_id = query.get("filter[custom_id]").map(str::to_string);
    let path = uri.path().to_string();
    let answer = state
        .read(move |conn| {
            require_realm(conn, &realm)?;
            let mut sql = format!("{CONSUMER_SELECT} WHERE realm_id = ?1");
            let mut params: Vec<Value> = vec![realm.to_string().into()];
            let mut filters: Vec<(&str, &str)> = Vec::new();
            if let Some(u) = &username {
                params.push(u.clone().into());
                sql.push_str(&format!(" AND username = ?{}", params.len()));
                filters.push(("filter[username]", u));
            }
            if let Some(c) = &custom_id {
                params.push(c.clone().into());
                sql.push_str(&format!(" AND custom_id = ?{}", params.len()));
                filters.push(("filter[custom_id]", c));
            }
            let (rows, more) = pagination::fetch(conn, &sql, params, &page, consumer)?;
            Ok(pagination::page(rows, more, &page, &path, &filters))
        })
        .await?;
    Ok(Json(answer))
}

/// Get a consumer.
#[utoipa::path(get, path = "/v1/realms/{realmId}/consumers/{consumerId}", tag = "consumers",
    params(("realmId" = Uuid, Path), ("consumerId" = Uuid, Path)),
    responses((status = 200, body = Consumer), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn get(
    _: Admin,
    State(state): State<AppState>,
    Path((realm_id, consumer_id)): Path<(String, String)>,
) -> Result<Json<Consumer>, ApiError> {
    let realm = parse_id("realmId", &realm_id)?;
    let id = parse_id("consumerId", &consumer_id)?;
    let found = state.read(move |conn| load(conn, &realm, &id)).await?;
    Ok(Json(found))
}

/// Change a consumer (only the fields given; `custom_id`/`type` null clears them).
#[utoipa::path(patch, path = "/v1/realms/{realmId}/consumers/{consumerId}", tag = "consumers",
    params(("realmId" = Uuid, Path), ("consumerId" = Uuid, Path)),
    request_body = UpdateConsumer,
    responses((status = 200, body = Consumer), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("admin_token" = [])))]
pub async fn update(
    _: Admin,
    State(state): State<AppState>,
    Path((realm_id, consumer_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdateConsumer>,
) -> Result<Json<Consumer>, ApiError> {
    let realm = parse_id("realmId", &realm_id)?;
    let id = parse_id("consumerId", &consumer_id)?;
    let mut checks = Checks::default();
    check_fields(
        &mut checks,
        body.username.as_deref(),
        body.custom_id.as_ref().and_then(|c| c.as_deref()),
        body.kind.as_ref().and_then(|k| k.as_deref()),
        body.tags.as_deref(),
        body.consumer_groups.as_deref(),
    );
    checks.finish()?;
    let updated = state
        .write(move |tx| {
            let current = load(tx, &realm, &id)?;
            let username = body.username.unwrap_or(current.username);
            let result = tx.execute(
                "UPDATE consumers SET username = ?2, custom_id = ?3, type = ?4, tags = ?5,
                    consumer_groups = ?6, updated_at = ?7 WHERE id = ?1",
                rusqlite::params![
                    id.to_string(),
                    username,
                    body.custom_id.unwrap_or(current.custom_id),
                    body.kind.unwrap_or(current.kind),
                    to_json(&body.tags.unwrap_or(current.tags)),
                    to_json(
                        &body
                            .consumer_groups
                            .map(|g| dedup(&g))
                            .unwrap_or(current.consumer_groups)
                    ),
                    clock::now()
                ],
            );
            match result {
                Err(e) if is_unique_violation(&e) => Err(username_taken(&username, &realm)),
                other => other.map_err(ApiError::from),
            }?;
            load(tx, &realm, &id)
        })
        .await?;
    Ok(Json(updated))
}

/// Delete a consumer and its keys.
#[utoipa::path(delete, path = "/v1/realms/{realmId}/consumers/{consumerId}", tag = "consumers",
    params(("realmId" = Uuid, Path), ("consumerId" = Uuid, Path)),
    responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn delete(
    _: Admin,
    State(state): State<AppState>,
    Path((realm_id, consumer_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let realm = parse_id("realmId", &realm_id)?;
    let id = parse_id("consumerId", &consumer_id)?;
    state
        .write(move |tx| {
            let n = tx.execute(
                "DELETE FROM consumers WHERE id = ?1 AND realm_id = ?2",
                [id.to_string(), realm.to_string()],
            )?;
            if n == 0 {
                return Err(not_found(&realm, &id));
            }
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Move a consumer, with its keys, to another realm.
#[utoipa::path(post, path = "/v1/realms/{realmId}/consumers/{consumerId}/move", tag = "consumers",
    params(("realmId" = Uuid, Path), ("consumerId" = Uuid, Path)),
    request_body = MoveConsumer,
    responses((status = 201, body = MovedConsumer), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem, description = "the consumer or the target realm does not exist"),
        (status = 409, body = Problem, description = "the username or one of its keys already exists in the target realm")),
    security(("admin_token" = [])))]
pub async fn move_consumer(
    _: Admin,
    State(state): State<AppState>,
    Path((realm_id, consumer_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<MoveConsumer>,
) -> Result<(StatusCode, Json<MovedConsumer>), ApiError> {
    let realm = parse_id("realmId", &realm_id)?;
    let id = parse_id("consumerId", &consumer_id)?;
    let target = body.target_realm_id;
    state
        .write(move |tx| {
            let current = load(tx, &realm, &id)?;
            if target == realm {
                return Ok(());
            }
            require_realm(tx, &target)?;
            let moved = tx.execute(
                "UPDATE consumers SET realm_id = ?2, updated_at = ?3 WHERE id = ?1",
                rusqlite::params![id.to_string(), target.to_string(), clock::now()],
            );
            match moved {
                Err(e) if is_unique_violation(&e) => {
                    Err(username_taken(&current.username, &target))
                }
                other => other.map_err(ApiError::from),
            }?;
            let keys = tx.execute(
                "UPDATE keys SET realm_id = ?2 WHERE consumer_id = ?1",
                [id.to_string(), target.to_string()],
            );
            match keys {
                Err(e) if is_unique_violation(&e) => Err(ApiError::conflict(format!(
                    "a key of consumer {id} already exists in realm {target}"
                ))),
                other => other.map(|_| ()).map_err(ApiError::from),
            }
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(MovedConsumer { realm_id: target }),
    ))
}
