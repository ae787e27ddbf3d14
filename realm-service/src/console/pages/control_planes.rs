//! Control planes and their data-plane tokens.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use maud::html;
use serde_json::{json, Value};

use super::{call, delete_then, done, failed, ids, Page, Posted};
use crate::console::client::Problem;
use crate::console::session::Signed;
use crate::console::views::{self, Errors, Section};
use crate::console::Console;

pub async fn list(State(console): State<Console>, signed: Signed) -> Response {
    render_list(&console, &signed, "", &Errors::none(), StatusCode::OK).await
}

async fn render_list(
    console: &Console,
    signed: &Signed,
    name: &str,
    errors: &Errors,
    status: StatusCode,
) -> Response {
    let (cps, more) = match console
        .api()
        .get_all(&signed.token, "/v2/control-planes", 1000)
        .await
    {
        Ok(c) => c,
        Err(problem) => return failed(console, signed, problem),
    };
    let body = html! {
        (views::heading(&[], "Control planes", html! {}))
        p.muted { "A control plane stands for a fleet of gateways. Realms name the control planes whose gateways may look their keys up; each gateway authenticates with a data-plane token of its control plane." }
        div.grid2 {
            section.card {
                @if cps.is_empty() {
                    p.empty { "No control planes yet. Create one to give gateways a data-plane token." }
                } @else {
                    table #control-planes {
                        thead { tr { th { "Name" } th { "Id" } th { "Created" } } }
                        tbody {
                            @for cp in &cps {
                                tr {
                                    td { a href=(format!("/console/control-planes/{}", views::text(cp, "id"))) { (views::text(cp, "name")) } }
                                    td { code.id { (views::text(cp, "id")) } }
                                    td { (views::when(views::text(cp, "created_at"))) }
                                }
                            }
                        }
                    }
                    @if more { p.muted { "Showing the first 1000." } }
                }
            }
            section.card {
                h2 { "New control plane" }
                (errors.banner())
                form method="post" action="/console/control-planes" {
                    (views::csrf(signed))
                    (views::field("Name", "name", "text", name, "1-255 characters, e.g. the fleet or region.", errors))
                    button.button.primary type="submit" { "Create control plane" }
                }
            }
        }
    };
    views::page_with_status(
        status,
        "Control planes",
        Section::ControlPlanes,
        signed,
        body,
    )
}

pub async fn create(State(console): State<Console>, posted: Posted) -> Response {
    let Posted { signed, form } = posted;
    let name = form.get("name");
    let body = json!({ "name": name });
    match call(
        &console,
        &signed,
        Method::POST,
        "/v2/control-planes",
        Some(&body),
    )
    .await
    {
        Ok(cp) => done(
            &console,
            &signed,
            &format!("/console/control-planes/{}", views::text(&cp, "id")),
            format!("Control plane {} created.", views::text(&cp, "name")),
        ),
        Err(problem) if problem.is_unauthorized() => failed(&console, &signed, problem),
        Err(problem) => {
            render_list(
                &console,
                &signed,
                name,
                &Errors::from_problem(&problem, &["name"]),
                problem.status,
            )
            .await
        }
    }
}

pub async fn show(State(console): State<Console>, signed: Signed, Path(cp): Path<String>) -> Page {
    let [cp] = ids([&cp])?;
    Ok(render_show(
        &console,
        &signed,
        &cp,
        None,
        "",
        &Errors::none(),
        StatusCode::OK,
    )
    .await)
}

