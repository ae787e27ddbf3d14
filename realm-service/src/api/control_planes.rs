//! Control planes and their data-plane tokens (`/v2/control-planes`).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Json;
use rusqlite::{Connection, Row};
use uuid::Uuid;

use super::{optional, uuid_at, Admin};
use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, QueryParams};
use crate::model::{
    ControlPlane, CreateControlPlane, CreateDataPlaneToken, CreatedDataPlaneToken, DataPlaneToken,
    Page,
};
use crate::pagination::{self, PageRequest, PAGE_PARAMS};
use crate::state::AppState;
use crate::validate::{Checks, MAX_NAME};
use crate::{clock, secrets};

const CP_SELECT: &str = "SELECT seq, id, name, created_at, updated_at FROM control_planes";

fn control_plane(row: &Row) -> rusqlite::Result<ControlPlane> {
    Ok(ControlPlane {
        id: uuid_at(row, 1)?,
        name: row.get(2)?,
        created_at: clock::rfc3339(row.get(3)?),
        updated_at: clock::rfc3339(row.get(4)?),
    })
}

pub(crate) fn exists(conn: &Connection, id: &Uuid) -> Result<bool, ApiError> {
    Ok(optional(
        conn.prepare_cached("SELECT 1 FROM control_planes WHERE id = ?1")?
            .query_row([id.to_string()], |_| Ok(())),
    )?
    .is_some())
}

fn not_found(id: &Uuid) -> ApiError {
    ApiError::not_found(format!("control plane {id} not found"))
}

/// Create a control plane.
#[utoipa::path(post, path = "/v2/control-planes", tag = "control planes",
    request_body = CreateControlPlane,
    responses(
        (status = 201, body = ControlPlane),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 413, body = Problem)),
    security(("admin_token" = [])))]
pub async fn create(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateControlPlane>,
) -> Result<(StatusCode, Json<ControlPlane>), ApiError> {
    let mut checks = Checks::default();
    checks.text("name", &body.name, MAX_NAME);
    checks.finish()?;
    let cp = state
        .write(move |tx| {
            let now = clock::now();
            let id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO control_planes (id, name, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                rusqlite::params![id.to_string(), body.name, now],
            )?;
            Ok(ControlPlane {
                id,
                name: body.name,
                created_at: clock::rfc3339(now),
                updated_at: clock::rfc3339(now),
            })
        })
        .await?;
    Ok((StatusCode::CREATED, Json(cp)))
}

/// List control planes.
#[utoipa::path(get, path = "/v2/control-planes", tag = "control planes",
    params(
        ("page[size]" = Option<u32>, Query, description = "1 to 1000, default 100"),
        ("page[after]" = Option<String>, Query, description = "cursor from meta.page.next"),
        ("page[before]" = Option<String>, Query, description = "cursor from meta.page.previous")),
    responses((status = 200, body = Page<ControlPlane>), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("admin_token" = [])))]
