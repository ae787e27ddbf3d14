//! Realms (`/v1/realms`).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Json;
use rusqlite::{Connection, Row};
use uuid::Uuid;

use super::{optional, strings_at, to_json, uuid_at, Admin};
use crate::clock;
use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, QueryParams};
use crate::model::{CreateRealm, Page, Realm, UpdateRealm};
use crate::pagination::{self, PageRequest, PAGE_PARAMS};
use crate::state::AppState;
use crate::validate::{dedup, Checks, DEFAULT_REALM_TTL, MAX_NAME, MAX_REALM_TTL, MIN_REALM_TTL};

const REALM_SELECT: &str = "SELECT seq, id, name, ttl, negative_ttl, consumer_groups,
    allow_all_control_planes, created_at, updated_at,
    (SELECT group_concat(control_plane_id, ',' ORDER BY position)
       FROM realm_control_planes WHERE realm_id = realms.id)
    FROM realms";

fn realm(row: &Row) -> rusqlite::Result<Realm> {
    let allowed: Option<String> = row.get(9)?;
    let allowed_control_planes = allowed
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            Uuid::parse_str(s).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    9,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Realm {
        id: uuid_at(row, 1)?,
        name: row.get(2)?,
        ttl: row.get(3)?,
        negative_ttl: row.get(4)?,
        consumer_groups: strings_at(row, 5)?,
        allow_all_control_planes: row.get::<_, i64>(6)? != 0,
        created_at: clock::rfc3339(row.get(7)?),
        updated_at: clock::rfc3339(row.get(8)?),
        allowed_control_planes,
    })
}

/// The realm, or `None`.
pub(crate) fn load(conn: &Connection, id: &Uuid) -> Result<Option<Realm>, ApiError> {
    Ok(optional(
        conn.prepare_cached(&format!("{REALM_SELECT} WHERE id = ?1"))?
            .query_row([id.to_string()], realm),
    )?)
}

pub(crate) fn not_found(id: &Uuid) -> ApiError {
    ApiError::not_found(format!("realm {id} not found"))
}

/// The realm must exist (404 otherwise).
pub(crate) fn require(conn: &Connection, id: &Uuid) -> Result<(), ApiError> {
    let found = optional(
        conn.prepare_cached("SELECT 1 FROM realms WHERE id = ?1")?
            .query_row([id.to_string()], |_| Ok(())),
    )?;
    found.ok_or_else(|| not_found(id))
}

fn check_fields(
    checks: &mut Checks,
    name: Option<&str>,
    ttl: Option<i64>,
    negative_ttl: Option<i64>,
    groups: Option<&[String]>,
) {
    checks.opt_text("name", name, MAX_NAME);
    checks.range("ttl", ttl, MIN_REALM_TTL, MAX_REALM_TTL, "minutes");
    checks.range(
        "negative_ttl",
        negative_ttl,
        MIN_REALM_TTL,
        MAX_REALM_TTL,
        "minutes",
    );
    checks.list("consumer_groups", groups, MAX_NAME);
}

/// Replaces the realm's allowed control planes; each must exist (400 naming it otherwise).
fn set_allowed(conn: &Connection, realm: &Uuid, allowed: &[Uuid]) -> Result<(), ApiError> {
    let allowed = dedup(allowed);
    let mut checks = Checks::default();
    for (i, cp) in allowed.iter().enumerate() {
        if !super::control_planes::exists(conn, cp)? {
            checks.push(
                &format!("allowed_control_planes[{i}]"),
                "exists",
                format!("control plane {cp} does not exist"),
            );
        }
    }
    checks.finish()?;
    conn.execute(
        "DELETE FROM realm_control_planes WHERE realm_id = ?1",
        [realm.to_string()],
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO realm_control_planes (realm_id, control_plane_id, position) VALUES (?1, ?2, ?3)",
    )?;
    for (position, cp) in allowed.iter().enumerate() {
        insert.execute(rusqlite::params![
            realm.to_string(),
            cp.to_string(),
            position as i64
        ])?;
    }
    Ok(())
}

/// Create a realm.
#[utoipa::path(post, path = "/v1/realms", tag = "realms",
    request_body = CreateRealm,
    responses((status = 201, body = Realm), (status = 400, body = Problem), (status = 401, body = Problem), (status = 413, body = Problem)),
    security(("admin_token" = [])))]
