//! Consumers of a realm (`/v1/realms/{realmId}/consumers`).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Json;

use super::Admin;
use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, QueryParams};
use crate::model::{Consumer, CreateConsumer, MoveConsumer, MovedConsumer, Page, UpdateConsumer};
use crate::pagination::{self, PageRequest, PAGE_PARAMS};
use crate::state::AppState;
use crate::store::{ConsumerChanges, ConsumerFilter, NewConsumer};
use crate::validate::{dedup, Checks, MAX_NAME, MAX_TAG};

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
        .store()
        .create_consumer(
            realm,
            NewConsumer {
                username: body.username,
                custom_id: body.custom_id,
                kind: body.kind,
                tags: body.tags.unwrap_or_default(),
                consumer_groups: dedup(&body.consumer_groups.unwrap_or_default()),
            },
        )
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
    let filter = ConsumerFilter {
        username: query.get("filter[username]").map(str::to_string),
        custom_id: query.get("filter[custom_id]").map(str::to_string),
    };
    let mut filters: Vec<(&str, &str)> = Vec::new();
    if let Some(u) = &filter.username {
        filters.push(("filter[username]", u));
    }
    if let Some(c) = &filter.custom_id {
        filters.push(("filter[custom_id]", c));
    }
    let (rows, more) = state
        .store()
        .list_consumers(realm, filter.clone(), page.clone())
        .await?;
    Ok(Json(pagination::page(
        rows,
        more,
        &page,
        uri.path(),
        &filters,
    )))
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
    Ok(Json(state.store().get_consumer(realm, id).await?))
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
        .store()
        .update_consumer(
            realm,
            id,
            ConsumerChanges {
                username: body.username,
                custom_id: body.custom_id,
                kind: body.kind,
                tags: body.tags,
                consumer_groups: body.consumer_groups.map(|g| dedup(&g)),
            },
        )
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
    state.store().delete_consumer(realm, id).await?;
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
    state.store().move_consumer(realm, id, target).await?;
    Ok((
        StatusCode::CREATED,
        Json(MovedConsumer { realm_id: target }),
    ))
}
