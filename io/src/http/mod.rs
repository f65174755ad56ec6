//! The HTTP API (docs/api.md) as an axum router over the sans-IO [`Server`].
//!
//! The router holds no I/O of its own: [`serve`] runs it on any [`axum::serve::Listener`],
//! so the same handlers answer on a real socket and on simulated TCP. Time comes from the
//! [`Clock`] the caller supplies. Every error is `{ "error": code, "message": sentence }`
//! with the status docs/api.md gives, and a refused request changes nothing.

pub mod client;
pub mod serve;

use axum::body::{Body, to_bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rockhound_engine::ids::{ConflictId, check_id};
use rockhound_engine::server::wire::{ConflictStatus, ErrorCode, OpResult, ResolveRequest};
use rockhound_engine::server::{AnyStore, Flushing, RequestError, Server};
use rockhound_engine::{Batch, DeviceId, Millis, Op, UserId};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

/// The largest request body accepted, in bytes (HTTP 413 beyond).
pub const REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// The longest request target (path and query) accepted, in bytes (HTTP 414 beyond).
pub const URI_BYTES_MAX: usize = 8 * 1024;
/// The most header bytes (names and values) a request may carry (HTTP 431 beyond).
pub const HEADER_BYTES_MAX: usize = 32 * 1024;
/// The most header fields a request may carry (HTTP 431 beyond).
pub const HEADER_COUNT_MAX: usize = 64;
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
    /// The sans-IO server. Handlers hold the lock only while it computes one step (a
    /// batch's admission, one op, the batch's record, one read), never across I/O, and
    /// hand it on fairly, so no request waits behind a whole batch of another user.
    pub server: Arc<parking_lot::Mutex<Server<AnyStore>>>,
    /// Bearer tokens and the users they authenticate.
    pub tokens: Arc<BTreeMap<String, UserId>>,
    /// The server's clock.
    pub clock: Clock,
    /// How long a request body may take to arrive; `None` waits as long as the
    /// connection lives (the simulation, whose network faults are the point).
    pub body_read_timeout: Option<Duration>,
    /// Whether a batch's handler yields to the runtime after each op (`rockhound serve`).
    /// The simulated server does not: a yield would spread one batch over several
    /// simulated ticks, a slowness no real server has.
    pub yield_between_ops: bool,
    /// A fault-injection point for the simulation: called after each op of a batch is
    /// committed with (ops committed, ops in the batch); when it says `true`, the handler
    /// never answers, as a process killed at that instant would not, and the simulation
    /// kills the host. `None` (`rockhound serve`): never.
    pub crash_point: Option<CrashPoint>,
    /// Load shedding: while it gives a wait in ms, every request is answered 503 `busy`
    /// with `Retry-After` (whole seconds, rounded up) and changes nothing. The simulation's
    /// `overload` step sets it; `None` (`rockhound serve`, which sheds connections over
    /// its cap instead): never.
    pub shed: Option<Shed>,
    /// Told each op's decision as it is committed, with the user, the op and its result
    /// (the simulation traces decisions when they happen); `None` (`rockhound serve`):
    /// nobody.
    pub decided: Option<Decided>,
}

/// See [`AppState::decided`].
pub type Decided = Arc<dyn Fn(&UserId, &Op, &OpResult) + Send + Sync>;

/// See [`AppState::crash_point`].
pub type CrashPoint = Arc<dyn Fn(usize, usize) -> bool + Send + Sync>;

/// See [`AppState::shed`].
pub type Shed = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

impl AppState {
    /// State over `server`, with `tokens` mapping bearer tokens to users.
    pub fn new(
        server: Server<AnyStore>,
        tokens: BTreeMap<String, UserId>,
        clock: Clock,
    ) -> AppState {
        AppState {
            server: Arc::new(parking_lot::Mutex::new(server)),
            tokens: Arc::new(tokens),
            clock,
            body_read_timeout: None,
            yield_between_ops: false,
            crash_point: None,
            shed: None,
            decided: None,
        }
    }

    /// Runs one step of the server under its lock.
    ///
    /// A panic inside the engine is a bug, but it must not take the server down for every
    /// user: it is caught here and answered 500. The engine makes every change through one
    /// commit whose assertions all run before its first write, so the interrupted step
    /// changed nothing; the lock is not poisoned and the next request is served.
    ///
    /// The step's commits, and every other commit before the step ended, are made durable
    /// before it returns, so no answer reports or shows a write that could still be lost.
    /// The flush begins under the lock and is waited for after the lock is handed on: a
    /// store with a commit pipeline (PostgreSQL) decides other requests meanwhile.
    async fn with_server<T>(
        &self,
        step: impl FnOnce(&mut Server<AnyStore>) -> Result<T, RequestError>,
    ) -> Result<T, ApiError> {
        let (value, flushing) = self.with_server_unflushed(|server| {
            let value = step(server)?;
            Ok((value, server.begin_flush()?))
        })?;
        durable(flushing).await?;
        Ok(value)
    }