pub async fn list(
    _: Admin,
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Json<Page<ControlPlane>>, ApiError> {
    let query = QueryParams::parse(uri.query(), &PAGE_PARAMS)?;
    let page = PageRequest::from_query(&query)?;
    let path = uri.path().to_string();
    let answer = state
        .read(move |conn| {
            let sql = format!("{CP_SELECT} WHERE 1 = 1");
            let (rows, more) = pagination::fetch(conn, &sql, vec![], &page, control_plane)?;
            Ok(pagination::page(rows, more, &page, &path, &[]))
        })
        .await?;
    Ok(Json(answer))
}

/// Get a control plane.
#[utoipa::path(get, path = "/v2/control-planes/{cpId}", tag = "control planes",
    params(("cpId" = Uuid, Path)),
    responses((status = 200, body = ControlPlane), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn get(
    _: Admin,
    State(state): State<AppState>,
    Path(cp_id): Path<String>,
) -> Result<Json<ControlPlane>, ApiError> {
    let id = parse_id("cpId", &cp_id)?;
    let cp = state
        .read(move |conn| {
            optional(
                conn.prepare_cached(&format!("{CP_SELECT} WHERE id = ?1"))?
                    .query_row([id.to_string()], control_plane),
            )?
            .ok_or_else(|| not_found(&id))
        })
        .await?;
    Ok(Json(cp))
}

/// Delete a control plane, its data-plane tokens, and its place in every realm's
/// `allowed_control_planes`.
#[utoipa::path(delete, path = "/v2/control-planes/{cpId}", tag = "control planes",
    params(("cpId" = Uuid, Path)),
    responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn delete(
    _: Admin,
    State(state): State<AppState>,
    Path(cp_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("cpId", &cp_id)?;
    state
        .write(move |tx| {
            let n = tx.execute("DELETE FROM control_planes WHERE id = ?1", [id.to_string()])?;
            if n == 0 {
                return Err(not_found(&id));
            }
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a data-plane token. The token is in this answer only.
#[utoipa::path(post, path = "/v2/control-planes/{cpId}/data-plane-tokens", tag = "control planes",
    params(("cpId" = Uuid, Path)),
    request_body = CreateDataPlaneToken,
    responses((status = 201, body = CreatedDataPlaneToken), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn create_token(
    _: Admin,
    State(state): State<AppState>,
    Path(cp_id): Path<String>,
    ApiJson(body): ApiJson<CreateDataPlaneToken>,
) -> Result<(StatusCode, Json<CreatedDataPlaneToken>), ApiError> {
    let cp = parse_id("cpId", &cp_id)?;
    let mut checks = Checks::default();
    checks.opt_text("name", body.name.as_deref(), MAX_NAME);
    checks.finish()?;
    let token = secrets::generate(secrets::DATA_PLANE_TOKEN_PREFIX).map_err(ApiError::internal)?;
    let hash = secrets::hash(&token);
    let created = state
        .write(move |tx| {
            if !exists(tx, &cp)? {
                return Err(not_found(&cp));
            }
            let now = clock::now();
            let id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO data_plane_tokens (id, control_plane_id, name, token_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![id.to_string(), cp.to_string(), body.name, &hash[..], now],
            )?;
            Ok(CreatedDataPlaneToken {
                id,
                name: body.name,
                control_plane_id: cp,
                token,
                created_at: clock::rfc3339(now),
            })
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

fn data_plane_token(row: &Row) -> rusqlite::Result<DataPlaneToken> {
    Ok(DataPlaneToken {
        id: uuid_at(row, 1)?,
        name: row.get(2)?,
        control_plane_id: uuid_at(row, 3)?,
        created_at: clock::rfc3339(row.get(4)?),
    })
}

/// List a control plane's data-plane tokens (never the tokens themselves).
#[utoipa::path(get, path = "/v2/control-planes/{cpId}/data-plane-tokens", tag = "control planes",
    params(("cpId" = Uuid, Path),
        ("page[size]" = Option<u32>, Query, description = "1 to 1000, default 100"),
        ("page[after]" = Option<String>, Query), ("page[before]" = Option<String>, Query)),
    responses((status = 200, body = Page<DataPlaneToken>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn list_tokens(
    _: Admin,
    State(state): State<AppState>,
    Path(cp_id): Path<String>,
    uri: Uri,
) -> Result<Json<Page<DataPlaneToken>>, ApiError> {
    let cp = parse_id("cpId", &cp_id)?;
    let query = QueryParams::parse(uri.query(), &PAGE_PARAMS)?;
    let page = PageRequest::from_query(&query)?;
    let path = uri.path().to_string();
    let answer = state
        .read(move |conn| {
            if !exists(conn, &cp)? {
                return Err(not_found(&cp));
            }
            let sql = "SELECT seq, id, name, control_plane_id, created_at FROM data_plane_tokens
                       WHERE control_plane_id = ?1";
            let (rows, more) = pagination::fetch(
                conn,
                sql,
                vec![cp.to_string().into()],
                &page,
                data_plane_token,
            )?;
            Ok(pagination::page(rows, more, &page, &path, &[]))
        })
        .await?;
    Ok(Json(answer))
}

/// Delete (revoke) a data-plane token: it stops working at once.
#[utoipa::path(delete, path = "/v2/control-planes/{cpId}/data-plane-tokens/{tokenId}", tag = "control planes",
    params(("cpId" = Uuid, Path), ("tokenId" = Uuid, Path)),
    responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("admin_token" = [])))]
pub async fn delete_token(
    _: Admin,
    State(state): State<AppState>,
    Path((cp_id, token_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let cp = parse_id("cpId", &cp_id)?;
    let token = parse_id("tokenId", &token_id)?;
    state
        .write(move |tx| {
            let n = tx.execute(
                "DELETE FROM data_plane_tokens WHERE id = ?1 AND control_plane_id = ?2",
                [token.to_string(), cp.to_string()],
            )?;
            if n == 0 {
                return Err(ApiError::not_found(format!(
                    "data-plane token {token} not found in control plane {cp}"
                )));
            }
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
