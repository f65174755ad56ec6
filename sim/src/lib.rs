//! The Rockhound simulation harness and the I/O around the sans-IO engine.
//!
//! Today this crate holds the HTTP layer: [`http::router`] serves the API of SPEC §3.5 over
//! any listener (a real tokio socket for `rockhound serve`, simulated TCP in the harness),
//! [`http::client`] speaks HTTP/1.1 over any byte stream, and [`file_store`] is the
//! real, fsyncing implementation of the client queue's storage seam.

pub mod file_store;
pub mod http;
