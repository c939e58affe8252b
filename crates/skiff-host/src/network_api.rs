//! The REST routes of managed networks (`/networks`), thin handlers over
//! [`crate::networks::Networks`]; `api.rs` adds them to its table.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, MethodRouter};
use axum::Json;

use crate::error::HostError;
use crate::service::Host;

async fn list(State(host): State<Host>) -> impl IntoResponse {
    Json(host.networks().list())
}

async fn create(State(host): State<Host>, body: Bytes) -> Result<impl IntoResponse, HostError> {
    Ok((
        StatusCode::CREATED,
        Json(host.networks().create(&body).await?),
    ))
}

async fn inspect(
    State(host): State<Host>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, HostError> {
    Ok(Json(host.networks().inspect(&name)?))
}

async fn remove(
    State(host): State<Host>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, HostError> {
    host.networks().remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The routes: (path, method, handler).
pub fn routes() -> Vec<(&'static str, Method, MethodRouter<Host>)> {
    vec![
        ("/networks", Method::GET, get(list)),
        ("/networks", Method::POST, post(create)),
        ("/networks/{name}", Method::GET, get(inspect)),
        ("/networks/{name}", Method::DELETE, delete(remove)),
    ]
}
