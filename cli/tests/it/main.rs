//! Integration tests of the `rockhound` binary, one test binary (one `mod` per area): the
//! commands' contract, `serve` over real sockets and its hardening, the reports baseline and
//! the trace page in a real browser.

mod browser;
mod cli;
mod database;
mod hardening;
mod http;
mod layout;
mod merge;
mod reports;
