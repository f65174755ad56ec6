//! A simulated device: its coordinator and durable store, the task that drives the
//! coordinator over HTTP on simulated TCP, and the device's own network faults.
//!
//! Per-device faults (offline, partition, hold, loss, duplication, corruption, clock skew,
//! crash, disk) live here rather than in turmoil's topology so that they apply to one device
//! even when several devices share a turmoil host (`sim.devices_per_host`). turmoil provides
//! the simulated TCP, latency and reordering, time, and the server host's crashes.

use crate::trace::{NetFault, RequestKind, Trace, TraceEvent};
use hyper::Method;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rockhound_engine::client::{Coordinator, Request};
use rockhound_engine::ids::{EntityId, OpId};
use rockhound_engine::planted::Planted;
use rockhound_engine::server::wire::{BatchResponse, ChangesPage, ConflictsPage};
use rockhound_engine::testing::sim_store::SimStore;
use rockhound_engine::{Batch, EntityType, Millis, OpKind};
use rockhound_io::http::client::{self, Response};
use serde_json::Value;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::Notify;

/// The server's address on the simulated network.
pub const SERVER_ADDR: &str = "server:80";
/// How often a held request looks again whether it was released, in ms.
pub const HOLD_POLL_MS: u64 = 100;

/// Simulated time now, as the device's monotonic clock.
pub fn sim_now(epoch_ms: u64) -> Millis {
    let elapsed = turmoil::sim_elapsed().unwrap_or_default();
    Millis(epoch_ms + u64::try_from(elapsed.as_millis()).expect("runs are short"))
}

/// A device's network conditions.
#[derive(Clone, Debug, Default)]
pub struct Link {
    /// The device knows it is offline.
    pub offline: bool,
    /// Traffic is silently dropped.
    pub partitioned: bool,
    /// Traffic waits until released.
    pub held: bool,
    /// Chance a request or its answer is lost.
    pub loss_rate: f64,
    /// Chance a request is delivered twice.
    pub duplicate_rate: f64,
    /// Chance a batch is corrupted.
    pub corrupt_rate: f64,
    /// Corrupt the next batch.
    pub corrupt_next: bool,
    /// Deliver the next request twice.
    pub duplicate_next: bool,
    /// Cut the next answer short (the connection broke while it arrived).
    pub cut_answer_next: bool,
    /// One bit of the next answer is flipped.
    pub damage_answer_next: bool,
}

/// Everything the step loop and the device task share about one device.
#[derive(Debug)]
pub struct DeviceState {
    /// The device's name (its id).
    pub name: String,
    /// Its user.
    pub user: String,
    /// Its bearer token.
    pub token: String,
    /// The running coordinator; `None` while the device is down.
    pub coordinator: Option<Coordinator<SimStore>>,
    /// The store while the device is down.
    pub parked_store: Option<SimStore>,
    /// Starts so far.
    pub incarnation: u64,
    /// Network conditions.
    pub link: Link,
    /// Wall-clock offset from true (simulated) time, ms.
    pub wall_offset_ms: i64,
    /// The last batch body sent, for replays.
    pub last_batch: Option<Vec<u8>>,
    /// Transport fault draws.
    pub rng: ChaCha8Rng,
    /// Wakes the task when the step loop changed something.
    pub notify: Rc<Notify>,
    /// Replays of the last batch the task should send.
    pub pending_replays: usize,
    /// Forged and hostile requests the task should send: each list in order, the lists
    /// side by side.
    pub pending_hostile: Vec<Vec<RawRequest>>,
    /// Hostile probes sent so far (names their ids apart).
    pub hostile_count: u64,
    /// Seeds the coordinator's jitter (mixed with the incarnation on restarts).
    pub jitter_seed: u64,
    /// Bugs planted in this run.
    pub planted: Planted,
    /// Each enqueued op's depth in its chain of dependencies (an op with none is 1).
    pub chain_depth: std::collections::BTreeMap<rockhound_engine::OpId, u32>,
}

impl DeviceState {
    /// The device's wall clock at simulated `now`.
    pub fn wall(&self, now: Millis) -> Millis {
        Millis(now.0.saturating_add_signed(self.wall_offset_ms))
    }
}

/// The shared handles a device task needs.
#[derive(Clone)]
pub struct DeviceCtx {
    /// The device.
    pub state: Rc<RefCell<DeviceState>>,
    /// The run's trace.
    pub trace: Rc<RefCell<Trace>>,
    /// Simulated wall-clock time at t = 0.
    pub epoch_ms: u64,
}

