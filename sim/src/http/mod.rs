//! The HTTP API of SPEC §3.5 as an axum router over the sans-IO [`Server`].
//!
//! The router holds no I/O of its own: [`serve`] runs it on any [`axum::serve::Listener`],
//! so the same handlers answer on a real socket and on simulated TCP. Time comes from the
//! [`Clock`] the caller supplies. Every error is `{ "error": code, "message": sentence }`
//! with the status of SPEC §3.5, and a refused request changes nothing.

pub mod client;

use axum::body::{Body, to_bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rockhound_engine::ids::ConflictId;
use rockhound_engine::server::wire::{ConflictStatus, ResolveRequest};
use rockhound_engine::server::{RequestError, Server};
use rockhound_engine::{Batch, DeviceId, Millis, UserId};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The largest request body accepted, in bytes (HTTP 413 beyond).
pub const REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Default page size of `GET /api/sync/changes`.
pub const PULL_LIMIT_DEFAULT: usize = 100;
/// Default row count of `GET /api/sync/history`.
pub const HISTORY_LIMIT_DEFAULT: usize = 50;

/// Where the router reads the server's time: the wall clock for `rockhound serve`,
/// simulated time in the harness.
pub type Clock = Arc<dyn Fn() -> Millis + Send + Sync>;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The sans-IO server; handlers hold the lock only while it computes, never across I/O.
    pub server: Arc<Mutex<Server>>,
    /// Bearer tokens and the users they authenticate.
    pub tokens: Arc<BTreeMap<String, UserId>>,
    /// The server's clock.
    pub clock: Clock,
}

impl AppState {
    /// State over `server`, with `tokens` mapping bearer tokens to users.
    pub fn new(server: Server, tokens: BTreeMap<String, UserId>, clock: Clock) -> AppState {
        AppState {
            server: Arc::new(Mutex::new(server)),
            tokens: Arc::new(tokens),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Server> {
        // A handler that panicked mid-request broke an engine invariant; serving on from
        // that state could apply garbage, so poisoning stays fatal.
        self.server
            .lock()
            .expect("server state poisoned by a panic")
    }
}

/// An error answer: status, stable code, sentence.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed", message)
    }
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> ApiError {
        let status = match error {
            RequestError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            RequestError::Forbidden { .. } => StatusCode::FORBIDDEN,
            RequestError::NotFound { .. } => StatusCode::NOT_FOUND,
            RequestError::AlreadyResolved { .. } => StatusCode::CONFLICT,
            RequestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::ChecksumMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_value",
            rejection.body_text(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The router of SPEC §3.5.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/sync/batch", post(post_batch))
        .route("/api/sync/changes", get(get_changes))
        .route("/api/sync/conflicts", get(get_conflicts))
        .route("/api/sync/conflicts/{id}/resolve", post(post_resolve))
        .route("/api/sync/state", get(get_state))
        .route("/api/sync/history", get(get_history))
        .route("/api/sync/metrics", get(get_metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve<L>(
    listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<UserId, ApiError> {
    let unauthorized =
        |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <token> header"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("Authorization header must be Bearer <token>"))?;
    state
        .tokens
        .get(token)
        .cloned()
        .ok_or_else(|| unauthorized("unknown token"))
}

async fn read_body(body: Body) -> Result<Vec<u8>, ApiError> {
    to_bytes(body, REQUEST_BYTES_MAX)
        .await
        .map(|b| b.to_vec())
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body is larger than the limit of {REQUEST_BYTES_MAX} bytes"),
            )
        })
}

async fn post_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<rockhound_engine::server::wire::BatchResponse> {
    let user = authenticate(&state, &headers)?;
    let bytes = read_body(body).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::malformed("request body is not UTF-8"))?;
    let batch = Batch::from_json(text).map_err(|e| ApiError::malformed(e.to_string()))?;
    let now = (state.clock)();
    let response = state.lock().handle_batch(&user, &batch, now)?;
    Ok(Json(response))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
    device_id: Option<DeviceId>,
}

async fn get_changes(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> ApiResult<rockhound_engine::server::wire::ChangesPage> {
    let user = authenticate(&state, &headers)?;
    let Query(query) = query?;
    let now = (state.clock)();
    let limit = query.limit.unwrap_or(PULL_LIMIT_DEFAULT);
    let page = state
        .lock()
        .changes(&user, query.device_id.as_ref(), query.since, limit, now)?;
    Ok(Json(page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConflictsQuery {
    status: Option<ConflictStatus>,
}

async fn get_conflicts(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ConflictsQuery>, QueryRejection>,
) -> ApiResult<serde_json::Value> {
    let user = authenticate(&state, &headers)?;
    let Query(query) = query?;
    let conflicts = state.lock().conflicts(&user, query.status);
    Ok(Json(serde_json::json!({ "conflicts": conflicts })))
}

async fn post_resolve(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<rockhound_engine::server::wire::ConflictRecord> {
    let user = authenticate(&state, &headers)?;
    let bytes = read_body(body).await?;
    let request: ResolveRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::malformed(format!("malformed resolve request: {e}")))?;
    let now = (state.clock)();
    let record = state
        .lock()
        .resolve_conflict(&user, &ConflictId(id), &request, now)?;
    Ok(Json(record))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateQuery {
    device_id: DeviceId,
}

async fn get_state(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<StateQuery>, QueryRejection>,
) -> ApiResult<rockhound_engine::server::wire::StateResponse> {
    let user = authenticate(&state, &headers)?;
    let Query(query) = query?;
    let response = state.lock().state(&user, &query.device_id)?;
    Ok(Json(response))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn get_history(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<serde_json::Value> {
    let user = authenticate(&state, &headers)?;
    let Query(query) = query?;
    let rows = state
        .lock()
        .history(&user, query.limit.unwrap_or(HISTORY_LIMIT_DEFAULT))?;
    Ok(Json(serde_json::json!({ "history": rows })))
}

async fn get_metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<serde_json::Value> {
    let user = authenticate(&state, &headers)?;
    let windows = state.lock().metrics(&user);
    Ok(Json(serde_json::json!({ "windows": windows })))
}