    /// [`AppState::with_server`] without the flush: for a batch's ops, whose commits the
    /// batch's last step flushes together (a group commit: one durable write per batch).
    fn with_server_unflushed<T>(
        &self,
        step: impl FnOnce(&mut Server<AnyStore>) -> Result<T, RequestError>,
    ) -> Result<T, ApiError> {
        let mut server = self.server.lock();
        let outcome = catch_unwind(AssertUnwindSafe(|| step(&mut server)));
        // A fair unlock hands the lock to the longest waiter, so a batch that takes the
        // lock once per op cannot starve the other users' requests.
        parking_lot::MutexGuard::unlock_fair(server);
        match outcome {
            Ok(result) => result.map_err(ApiError::from),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, "request hit an engine bug; answered 500");
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "the server hit an internal error; the step it was taking was not applied",
                ))
            }
        }
    }
}

/// Waits for a flush begun under the server's lock; a failed one is answered 503.
async fn durable(flushing: Flushing) -> Result<(), ApiError> {
    flushing
        .wait()
        .await
        .map_err(|error| ApiError::from(RequestError::from(error)))
}

/// An error answer: status, stable code, sentence.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::Malformed, message)
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
            RequestError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidValue,
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

/// The router of the HTTP API (docs/api.md).
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
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such endpoint",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this endpoint does not answer that method",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), shed_load))
        .layer(middleware::from_fn(check_head))
        .with_state(state)
}

/// Answers 503 `busy` with `Retry-After` while the server sheds load ([`AppState::shed`]).
async fn shed_load(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(wait_ms) = state.shed.as_ref().and_then(|shed| shed()) else {
        return next.run(request).await;
    };
    let seconds = wait_ms.div_ceil(1000).max(1);
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Busy,
        format!("the server is overloaded; try again in {seconds} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    response
}

/// Refuses a request whose target or headers are over their limits, with the error body
/// every refusal carries (hyper's own limits, far above these, answer bare).
async fn check_head(request: Request, next: Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > URI_BYTES_MAX {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            ErrorCode::UriTooLong,
            format!("request target is {target} bytes, more than the limit of {URI_BYTES_MAX}"),
        )
        .into_response();
    }
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > HEADER_COUNT_MAX || bytes > HEADER_BYTES_MAX {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::HeadersTooLarge,
            format!(
                "request carries {} headers of {bytes} bytes; the limits are \
                 {HEADER_COUNT_MAX} headers and {HEADER_BYTES_MAX} bytes",
                headers.len()
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// Serves `router` on `listener` until `shutdown` completes (the simulation's server
/// uses [`crate::net::serve`]; `rockhound serve` uses [`serve::serve_tcp`]).
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
        |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <token> header"))?;
    // RFC 7235: the scheme is case-insensitive and followed by one or more spaces.
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim_start_matches(' '))
        .ok_or_else(|| unauthorized("Authorization header must be Bearer <token>"))?;
    state
        .tokens
        .get(token)
        .cloned()
        .ok_or_else(|| unauthorized("unknown token"))
}

async fn read_body(state: &AppState, body: Body) -> Result<Vec<u8>, ApiError> {
    let read = to_bytes(body, REQUEST_BYTES_MAX);
    let bytes = match state.body_read_timeout {
        Some(timeout) => tokio::time::timeout(timeout, read).await.map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::Timeout,
                format!(
                    "request body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            )
        })?,
        None => read.await,
    };
    bytes.map(|b| b.to_vec()).map_err(|error| {
        if is_length_limit(&error) {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                format!("request body is larger than the limit of {REQUEST_BYTES_MAX} bytes"),
            )
        } else {
            ApiError::malformed(format!("request body could not be read: {error}"))
        }
    })
}

/// Whether a body error is the length limit (and not, say, broken chunked encoding).
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// A path id: refused with `invalid_value` (and not echoed back) unless it follows the id
/// rule.
fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::malformed("the path is not valid UTF-8"))?;
    check_id("conflict id", &id).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidValue,
            "conflict id must be 1 to 128 characters of letters, digits and -_.:",
        )
    })?;
    Ok(id)
}