impl DeviceCtx {
    /// Appends an event to the trace, as this device at simulated `now`.
    pub(crate) fn record(&self, now: Millis, event: TraceEvent) {
        let host = self.state.borrow().name.clone();
        self.trace
            .borrow_mut()
            .record(now.0 - self.epoch_ms, &host, event);
    }

    /// Moves the coordinator's events to the trace.
    pub fn flush(&self, now: Millis) {
        let events = {
            let mut state = self.state.borrow_mut();
            // The planted stranding bug breaks the invariants on purpose.
            let paranoid =
                crate::paranoid::enabled() && !state.planted.client.strands_in_flight_offline;
            match state.coordinator.as_mut() {
                Some(coordinator) => {
                    if paranoid {
                        coordinator.check_invariants(now);
                    }
                    coordinator.take_events()
                }
                None => return,
            }
        };
        let host = self.state.borrow().name.clone();
        let mut trace = self.trace.borrow_mut();
        for event in events {
            trace.record(now.0 - self.epoch_ms, &host, TraceEvent::Client { event });
        }
    }
}

/// What came back for a request.
enum Outcome {
    Answer(Response),
    Failed(String),
}

/// The device's main loop: poll the coordinator, send what it asks for, feed back the
/// answer, sleep until its next timer or until the step loop changes something.
pub async fn run(ctx: DeviceCtx) {
    loop {
        let now = sim_now(ctx.epoch_ms);
        let (replays, hostile) = {
            let mut state = ctx.state.borrow_mut();
            (
                std::mem::take(&mut state.pending_replays),
                std::mem::take(&mut state.pending_hostile),
            )
        };
        for _ in 0..replays {
            tokio::task::spawn_local(replay(ctx.clone()));
        }
        for requests in hostile {
            tokio::task::spawn_local(send_raw(ctx.clone(), requests));
        }
        let polled = {
            let mut state = ctx.state.borrow_mut();
            let incarnation = state.incarnation;
            state.coordinator.as_mut().map(|c| {
                let request = c.poll(now);
                (
                    request,
                    incarnation,
                    c.next_wake_at(),
                    c.config().batch_timeout_ms,
                )
            })
        };
        ctx.flush(now);
        let notify = ctx.state.borrow().notify.clone();
        match polled {
            Some((Some(request), incarnation, _, timeout_ms)) => {
                let deadline = now.plus_ms(timeout_ms);
                let outcome = send(&ctx, &request, deadline).await;
                deliver(&ctx, incarnation, &request, outcome);
            }
            Some((None, _, wake, _)) => {
                let wait_ms = wake.map_or(60_000, |at| at.since_ms(now).max(1));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
                    () = notify.notified() => {}
                }
            }
            None => notify.notified().await,
        }
    }
}

fn deliver(ctx: &DeviceCtx, incarnation: u64, request: &Request, outcome: Outcome) {
    let now = sim_now(ctx.epoch_ms);
    let mut events = Vec::new();
    {
        let mut state = ctx.state.borrow_mut();
        if state.incarnation != incarnation {
            // The process that sent it died; the answer goes nowhere.
            return;
        }
        let Some(coordinator) = state.coordinator.as_mut() else {
            return;
        };
        let kind = request_kind(request);
        match outcome {
            Outcome::Failed(reason) => coordinator.on_request_failed(now, &reason),
            Outcome::Answer(response) if response.status == 200 => {
                take_answer(coordinator, request, &response, now, &mut events);
            }
            Outcome::Answer(response) => {
                let code = error_code(&response);
                events.push(TraceEvent::HttpError {
                    request: kind,
                    status: response.status,
                    code: code.clone(),
                    retry_after_ms: response.retry_after_ms,
                });
                let overloaded = matches!(response.status, 429 | 503);
                match (request, response.retry_after_ms) {
                    (_, Some(wait_ms)) if overloaded => coordinator.on_overloaded(now, wait_ms),
                    (Request::Resolve { .. }, _) => coordinator.on_resolve_response(now, Err(code)),
                    _ => coordinator
                        .on_request_failed(now, &format!("http {} {code}", response.status)),
                }
            }
        }
    }
    for event in events {
        ctx.record(now, event);
    }
    ctx.flush(now);
}

