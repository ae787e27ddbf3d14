//! Health, metrics and the OpenAPI document (no authentication).

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    consumers, control_planes, identity, key_check, keys, realms, AUTHENTICATE_ROUTE,
    BODY_READ_TIMEOUT,
};
use crate::error::{ApiError, InvalidParameter, Problem, PROBLEM_JSON};
use crate::model::*;
use crate::pagination;
use crate::state::AppState;

/// 200 when the database answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Problem)))]
pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state
        .store()
        .ping()
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

/// What holds for every operation, applied to the generated document in one place (as
/// [`crate::error::to_problem`] applies it to every answer): error answers are
/// `application/problem+json`; every route that reads a JSON body may answer 408, 413 and (unless
/// it ignores the content type, as authenticate does) 415; the paging parameters have the range
/// and cursor shape that [`crate::pagination`] accepts.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{Content, RefOr, Response};

        let problem_ref = || RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem"));
        let problem = |description: &str| {
            let mut response = Response::new(description);
            response
                .content
                .insert(PROBLEM_JSON.to_string(), Content::new(Some(problem_ref())));
            RefOr::T(response)
        };
        let is_problem = |content: &Content| matches!(&content.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem"));
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                if operation.request_body.is_some() {
                    let late = format!(
                        "the body did not arrive within {} s",
                        BODY_READ_TIMEOUT.as_secs()
                    );
                    let mut extra = vec![
                        (StatusCode::REQUEST_TIMEOUT, late.as_str()),
                        (StatusCode::PAYLOAD_TOO_LARGE, "the body is over 1 MiB"),
                    ];
                    if path != AUTHENTICATE_ROUTE {
                        extra.push((
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "the body is not Content-Type: application/json",
                        ));
                    }
                    for (status, description) in extra {
                        responses
                            .entry(status.as_str().to_string())
                            .or_insert_with(|| problem(description));
                    }
                }
                for (status, response) in responses.iter_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    if response.description.is_empty() {
                        response.description = status
                            .parse::<u16>()
                            .ok()
                            .and_then(|code| StatusCode::from_u16(code).ok())
                            .and_then(|code| code.canonical_reason())
                            .unwrap_or_default()
                            .to_string();
                    }
                    if let Some(content) = response.content.shift_remove("application/json") {
                        let key = if is_problem(&content) {
                            PROBLEM_JSON
                        } else {
                            "application/json"
                        };
                        response.content.insert(key.to_string(), content);
                    }
                }
                for parameter in operation.parameters.iter_mut().flatten() {
                    let schema = match parameter.name.as_str() {
                        "page[size]" => ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(1))
                            .maximum(Some(pagination::MAX_PAGE_SIZE)),
                        "page[after]" | "page[before]" => ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some(pagination::CURSOR_PATTERN)),
                        _ => continue,
                    };
                    parameter.schema = Some(schema.into());
                    let description = match parameter.name.as_str() {
                        "page[size]" => format!(
                            "Items per page, 1 to {}; default {}.",
                            pagination::MAX_PAGE_SIZE,
                            pagination::DEFAULT_PAGE_SIZE
                        ),
                        "page[after]" => "A cursor, as in `meta.page.next`: the page after it. \
                            Cannot be combined with `page[before]` (400)."
                            .to_string(),
                        _ => "A cursor, as in `meta.page.previous`: the page before it. \
                            Cannot be combined with `page[after]` (400)."
                            .to_string(),
                    };
                    parameter.description = Some(description);
                }
            }
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
        keys::create, keys::list, keys::get, keys::delete, key_check::check,
        identity::authenticate,
    ),
    components(schemas(Problem, InvalidParameter, ControlPlane, DataPlaneToken, CreatedDataPlaneToken,
        Realm, Consumer, Key, CreatedKey, KeyType, Identity, Credential, PageMeta, PageInfo,
        key_check::KeyCheck, key_check::KeyCheckResult, key_check::KeyCheckConsumer, key_check::KeyCheckCredential)),
    modifiers(&BearerSchemes, &Conventions),
)]
pub struct ApiDoc;
