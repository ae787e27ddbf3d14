//! Realms (`/v1/realms`).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Json;
use uuid::Uuid;

use super::Admin;
use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, QueryParams};
use crate::model::{CreateRealm, Page, Realm, UpdateRealm};
use crate::pagination::{self, PageRequest, PAGE_PARAMS};
use crate::state::AppState;
use crate::store::{NewRealm, RealmChanges};
use crate::validate::{dedup, Checks, DEFAULT_REALM_TTL, MAX_NAME, MAX_REALM_TTL, MIN_REALM_TTL};

fn not_found(id: &Uuid) -> ApiError {
    ApiError::from(crate::store::StoreError::NotFound(
        crate::store::Missing::Realm(*id),
    ))
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
        .store()
        .create_realm(NewRealm {
            name: body.name,
            ttl: body.ttl.unwrap_or(DEFAULT_REALM_TTL),
            negative_ttl: body.negative_ttl.unwrap_or(DEFAULT_REALM_TTL),
            consumer_groups: dedup(&body.consumer_groups.unwrap_or_default()),
            allow_all_control_planes: body.allow_all_control_planes.unwrap_or(false),
            allowed_control_planes: dedup(&body.allowed_control_planes.unwrap_or_default()),
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
    let (rows, more) = state.store().list_realms(page.clone()).await?;
    Ok(Json(pagination::page(rows, more, &page, uri.path(), &[])))
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
    let found = state.store().find_realm(id).await?;
    Ok(Json(found.ok_or_else(|| not_found(&id))?))
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
        .store()
        .update_realm(
            id,
            RealmChanges {
                name: body.name,
                ttl: body.ttl,
                negative_ttl: body.negative_ttl,
                consumer_groups: body.consumer_groups.map(|g| dedup(&g)),
                allow_all_control_planes: body.allow_all_control_planes,
                allowed_control_planes: body.allowed_control_planes.map(|a| dedup(&a)),
            },
        )
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
    state.store().delete_realm(id, force).await?;
    Ok(StatusCode::NO_CONTENT)
}
