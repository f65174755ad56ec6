//! Integration tests of `rockhound-sim`, one binary (one `mod` per area). The command line's
//! and the real sockets' tests live in `cli/tests`.

mod scenarios;
mod trace_page;
mod world;
