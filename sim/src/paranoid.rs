//! Paranoid mode (`rockhound … --paranoid`): every simulated device checks its
//! coordinator's invariants ([`Coordinator::check_invariants`]) after every step it takes,
//! and a broken one stops the run with a panic naming it. Off by default (it costs time);
//! CI's explore turns it on. It only adds checks, so a run's trace is the same either way.
//!
//! [`Coordinator::check_invariants`]: rockhound_engine::client::Coordinator::check_invariants

use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns paranoid mode on for every run of this process.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether paranoid mode is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}
