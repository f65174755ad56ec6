//! Integration tests of `rockhound-sim`, one binary (one `mod` per area).

mod cli;
mod http;
mod reports;
mod scenarios;
mod world;
