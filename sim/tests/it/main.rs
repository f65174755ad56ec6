//! Integration tests of `rockhound-sim`, one binary (one `mod` per area).

mod http;
mod scenarios;
mod world;
