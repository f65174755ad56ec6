//! Test doubles and shared test suites, apart from the production code: the in-memory
//! queue store with crash semantics that the simulation, the model tests, the benchmarks
//! and the fuzzer run devices on ([`sim_store`]), and the conformance suite every
//! `QueueStore` must pass ([`queue_store_conformance`], run over the simulated store here
//! and the file store in `rockhound-io`). Nothing under `client/` or `server/` uses them.

pub mod queue_store_conformance;
pub mod sim_store;
