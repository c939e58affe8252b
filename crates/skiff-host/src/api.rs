//! The REST API: a table of routes, each a thin handler over [`Host`]'s actions. The table
//! is also what the OpenAPI document is checked against.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::error::HostError;
use crate::model::ErrorBody;
use crate::service::Host;

/// The OpenAPI document, kept in the repository and served as is.
pub const OPENAPI: &str = include_str!("../openapi.json");
/// The console tail `GET /vms/{name}/console` returns by default, and the most it returns.
const DEFAULT_CONSOLE_BYTES: u64 = 64 * 1024;
pub const MAX_CONSOLE_BYTES: u64 = 16 << 20;
/// The longest `?timeout_secs=` of a stop (a day).
pub const MAX_STOP_TIMEOUT_SECS: u64 = 86_400;

impl IntoResponse for HostError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            log::error!("{self}");
        }
        error_response(status, self.to_string())
    }
}

fn error_response(status: StatusCode, error: String) -> Response {
    (status, Json(ErrorBody { error })).into_response()
}

type ApiResult<T> = Result<T, HostError>;

/// Query strings that do not parse are a 400 naming the parameter, as JSON like every error.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(v)| v)
        .map_err(|e| HostError::invalid("query", e.body_text()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateQuery {
    #[serde(default)]
    start: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopQuery {
    timeout_secs: Option<u64>,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleQuery {
    bytes: Option<u64>,
}

async fn host_status(State(host): State<Host>) -> impl IntoResponse {
    Json(host.status())
}

async fn metrics(State(host): State<Host>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&host.metric_samples(), &host.status()),
    )
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn recent_events(State(host): State<Host>) -> impl IntoResponse {
    Json(host.recent_events())
}

async fn list(State(host): State<Host>) -> impl IntoResponse {
    Json(host.list())
}

async fn create(
    State(host): State<Host>,
    q: Result<Query<CreateQuery>, QueryRejection>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let q = query(q)?;
    let info = if crate::images::Images::is_image_request(&body) {
        crate::images::create_vm(&host, &body, q.start).await?
    } else {
        host.create(&body, q.start).await?
    };
    Ok((StatusCode::CREATED, Json(info)))
}

async fn images_list(State(host): State<Host>) -> ApiResult<impl IntoResponse> {
    Ok(Json(host.images().list().await?))
}

async fn image_inspect(
    State(host): State<Host>,
    Path(reference): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(host.images().inspect(&reference).await?))
}

async fn image_remove(
    State(host): State<Host>,
    Path(reference): Path<String>,
) -> ApiResult<impl IntoResponse> {
    host.images().remove(&reference).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An import answers with JSON lines as it goes: progress, then the image or the error.
async fn image_import(State(host): State<Host>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let request: skiff_api::image::ImportRequest =
        serde_json::from_slice(&body).map_err(|e| HostError::invalid("import", e.to_string()))?;
    let events = host
        .images()
        .import(request, &host.config().image_dirs)
        .await?;
    let lines = futures_util::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(line), events))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    ))
}

async fn inspect(
    State(host): State<Host>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(host.inspect(&name).await?))
}

async fn remove(
    State(host): State<Host>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    host.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start(State(host): State<Host>, Path(name): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(host.start(&name).await?))
}

async fn stop(
    State(host): State<Host>,
    Path(name): Path<String>,
    q: Result<Query<StopQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let q = query(q)?;
    if q.timeout_secs.is_some_and(|t| t > MAX_STOP_TIMEOUT_SECS) {
        return Err(HostError::invalid(
            "timeout_secs",
            format!("must be at most {MAX_STOP_TIMEOUT_SECS}"),
        ));
    }
    let timeout = q.timeout_secs.map(Duration::from_secs);
    Ok(Json(host.stop(&name, timeout, q.force).await?))
}

async fn pause(State(host): State<Host>, Path(name): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(host.pause(&name).await?))
}

async fn resume(
    State(host): State<Host>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(host.resume(&name).await?))
}

async fn vm_events(
    State(host): State<Host>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(host.events(&name)?))
}

async fn console(
    State(host): State<Host>,
    Path(name): Path<String>,
    q: Result<Query<ConsoleQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let bytes = query(q)?.bytes.unwrap_or(DEFAULT_CONSOLE_BYTES);
    if bytes > MAX_CONSOLE_BYTES {
        return Err(HostError::invalid(
            "bytes",
            format!("must be at most {MAX_CONSOLE_BYTES}"),
        ));
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        host.console_log(&name, bytes)?,
    ))
}

/// Every route the server serves: (path, method, handler).
fn table() -> Vec<(&'static str, Method, MethodRouter<Host>)> {
    let mut table = vec![
        ("/openapi.json", Method::GET, get(openapi)),
        ("/metrics", Method::GET, get(metrics)),
        ("/host", Method::GET, get(host_status)),
        ("/events", Method::GET, get(recent_events)),
        ("/vms", Method::GET, get(list)),
        ("/vms", Method::POST, post(create)),
        ("/vms/{name}", Method::GET, get(inspect)),
        ("/vms/{name}", Method::DELETE, delete(remove)),
        ("/vms/{name}/start", Method::POST, post(start)),
        ("/vms/{name}/stop", Method::POST, post(stop)),
        ("/vms/{name}/pause", Method::POST, post(pause)),
        ("/vms/{name}/resume", Method::POST, post(resume)),
        ("/vms/{name}/events", Method::GET, get(vm_events)),
        ("/vms/{name}/console", Method::GET, get(console)),
        ("/images", Method::GET, get(images_list)),
        ("/images", Method::POST, post(image_import)),
        ("/images/{name}", Method::GET, get(image_inspect)),
        ("/images/{name}", Method::DELETE, delete(image_remove)),
    ];
    table.extend(crate::network_api::routes());
    table
}

/// (method, path) of every route, for the OpenAPI check.
pub fn served_routes() -> Vec<(Method, &'static str)> {
    table()
        .into_iter()
        .map(|(path, method, _)| (method, path))
        .collect()
}

/// The API router; with a token, every request must carry `Authorization: Bearer <token>`.
pub fn router(host: Host, token: Option<String>) -> Router {
    let mut router = Router::new();
    for (path, _, handler) in table() {
        router = router.route(path, handler);
    }
    let router = router
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such route".into()) })
        .with_state(host);
    match token {
        Some(token) => router.layer(middleware::from_fn_with_state(token, require_token)),
        None => router,
    }
}

async fn require_token(State(token): State<String>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant time: the comparison must not tell how much of a guess was right.
    if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
        next.run(request).await
    } else {
        error_response(
            StatusCode::UNAUTHORIZED,
            "a valid `Authorization: Bearer <token>` header is required".into(),
        )
    }
}