async fn render_show(
    console: &Console,
    signed: &Signed,
    cp_id: &str,
    created: Option<&Value>,
    name: &str,
    errors: &Errors,
    status: StatusCode,
) -> Response {
    let api = console.api();
    let loaded: Result<(Value, Vec<Value>), Problem> = async {
        let cp = api
            .get(&signed.token, &format!("/v2/control-planes/{cp_id}"))
            .await?;
        let (tokens, _) = api
            .get_all(
                &signed.token,
                &format!("/v2/control-planes/{cp_id}/data-plane-tokens"),
                1000,
            )
            .await?;
        Ok((cp, tokens))
    }
    .await;
    let (cp, tokens) = match loaded {
        Ok(x) => x,
        Err(problem) => return failed(console, signed, problem),
    };
    let cp_name = views::text(&cp, "name");
    let body = html! {
        (views::heading(&[("Control planes", "/console/control-planes".to_string())], cp_name, html! {
            (views::post_button(signed, &format!("/console/control-planes/{cp_id}/delete"), "Delete control plane", "button danger",
                &format!("Delete control plane {cp_name}? Its data-plane tokens stop working at once and it is removed from every realm.")))
        }))
        @if let Some(created) = created {
            (views::secret_once("data-plane token", views::text(created, "token")))
        }
        dl.props {
            dt { "Id" } dd { code { (cp_id) } }
            dt { "Created" } dd { (views::when(views::text(&cp, "created_at"))) }
        }
        div.grid2 {
            section.card {
                h2 { "Data-plane tokens" }
                @if tokens.is_empty() {
                    p.empty { "No tokens. A gateway of this control plane needs one to ask realms about keys." }
                } @else {
                    table #tokens {
                        thead { tr { th { "Name" } th { "Id" } th { "Created" } th {} } }
                        tbody {
                            @for t in &tokens {
                                @let tid = views::text(t, "id");
                                tr {
                                    td { (views::opt_text(t, "name").unwrap_or("—")) }
                                    td { code.id { (tid) } }
                                    td { (views::when(views::text(t, "created_at"))) }
                                    td.right { (views::post_button(signed, &format!("/console/control-planes/{cp_id}/tokens/{tid}/revoke"), "Revoke", "button small danger",
                                        "Revoke this data-plane token? Gateways using it are refused at once.")) }
                                }
                            }
                        }
                    }
                }
            }
            section.card {
                h2 { "New data-plane token" }
                (errors.banner())
                form method="post" action=(format!("/console/control-planes/{cp_id}/tokens")) {
                    (views::csrf(signed))
                    (views::field("Name (optional)", "name", "text", name, "e.g. the gateway it is for.", errors))
                    button.button.primary type="submit" { "Create token" }
                }
            }
        }
    };
    views::page_with_status(status, cp_name, Section::ControlPlanes, signed, body)
}

pub async fn create_token(
    State(console): State<Console>,
    Path(cp): Path<String>,
    Posted { signed, form }: Posted,
) -> Page {
    let [cp] = ids([&cp])?;
    let name = form.get("name").trim();
    let body = if name.is_empty() {
        json!({})
    } else {
        json!({ "name": name })
    };
    let path = format!("/v2/control-planes/{cp}/data-plane-tokens");
    let (created, name, errors, status) =
        match call(&console, &signed, Method::POST, &path, Some(&body)).await {
            // Rendered here, not redirected: the token must never travel in a URL.
            Ok(created) => (Some(created), "", Errors::none(), StatusCode::CREATED),
            Err(problem)
                if problem.is_unauthorized() || problem.status == StatusCode::NOT_FOUND =>
            {
                return Err(failed(&console, &signed, problem));
            }
            Err(problem) => (
                None,
                name,
                Errors::from_problem(&problem, &["name"]),
                problem.status,
            ),
        };
    Ok(render_show(
        &console,
        &signed,
        &cp,
        created.as_ref(),
        name,
        &errors,
        status,
    )
    .await)
}

pub async fn revoke_token(
    State(console): State<Console>,
    Path((cp, token)): Path<(String, String)>,
    Posted { signed, .. }: Posted,
) -> Page {
    let [cp, token] = ids([&cp, &token])?;
    let path = format!("/v2/control-planes/{cp}/data-plane-tokens/{token}");
    let to = format!("/console/control-planes/{cp}");
    Ok(delete_then(&console, &signed, &path, &to, "Data-plane token revoked.").await)
}

pub async fn delete(
    State(console): State<Console>,
    Path(cp): Path<String>,
    Posted { signed, .. }: Posted,
) -> Page {
    let [cp] = ids([&cp])?;
    let path = format!("/v2/control-planes/{cp}");
    let to = "/console/control-planes";
    Ok(delete_then(&console, &signed, &path, to, "Control plane deleted.").await)
}
