//! Integration tests of the `rockhound` binary, one test binary (one `mod` per area): the
//! commands' contract, `serve` over real sockets and its hardening, and the reports baseline.

mod cli;
mod database;
mod hardening;
mod http;
mod layout;
mod merge;
mod reports;