/// Hands a 200 answer to the coordinator. A damaged answer goes to it too (it refuses it);
/// the trace records only answers the device took.
fn take_answer(
    coordinator: &mut Coordinator<SimStore>,
    request: &Request,
    response: &Response,
    now: Millis,
    events: &mut Vec<TraceEvent>,
) {
    match request {
        Request::Batch(_) => {
            match serde_json::from_slice::<BatchResponse>(&response.body) {
                // The trace records only answers the device took (a damaged one it refuses).
                Ok(answer) => {
                    if !coordinator.on_batch_response(now, &answer) {
                        return;
                    }
                    events.push(TraceEvent::Answered {
                        batch_id: Some(answer.batch_id.clone()),
                        sent: Vec::new(),
                        results: answer
                            .results
                            .iter()
                            .map(|r| (r.op_id.clone(), r.status, r.reason))
                            .collect(),
                    });
                }
                Err(e) => coordinator.on_request_failed(now, &format!("bad answer: {e}")),
            }
        }
        Request::Pull { .. } => match serde_json::from_slice::<ChangesPage>(&response.body) {
            Ok(page) => {
                if !coordinator.on_pull_response(now, &page) {
                    return;
                }
                events.push(TraceEvent::Pulled {
                    keys: page
                        .changes
                        .iter()
                        .map(|c| (c.entity_type, c.entity_id.clone()))
                        .collect(),
                });
            }
            Err(e) => coordinator.on_request_failed(now, &format!("bad answer: {e}")),
        },
        Request::Resolve { .. } => coordinator.on_resolve_response(now, Ok(())),
        Request::Conflicts { .. } => {
            match serde_json::from_slice::<ConflictsPage>(&response.body) {
                Ok(page) => coordinator.on_conflicts_response(now, &page),
                Err(e) => coordinator.on_request_failed(now, &format!("bad answer: {e}")),
            }
        }
    }
}

