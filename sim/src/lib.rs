//! The Rockhound simulation harness: the engine's server behind its HTTP API, devices running
//! the engine's coordinator, all inside one seeded turmoil world with faults, and the
//! checkers that judge a run from its trace.
//!
//! Read in this order: [`spec`] (what a run is), [`world`] (how it runs), [`device`] (one
//! simulated device), [`workload`] (what users do and what goes wrong), [`trace`] (what is
//! recorded), [`checkers`] (what must hold) and [`runner`] (seeds, determinism re-runs).
//! The HTTP router the simulated server runs comes from `rockhound-io`; the command line
//! that drives all this is `rockhound-cli`.

pub mod checkers;
pub mod coverage;
pub mod device;
pub mod explain;
pub mod explore;
pub mod export;
pub mod net;
pub mod paranoid;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod shrink;
pub mod spec;
pub mod summary;
pub mod trace;
pub mod workload;
pub mod world;
