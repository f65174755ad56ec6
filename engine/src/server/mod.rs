//! The server, sans-IO: batches, idempotency, conflicts, pulls, state, history, metrics and
//! cleanup over the tables of [`tables`]. The HTTP layer (in `rockhound-io`) authenticates
//! the caller and passes the user in; nothing here reads a clock or a socket.
//!
//! Each op of a batch is processed in order and committed on its own: a crash between two
//! ops leaves the first wholly applied and the second wholly absent.

mod admission;
mod batch;
mod cleanup;
mod decide;
mod reads;
pub mod replay;
mod resolve;
pub mod seal;
pub mod tables;
pub mod wire;

pub use admission::check_batch;
pub use decide::decision_code;

use crate::config::SyncConfig;
use crate::ids::{IdempotencyKey, UserId};
use crate::time::{DAY_MS, HOUR_MS};
pub use tables::{AnyStore, Flushing, StoreError};
use tables::{IdempotencyRecord, MemoryStore, ServerStore, Tables};
use wire::ErrorCode;

/// The most changes one pull page returns.
pub const PULL_LIMIT_MAX: usize = 1_000;
/// The most conflicts one page of `GET /api/sync/conflicts` looks at.
pub const CONFLICT_SCAN_MAX: usize = 10_000;
/// The most history rows one request returns.
pub const HISTORY_LIMIT_MAX: usize = 1_000;
/// The most entities the server holds before it answers `retry` with `storage_full`.
pub const ENTITY_COUNT_MAX: usize = 5_000_000;
/// The largest an entity may grow, as JSON bytes, after any write, merge or resolution
/// (an op's payload is limited apart, to `PAYLOAD_BYTES_MAX`); beyond it the write is
/// refused with `entity_too_large`.
pub const ENTITY_BYTES_MAX: usize = 256 * 1024;
/// The most history rows the server holds before it answers `retry` with `storage_full`.
pub const HISTORY_ROW_COUNT_MAX: usize = 20_000_000;
/// Length of one `sync_metrics` window.
pub const METRICS_WINDOW_MS: u64 = HOUR_MS;
/// How long history, resolved conflicts, batches and metrics are kept by `cleanup`.
pub const HISTORY_RETENTION_MS: u64 = 30 * DAY_MS;

/// A request the server refuses as a whole; nothing of it is applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Malformed or invalid request (HTTP 400).
    #[error("{message}")]
    BadRequest {
        /// Stable code: `malformed`, `invalid_value`, `entity_too_large`.
        code: ErrorCode,
        /// A sentence for a person.
        message: String,
    },
    /// Another user's device, entity or conflict (HTTP 403).
    #[error("{message}")]
    Forbidden {
        /// A sentence for a person.
        message: String,
    },
    /// No such conflict (HTTP 404).
    #[error("{message}")]
    NotFound {
        /// A sentence for a person.
        message: String,
    },
    /// The conflict is already resolved (HTTP 409).
    #[error("{message}")]
    AlreadyResolved {
        /// A sentence for a person.
        message: String,
    },
    /// Over the size or op-count limit (HTTP 413).
    #[error("{message}")]
    TooLarge {
        /// A sentence for a person.
        message: String,
    },
    /// The batch checksum does not match (HTTP 422).
    #[error("{message}")]
    ChecksumMismatch {
        /// A sentence for a person.
        message: String,
    },
    /// The store could not make the change durable; nothing of it was applied (HTTP 503).
    #[error("{message}")]
    Unavailable {
        /// A sentence for a person.
        message: String,
    },
}

impl From<tables::StoreError> for RequestError {
    fn from(error: tables::StoreError) -> RequestError {
        RequestError::Unavailable {
            message: format!("{error}; nothing of this request was applied, try again"),
        }
    }
}