pub async fn create(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateRealm>,
) -> Result<(StatusCode, Json<Realm>), ApiError> {
    let mut checks = Checks::default();
    checks.text("name", &body.name, MAX_NAME);
    check_fields(
        &mut checks,
        None,
        body.ttl,
        body.negative_ttl,
        body.consumer_groups.as_deref(),
    );
    checks.finish()?;
    let created = state
        .write(move |tx| {
            let now = clock::now();
            let id = Uuid::new_v4();
            let groups = dedup(&body.consumer_groups.unwrap_or_default());
            tx.execute(
                "INSERT INTO realms (id, name, ttl, negative_ttl, consumer_groups,
                    allow_all_control_planes, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                rusqlite::params![
                    id.to_string(),
                    body.name,
                    body.ttl.unwrap_or(DEFAULT_REALM_TTL),
                    body.negative_ttl.unwrap_or(DEFAULT_REALM_TTL),
                    to_json(&groups),
                    body.allow_all_control_planes.unwrap_or(false),
                    now
                ],
            )?;
            set_allowed(tx, &id, &body.allowed_control_planes.unwrap_or_default())?;
            load(tx, &id)?.ok_or_else(|| not_found(&id))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// List realms.
#[utoipa::path(get, path = "/v1/realms", tag = "realms",
    params(
        ("page[size]" = Option<u32>, Query, description = "1 to 1000, default 100"),
        ("page[after]" = Option<String>, Query), ("page[before]" = Option<String>, Query)),
    responses((status = 200, body = Page<Realm>), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("admin_token" = [])))]
pub async fn list(
    _: Admin,
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Json<Page<Realm>>, ApiError> {
    let query = QueryParams::parse(uri.query(), &PAGE_PARAMS)?;
    let page = PageRequest::from_query(&query)?;
    let path = uri.path().to_string();
    let answer = state
        .read(move |conn| {
            let sql = format!("{REALM_SELECT} WHERE 1 = 1");
            let (rows, more) = pagination::fetch(conn, &sql, vec![], &page, realm)?;
            Ok(pagination::page(rows, more, &page, &path, &[]))
        })
        .await?;
    Ok(Json(answer))
}

/// Get a realm.
#[utoipa::path(get, path = "/v1/realms/{realmId}", tag = "realms",
    params(("realmId" = Uuid, Path)),
    responses((status = 200, body = Realm), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn get(
    _: Admin,
    State(state): State<AppState>,
    Path(realm_id): Path<String>,
) -> Result<Json<Realm>, ApiError> {
    let id = parse_id("realmId", &realm_id)?;
    let found = state
        .read(move |conn| load(conn, &id)?.ok_or_else(|| not_found(&id)))
        .await?;
    Ok(Json(found))
}

/// Change a realm (only the fields given). Cached answers for it are dropped at once.
#[utoipa::path(patch, path = "/v1/realms/{realmId}", tag = "realms",
    params(("realmId" = Uuid, Path)),
    request_body = UpdateRealm,
    responses((status = 200, body = Realm), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn update(
    _: Admin,
    State(state): State<AppState>,
    Path(realm_id): Path<String>,
    ApiJson(body): ApiJson<UpdateRealm>,
) -> Result<Json<Realm>, ApiError> {
    let id = parse_id("realmId", &realm_id)?;
    let mut checks = Checks::default();
    check_fields(
        &mut checks,
        body.name.as_deref(),
        body.ttl,
        body.negative_ttl,
        body.consumer_groups.as_deref(),
    );
    checks.finish()?;
    let updated = state
        .write(move |tx| {
            let current = load(tx, &id)?.ok_or_else(|| not_found(&id))?;
            let groups = body
                .consumer_groups
                .map(|g| dedup(&g))
                .unwrap_or(current.consumer_groups);
            tx.execute(
                "UPDATE realms SET name = ?2, ttl = ?3, negative_ttl = ?4, consumer_groups = ?5,
                    allow_all_control_planes = ?6, updated_at = ?7 WHERE id = ?1",
                rusqlite::params![
                    id.to_string(),
                    body.name.unwrap_or(current.name),
                    body.ttl.unwrap_or(current.ttl),
                    body.negative_ttl.unwrap_or(current.negative_ttl),
                    to_json(&groups),
                    body.allow_all_control_planes
                        .unwrap_or(current.allow_all_control_planes),
                    clock::now()
                ],
            )?;
            if let Some(allowed) = body.allowed_control_planes {
                set_allowed(tx, &id, &allowed)?;
            }
            load(tx, &id)?.ok_or_else(|| not_found(&id))
        })
        .await?;
    Ok(Json(updated))
}

/// Delete a realm. With consumers left, only with `force=true` (which deletes them and their keys).
#[utoipa::path(delete, path = "/v1/realms/{realmId}", tag = "realms",
    params(("realmId" = Uuid, Path),
        ("force" = Option<bool>, Query, description = "delete the realm's consumers and keys too; default false")),
    responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn delete(
    _: Admin,
    State(state): State<AppState>,
    Path(realm_id): Path<String>,
    uri: Uri,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("realmId", &realm_id)?;
    let query = QueryParams::parse(uri.query(), &["force"])?;
    let force = match query.get("force") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "force",
                "enum",
                "must be true or false",
            ))
        }
    };
    state
        .write(move |tx| {
            require(tx, &id)?;
            if !force {
                let consumers: i64 = tx.query_row(
                    "SELECT count(*) FROM consumers WHERE realm_id = ?1",
                    [id.to_string()],
                    |r| r.get(0),
                )?;
                if consumers > 0 {
                    return Err(ApiError::invalid_field(
                        "force",
                        "force",
                        format!(
                            "the realm still has {consumers} consumer(s); delete them first or pass force=true"
                        ),
                    ));
                }
            }
            tx.execute("DELETE FROM realms WHERE id = ?1", [id.to_string()])?;
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
