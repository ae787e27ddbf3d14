//! Control planes and their data-plane tokens (`/v2/control-planes`).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Json;

use super::Admin;
use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, QueryParams};
use crate::model::{
    ControlPlane, CreateControlPlane, CreateDataPlaneToken, CreatedDataPlaneToken, DataPlaneToken,
    Page,
};
use crate::pagination::{self, PageRequest, PAGE_PARAMS};
use crate::secrets;
use crate::state::AppState;
use crate::validate::{Checks, MAX_NAME};

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
    let cp = state.store().create_control_plane(body.name).await?;
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
    let (rows, more) = state.store().list_control_planes(page.clone()).await?;
    Ok(Json(pagination::page(rows, more, &page, uri.path(), &[])))
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
    Ok(Json(state.store().get_control_plane(id).await?))
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
    state.store().delete_control_plane(id).await?;
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
        .store()
        .create_data_plane_token(cp, body.name, hash)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedDataPlaneToken {
            id: created.id,
            name: created.name,
            control_plane_id: created.control_plane_id,
            token,
            created_at: created.created_at,
        }),
    ))
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
    let (rows, more) = state
        .store()
        .list_data_plane_tokens(cp, page.clone())
        .await?;
    Ok(Json(pagination::page(rows, more, &page, uri.path(), &[])))
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
    state.store().delete_data_plane_token(cp, token).await?;
    Ok(StatusCode::NO_CONTENT)
}