fn error_code(response: &Response) -> String {
    response
        .json()
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn request_kind(request: &Request) -> RequestKind {
    match request {
        Request::Batch(_) => RequestKind::Batch,
        Request::Pull { .. } => RequestKind::Pull,
        Request::Resolve { .. } => RequestKind::Resolve,
        Request::Conflicts { .. } => RequestKind::Conflicts,
    }
}

/// Method, path and body of a coordinator request.
fn http_parts(state: &DeviceState, request: &Request) -> (Method, String, Option<Vec<u8>>) {
    match request {
        Request::Batch(batch) => (
            Method::POST,
            "/api/sync/batch".to_owned(),
            Some(serde_json::to_vec(batch).expect("batches serialize")),
        ),
        Request::Pull { cursor, limit } => (
            Method::GET,
            format!(
                "/api/sync/changes?since={cursor}&limit={limit}&device_id={}",
                state.name
            ),
            None,
        ),
        Request::Resolve {
            conflict_id,
            request,
        } => (
            Method::POST,
            format!("/api/sync/conflicts/{conflict_id}/resolve"),
            Some(serde_json::to_vec(request).expect("resolutions serialize")),
        ),
        Request::Conflicts { cursor, limit } => (
            Method::GET,
            format!("/api/sync/conflicts?status=open&since={cursor}&limit={limit}"),
            None,
        ),
    }
}

/// Corrupts a batch body in a way that still parses: one payload string changes. A correct
/// server notices (the batch and op checksums no longer match).
pub fn corrupt(body: &[u8]) -> Vec<u8> {
    let Ok(mut batch) = serde_json::from_slice::<Batch>(body) else {
        return body.to_vec();
    };
    for op in &mut batch.ops {
        if let Some(fields) = op.payload.as_object_mut() {
            fields.insert("corrupted".to_owned(), Value::Bool(true));
            break;
        }
    }
    serde_json::to_vec(&batch).expect("batches serialize")
}

/// Sends one request through the device's link, with its faults and a deadline.
// Long on purpose: one request's path through the simulated link in order (hold, partition or
// loss, duplicate, corruption, answer loss); the order of its draws is part of every seed's
// meaning.
async fn send(ctx: &DeviceCtx, request: &Request, deadline: Millis) -> Outcome {
    let kind = request_kind(request);
    let (method, path, mut body, token, lost, answer_lost, duplicate) = {
        let mut state = ctx.state.borrow_mut();
        let (method, path, body) = http_parts(&state, request);
        let link = state.link.clone();
        let lose = link.loss_rate > 0.0 && state.rng.random_bool(link.loss_rate);
        let lose_answer = lose && state.rng.random_bool(0.5);
        let duplicate = link.duplicate_next
            || (link.duplicate_rate > 0.0 && state.rng.random_bool(link.duplicate_rate));
        let corrupt_now = kind == RequestKind::Batch
            && (link.corrupt_next
                || (link.corrupt_rate > 0.0 && state.rng.random_bool(link.corrupt_rate)));
        state.link.duplicate_next = false;
        let body = match body {
            Some(body) if corrupt_now => {
                state.link.corrupt_next = false;
                Some(corrupt(&body))
            }
            other => other,
        };
        if kind == RequestKind::Batch && !corrupt_now {
            state.last_batch = body.clone();
        }
        let token = state.token.clone();
        let corrupted = corrupt_now;
        drop(state);
        if corrupted {
            ctx.record(
                sim_now(ctx.epoch_ms),
                TraceEvent::Net {
                    what: NetFault::Corrupted,
                    request: kind,
                },
            );
        }
        (
            method,
            path,
            body,
            token,
            lose && !lose_answer,
            lose_answer,
            duplicate,
        )
    };
    let now = sim_now(ctx.epoch_ms);
    // A hold delays the request until release (or the deadline).
    while ctx.state.borrow().link.held {
        if sim_now(ctx.epoch_ms) >= deadline {
            return Outcome::Failed("timeout".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(HOLD_POLL_MS)).await;
    }
    if ctx.state.borrow().link.partitioned || lost {
        let what = if lost {
            NetFault::RequestLost
        } else {
            NetFault::Partitioned
        };
        ctx.record(
            now,
            TraceEvent::Net {
                what,
                request: kind,
            },
        );
        sleep_until(ctx, deadline).await;
        return Outcome::Failed("timeout".to_owned());
    }
    if duplicate {
        ctx.record(
            now,
            TraceEvent::Net {
                what: NetFault::Duplicated,
                request: kind,
            },
        );
        let copy = (method.clone(), path.clone(), body.clone(), token.clone());
        let epoch_ms = ctx.epoch_ms;
        tokio::task::spawn_local(async move {
            let timeout = Duration::from_millis(deadline.since_ms(sim_now(epoch_ms)).max(1));
            let _ = tokio::time::timeout(timeout, exchange(copy.0, &copy.1, &copy.3, copy.2)).await;
        });
    }
    let timeout = Duration::from_millis(deadline.since_ms(now).max(1));
    let result = tokio::time::timeout(timeout, exchange(method, &path, &token, body.take())).await;
    let outcome = match result {
        Err(_) => Outcome::Failed("timeout".to_owned()),
        Ok(Err(error)) => Outcome::Failed(error),
        Ok(Ok(response)) => Outcome::Answer(response),
    };
    let partitioned_since = ctx.state.borrow().link.partitioned;
    let outcome = match outcome {
        Outcome::Answer(mut response) if ctx.state.borrow().link.cut_answer_next => {
            ctx.state.borrow_mut().link.cut_answer_next = false;
            // Half the body arrived: whatever it says, it is not a whole answer.
            response.body.truncate(response.body.len() / 2);
            ctx.record(
                sim_now(ctx.epoch_ms),
                TraceEvent::Net {
                    what: NetFault::AnswerCut,
                    request: kind,
                },
            );
            Outcome::Answer(response)
        }
        Outcome::Answer(mut response)
            if ctx.state.borrow().link.damage_answer_next && !response.body.is_empty() =>
        {
            let bit = {
                let mut state = ctx.state.borrow_mut();
                state.link.damage_answer_next = false;
                state.rng.random_range(0..response.body.len() * 8)
            };
            response.body[bit / 8] ^= 1 << (bit % 8);
            ctx.record(
                sim_now(ctx.epoch_ms),
                TraceEvent::Net {
                    what: NetFault::AnswerDamaged,
                    request: kind,
                },
            );
            Outcome::Answer(response)
        }
        other => other,
    };
    if matches!(outcome, Outcome::Answer(_)) && (answer_lost || partitioned_since) {
        ctx.record(
            sim_now(ctx.epoch_ms),
            TraceEvent::Net {
                what: NetFault::AnswerLost,
                request: kind,
            },
        );
        sleep_until(ctx, deadline).await;
        return Outcome::Failed("timeout".to_owned());
    }
    outcome
}

async fn sleep_until(ctx: &DeviceCtx, deadline: Millis) {
    let wait = deadline.since_ms(sim_now(ctx.epoch_ms));
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// One HTTP exchange with the server over simulated TCP.
pub async fn exchange(
    method: Method,
    path: &str,
    token: &str,
    body: Option<Vec<u8>>,
) -> Result<Response, String> {
    let stream = turmoil::net::TcpStream::connect(SERVER_ADDR)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    client::request(stream, method, path, Some(token), body)
        .await
        .map_err(|e| e.to_string())
}

/// Sends the device's last batch again, verbatim (a replay by a confused proxy or an
/// attacker). The answer is recorded, not fed to the coordinator.
pub async fn replay(ctx: DeviceCtx) {
    let (body, token) = {
        let state = ctx.state.borrow();
        (state.last_batch.clone(), state.token.clone())
    };
    let Some(body) = body else {
        return;
    };
    let now = sim_now(ctx.epoch_ms);
    ctx.record(
        now,
        TraceEvent::Net {
            what: NetFault::Replayed,
            request: RequestKind::Batch,
        },
    );
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        exchange(Method::POST, "/api/sync/batch", &token, Some(body.clone())),
    )
    .await;
    if let Ok(Ok(response)) = result {
        record_answer(&ctx, RequestKind::Batch, &body, &response);
    }
}

/// Records the answer to a request sent beside the coordinator: a batch answer as
/// `answered` (with the op ids `body` carried), an error status as `http_error` (other
/// successes carry nothing to check).
fn record_answer(ctx: &DeviceCtx, request: RequestKind, body: &[u8], response: &Response) {
    let now = sim_now(ctx.epoch_ms);
    if response.status != 200 {
        let code = error_code(response);
        let status = response.status;
        ctx.record(
            now,
            TraceEvent::HttpError {
                request,
                status,
                code,
                // Only the coordinator's own requests wait out a `Retry-After`.
                retry_after_ms: None,
            },
        );
    } else if let Ok(answer) = serde_json::from_slice::<BatchResponse>(&response.body) {
        let results = answer
            .results
            .iter()
            .map(|r| (r.op_id.clone(), r.status, r.reason))
            .collect();
        ctx.record(
            now,
            TraceEvent::Answered {
                batch_id: None,
                results,
                sent: op_ids_in(body),
            },
        );
    }
}

/// The op ids of a batch body, as far as it reads as one (a damaged body gives fewer).
fn op_ids_in(body: &[u8]) -> Vec<OpId> {
    let Ok(batch) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    batch
        .get("ops")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|op| op.get("op_id")?.as_str())
        .map(|id| OpId(id.to_owned()))
        .collect()
}

/// A request a hostile or forging client builds by hand, sent beside the coordinator's
/// traffic with the device's own token.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// `forge` or `hostile`, for the trace.
    pub kind: RequestKind,
    /// The method.
    pub method: Method,
    /// The path.
    pub path: String,
    /// The body, if any.
    pub body: Option<Vec<u8>>,
}

