//! Health, metrics and the OpenAPI document (no authentication).

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{consumers, control_planes, identity, keys, realms};
use crate::db;
use crate::error::{ApiError, InvalidParameter, Problem};
use crate::model::*;
use crate::state::AppState;

/// 200 when the database answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Problem)))]
pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state
        .read(db::ping)
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database unavailable"))?;
    Ok(Json(Health { status: "ok" }))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics().render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn openapi() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let text = DOCUMENT.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_default());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text.as_str(),
    )
        .into_response()
}

struct BearerSchemes;

impl Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                "admin_token",
                "an admin token (REALM_ADMIN_TOKEN or `realm-service token create`)",
            ),
            ("data_plane_token", "a data-plane token of a control plane"),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(what.to_string()))
                        .build(),
                ),
            );
        }
    }
}

/// The OpenAPI 3 description of every route, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "realm-service", description = "Realms, consumers and API keys (Konnect Consumers API v1 shape), and the identity endpoint for data planes."),
    paths(
        health, metrics, openapi,
        control_planes::create, control_planes::list, control_planes::get, control_planes::delete,
        control_planes::create_token, control_planes::list_tokens, control_planes::delete_token,
        realms::create, realms::list, realms::get, realms::update, realms::delete,
        consumers::create, consumers::list, consumers::get, consumers::update, consumers::delete,
        consumers::move_consumer,
        keys::create, keys::list, keys::get, keys::delete,
        identity::authenticate,
    ),
    components(schemas(Problem, InvalidParameter, ControlPlane, DataPlaneToken, CreatedDataPlaneToken,
        Realm, Consumer, Key, CreatedKey, KeyType, Identity, Credential, PageMeta, PageInfo)),
    modifiers(&BearerSchemes),
)]
pub struct ApiDoc;
