//! Integration tests of `rockhound-sim`, one binary (one `mod` per area).

mod cli;
mod hardening;
mod http;
mod reports;
mod scenarios;
mod world;