/// What a hand-built request would write if the server took it: a batch's creates and
/// updates, or a custom resolution's entity (named through the device's own conflict).
fn raw_writes(ctx: &DeviceCtx, request: &RawRequest) -> Vec<(EntityType, EntityId, Value)> {
    let Some(body) = &request.body else {
        return Vec::new();
    };
    if let Ok(batch) = serde_json::from_slice::<Batch>(body) {
        return batch
            .ops
            .into_iter()
            .filter(|op| op.kind != OpKind::Delete)
            .map(|op| (op.entity_type, op.entity_id, op.payload))
            .collect();
    }
    let conflict = request
        .path
        .strip_prefix("/api/sync/conflicts/")
        .and_then(|rest| rest.strip_suffix("/resolve"));
    let entity = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|body| body.get("entity").cloned());
    let (Some(conflict), Some(entity)) = (conflict, entity) else {
        return Vec::new();
    };
    let state = ctx.state.borrow();
    state
        .coordinator
        .as_ref()
        .and_then(|c| c.conflicts().find(|k| k.conflict_id.0 == conflict))
        .map(|k| vec![(k.entity_type, k.entity_id.clone(), entity)])
        .unwrap_or_default()
}

/// Sends hand-built requests one after the other (each waits for the answer before it,
/// so a probe's later requests meet what its earlier ones did) and records every answer:
/// a batch answer as `answered`, anything else but success as `http_error`, no answer as a
/// lost request.
pub async fn send_raw(ctx: DeviceCtx, requests: Vec<RawRequest>) {
    for request in requests {
        let writes = raw_writes(&ctx, &request);
        if !writes.is_empty() {
            ctx.record(sim_now(ctx.epoch_ms), TraceEvent::Wrote { writes });
        }
        let token = ctx.state.borrow().token.clone();
        let body = request.body.clone().unwrap_or_default();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            exchange(request.method.clone(), &request.path, &token, request.body),
        )
        .await;
        match result {
            Ok(Ok(response)) => record_answer(&ctx, request.kind, &body, &response),
            _ => ctx.record(
                sim_now(ctx.epoch_ms),
                TraceEvent::Net {
                    what: NetFault::RequestLost,
                    request: request.kind,
                },
            ),
        }
    }
}
