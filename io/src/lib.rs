//! The Rockhound engine's real I/O: everything that touches a socket or a file.
//!
//! [`http`] is the server's HTTP API (the axum router over the engine's `Server`, with the
//! clock the caller supplies), its client, and [`http::serve`], the router on real TCP with
//! connection limits and timeouts. [`file_store`] is the client queue's durable log on a real
//! file. The simulation runs the same router over simulated sockets; only `serve` and the
//! command line read a wall clock (docs/api.md, ARCHITECTURE.md).

pub mod file_store;
pub mod http;
mod pending;
mod pipeline;
pub mod postgres_store;
pub mod sqlite_store;
#[cfg(test)]
mod store_tests;