async fn post_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<rockhound_engine::server::wire::BatchResponse> {
    let user = authenticate(&state, &headers)?;
    let bytes = read_body(&state, body).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::malformed("request body is not UTF-8"))?;
    let batch = Batch::from_json(text).map_err(|e| ApiError::malformed(e.to_string()))?;
    let now = (state.clock)();
    // One lock per step: each op is committed on its own anyway, and between two ops
    // another user's request gets its turn.
    let (verify, epoch) = state
        .with_server_unflushed(|server| Ok((server.verifies_checksums(), server.store_epoch())))?;
    rockhound_engine::server::check_batch(&batch, verify)?;
    let mut results = Vec::with_capacity(batch.ops.len());
    for op in &batch.ops {
        // Each op is decided at its own time: its history row keeps how long it waited.
        let op_now = (state.clock)().max(now);
        let result = state
            .with_server_unflushed(|server| Ok(server.handle_op(&user, &batch, op, now, op_now)))?;
        if let Some(decided) = &state.decided {
            decided(&user, op, &result);
        }
        results.push(result);
        if let Some(crash) = &state.crash_point
            && crash(results.len(), batch.ops.len())
        {
            // Killed between this op's commit and the next (or the answer): nothing more
            // happens here, and nothing is answered.
            std::future::pending::<()>().await;
        }
        // Let the other requests on this worker thread run between two ops, so that a
        // long batch cannot hold a thread (or, with one thread, the whole server).
        if state.yield_between_ops {
            tokio::task::yield_now().await;
        }
    }
    // The batch's record, then one flush for all its ops (and any other request's commits
    // made meanwhile); if a flush failed since the batch began, none of it is answered.
    let (response, flushing) = state.with_server_unflushed(|server| {
        let answered_at = (state.clock)().max(now);
        let response = server.finish_batch(&user, &batch, results, now, answered_at)?;
        Ok((response, server.begin_flush_for(epoch)?))
    })?;
    durable(flushing).await?;
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
        .with_server(|server| {
            server.changes(&user, query.device_id.as_ref(), query.since, limit, now)
        })
        .await?;
    Ok(Json(page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConflictsQuery {
    status: Option<ConflictStatus>,
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
}

async fn get_conflicts(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ConflictsQuery>, QueryRejection>,
) -> ApiResult<rockhound_engine::server::wire::ConflictsPage> {
    let user = authenticate(&state, &headers)?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(PULL_LIMIT_DEFAULT);
    let page = state
        .with_server(|server| server.conflicts_page(&user, query.status, query.since, limit))
        .await?;
    Ok(Json(page))
}

async fn post_resolve(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<rockhound_engine::server::wire::ConflictRecord> {
    let user = authenticate(&state, &headers)?;
    let id = path_id(path)?;
    let bytes = read_body(&state, body).await?;
    let request: ResolveRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::malformed(format!("malformed resolve request: {e}")))?;
    let now = (state.clock)();
    let record = state
        .with_server(|server| server.resolve_conflict(&user, &ConflictId(id), &request, now))
        .await?;
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
    let response = state
        .with_server(|server| server.state(&user, &query.device_id))
        .await?;
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
    let limit = query.limit.unwrap_or(HISTORY_LIMIT_DEFAULT);
    let rows = state
        .with_server(|server| server.history(&user, limit))
        .await?;
    Ok(Json(serde_json::json!({ "history": rows })))
}

/// `/metrics` takes no parameters, and says so like the other endpoints do.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsQuery {}

async fn get_metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<MetricsQuery>, QueryRejection>,
) -> ApiResult<serde_json::Value> {
    let user = authenticate(&state, &headers)?;
    let Query(MetricsQuery {}) = query?;
    let windows = state
        .with_server(|server| Ok(server.metrics(&user)))
        .await?;
    Ok(Json(serde_json::json!({ "windows": windows })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rockhound_engine::SyncConfig;

    fn state() -> AppState {
        AppState::new(
            Server::new(SyncConfig::default()).into_any(),
            BTreeMap::new(),
            Arc::new(|| Millis(1_760_000_000_000)),
        )
    }

    #[test]
    fn a_server_shedding_load_answers_503_busy_with_retry_after_and_changes_nothing() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut state = state();
        state.shed = Some(Arc::new(|| Some(2_400)));
        let before = state.server.lock().tables().clone();
        let answer = runtime.block_on(async {
            let (client_end, server_end) = tokio::io::duplex(64 * 1024);
            let service = hyper_util::service::TowerToHyperService::new(router(state.clone()));
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(server_end);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
            client::request(
                client_end,
                hyper::Method::POST,
                "/api/sync/batch",
                Some("token"),
                Some(b"{}".to_vec()),
            )
            .await
            .unwrap()
        });
        assert_eq!(answer.status, 503);
        assert_eq!(answer.json().unwrap()["error"], "busy");
        assert_eq!(answer.retry_after_ms, Some(3_000), "2.4 s rounds up to 3 s");
        assert_eq!(&before, state.server.lock().tables(), "nothing changed");
    }

    #[test]
    fn a_panic_inside_a_step_is_answered_500_and_the_next_request_is_served() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let state = state();
        let before = state.server.lock().tables().clone();
        let error = runtime
            .block_on(
                state.with_server(|_| -> Result<(), RequestError> { panic!("planted engine bug") }),
            )
            .unwrap_err();
        assert_eq!(
            (error.status, error.code),
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
        );
        let windows = runtime
            .block_on(state.with_server(|server| Ok(server.metrics(&UserId::from("ann")))))
            .unwrap();
        assert!(
            windows.is_empty(),
            "the lock was handed on and the server answers"
        );
        assert_eq!(&before, state.server.lock().tables(), "nothing changed");
    }
}