impl RequestError {
    /// The machine-readable code of the error body.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::BadRequest { code, .. } => *code,
            RequestError::Forbidden { .. } => ErrorCode::Forbidden,
            RequestError::NotFound { .. } => ErrorCode::NotFound,
            RequestError::AlreadyResolved { .. } => ErrorCode::AlreadyResolved,
            RequestError::TooLarge { .. } => ErrorCode::TooLarge,
            RequestError::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            RequestError::Unavailable { .. } => ErrorCode::StorageUnavailable,
        }
    }

    fn invalid(message: impl Into<String>) -> RequestError {
        RequestError::BadRequest {
            code: ErrorCode::InvalidValue,
            message: message.into(),
        }
    }
}

/// The sync server over a store.
#[derive(Debug)]
pub struct Server<S: ServerStore = MemoryStore> {
    config: SyncConfig,
    store: S,
    capacity: Capacity,
    /// What the server holds beside its store (lost by a crash, [`Server::lose_memory`]):
    /// only the idempotency records a planted split commit defers to the batch's end.
    held_keys: Vec<(UserId, IdempotencyKey, IdempotencyRecord)>,
}

/// How much the server's tables may hold before a write is answered `retry` with
/// `storage_full` (the client backs off and resends). The defaults are
/// [`ENTITY_COUNT_MAX`] and [`HISTORY_ROW_COUNT_MAX`]; the simulation lowers them to fill
/// the server's disk on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Entities (a create beyond it waits).
    pub entities: usize,
    /// History rows (any op beyond it waits).
    pub history_rows: usize,
}

impl Default for Capacity {
    fn default() -> Capacity {
        Capacity {
            entities: ENTITY_COUNT_MAX,
            history_rows: HISTORY_ROW_COUNT_MAX,
        }
    }
}

/// What `cleanup` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Idempotency keys past their retention.
    pub idempotency_keys: usize,
    /// History rows past `HISTORY_RETENTION_MS`.
    pub history_rows: usize,
    /// Resolved conflicts past `HISTORY_RETENTION_MS`.
    pub conflicts: usize,
    /// Batch rows past `HISTORY_RETENTION_MS`.
    pub batches: usize,
    /// Metrics windows past `HISTORY_RETENTION_MS`.
    pub metrics_windows: usize,
}

impl Server<MemoryStore> {
    /// A server with an empty in-memory store.
    pub fn new(config: SyncConfig) -> Server<MemoryStore> {
        Server::with_store(config, MemoryStore::default())
    }
}

impl<S: ServerStore> Server<S> {
    /// A server over an existing store (after a restart, say).
    pub fn with_store(config: SyncConfig, store: S) -> Server<S> {
        Server {
            config,
            store,
            capacity: Capacity::default(),
            held_keys: Vec::new(),
        }
    }

    /// The server process died: whatever it held beside its store is gone (what was
    /// committed survives in the store).
    pub fn lose_memory(&mut self) {
        self.held_keys.clear();
    }

    /// Sets how much the tables may hold (an operator adding or losing disk).
    pub fn set_capacity(&mut self, capacity: Capacity) {
        self.capacity = capacity;
    }

    /// The configuration in force.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// The tables, read-only.
    pub fn tables(&self) -> &Tables {
        self.store.tables()
    }

    /// Makes every commit so far durable (see [`ServerStore::flush`]); the HTTP layer calls
    /// it before any answer leaves.
    pub fn flush(&mut self) -> Result<(), RequestError> {
        Ok(self.store.flush()?)
    }

    /// Starts making every commit so far durable (see [`ServerStore::begin_flush`]): the
    /// HTTP layer calls it under the server's lock and waits for it after releasing the
    /// lock, before any answer leaves.
    pub fn begin_flush(&mut self) -> Result<Flushing, RequestError> {
        Ok(self.store.begin_flush()?)
    }

    /// The store's epoch (see [`ServerStore::epoch`]).
    pub fn store_epoch(&self) -> u64 {
        self.store.epoch()
    }

    /// The same server over its store chosen at run time.
    pub fn into_any(self) -> Server<AnyStore>
    where
        S: Send + 'static,
    {
        Server {
            config: self.config,
            store: Box::new(self.store),
            capacity: self.capacity,
            held_keys: self.held_keys,
        }
    }

    /// Gives the store back (to "restart" the server over it).
    pub fn into_store(self) -> S {
        self.store
    }
}

#[cfg(test)]
mod tests;
