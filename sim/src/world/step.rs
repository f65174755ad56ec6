//! Stepping the world until it settles: scheduled steps and workload edits during the safety
//! phase, the heal that starts the liveness phase, then steps until everything converged or
//! the phase's bound is reached.

use super::actions::{apply, edit_action, enqueue, heal, visible_entities};
use super::finish::{Settled, converged};
use super::{CONVERGENCE_CHECK_MS, World};
use crate::spec::{Action, SpecError};
use crate::trace::{Phase, TraceEvent};
use crate::workload::{self, Planned};
use rand::Rng;
use rockhound_engine::Millis;
use rockhound_engine::client::coordinator::EditAction;

/// How long a server killed inside a batch stays down.
pub const MID_BATCH_RESTART_MS: u64 = 2_000;

impl World<'_> {
    /// Steps until converged after the heal, or until the run's bound.
    pub(super) fn step_until_settled(&mut self) -> Result<Settled, SpecError> {
        let spec = self.spec;
        let epoch_ms = spec.sim.epoch_ms;
        let run_ms = spec.sim.safety_ms + spec.sim.liveness_ms;
        let mut next = 0;
        let mut liveness_started_ms = None;
        self.record(
            0,
            TraceEvent::Phase {
                phase: Phase::Safety,
            },
        );
        loop {
            let t_ms = self.elapsed_ms();
            let now = Millis(epoch_ms + t_ms);
            if liveness_started_ms.is_none() {
                next = self.apply_due(next, t_ms, now);
            }
            if liveness_started_ms.is_none() && t_ms >= spec.sim.safety_ms {
                liveness_started_ms = Some(t_ms);
                self.record(
                    t_ms,
                    TraceEvent::Phase {
                        phase: Phase::Liveness,
                    },
                );
                self.server_faults.lock().shed_until = None;
                heal(
                    &mut self.sim,
                    &self.devices,
                    now,
                    &mut self.server_up,
                    &self.config,
                    &self.server,
                );
            }
            if let Some(started) = liveness_started_ms {
                if (t_ms - started) % CONVERGENCE_CHECK_MS < spec.sim.tick_ms
                    && converged(&self.devices, &self.server)
                {
                    self.record(t_ms, TraceEvent::Converged);
                    return Ok(Settled {
                        convergence_ms: Some(t_ms - started),
                        end_ms: self.elapsed_ms(),
                    });
                }
            }
            if t_ms >= run_ms {
                return Ok(Settled {
                    convergence_ms: None,
                    end_ms: self.elapsed_ms(),
                });
            }
            if let Err(error) = self.sim.step() {
                return Err(SpecError::new(format!(
                    "the simulation failed at {t_ms} ms: {error}"
                )));
            }
            self.crash_or_restart_mid_batch(self.elapsed_ms());
            self.trace_coverage(self.elapsed_ms());
        }
    }

    /// Applies every scheduled slot due by `t_ms` from `next` on; returns the next slot.
    fn apply_due(&mut self, mut next: usize, t_ms: u64, now: Millis) -> usize {
        while next < self.schedule.len() && self.schedule[next].0 <= t_ms {
            let planned = self.schedule[next].2.clone();
            next += 1;
            match planned {
                Planned::Step(action) => {
                    self.record(
                        t_ms,
                        TraceEvent::Step {
                            action: action.clone(),
                        },
                    );
                    if let Action::CrashServerMidBatch { after_ops } = action {
                        self.server_faults.lock().after_ops = Some(after_ops);
                        continue;
                    }
                    if let Action::Overload { ms } = action {
                        self.server_faults.lock().shed_until = Some(now.plus_ms(ms));
                        continue;
                    }
                    apply(
                        &mut self.sim,
                        &self.devices,
                        &action,
                        now,
                        &mut self.server_up,
                        &self.config,
                        &self.server,
                    );
                }
                Planned::UserAction { device } => self.user_edit(&device, t_ms, now),
            }
        }
        next
    }

    /// The random workload's next edit on `device`, decided now from what its user sees.
    fn user_edit(&mut self, device: &str, t_ms: u64, now: Millis) {
        let ctx = &self.devices.by_name[device];
        let counter = self
            .devices
            .counters
            .get_mut(device)
            .expect("every device has a counter");
        let visible = visible_entities(ctx);
        let wide = self.spec.workload.as_ref().is_some_and(|w| w.wide);
        let edit = workload::user_edit(
            device,
            counter,
            &visible,
            &mut self.choice_rng,
            self.spec.planted.sim.nondeterministic_ids,
            wide,
        );
        // The wider workload's user now and then waits on a save (priority 0).
        let blocking = wide
            && !matches!(edit.action, EditAction::Delete)
            && self.choice_rng.random_bool(workload::BLOCKING_SHARE);
        // Recorded as the step it amounts to, so that `export` can write the run out as
        // explicit steps.
        let action = edit_action(device, &edit, blocking);
        self.record(t_ms, TraceEvent::Step { action });
        enqueue(ctx, now, edit, blocking);
    }

    /// Kills the server host once an armed mid-batch crash fired inside a batch, and
    /// starts it again [`MID_BATCH_RESTART_MS`] later (unless something restarted it
    /// before).
    fn crash_or_restart_mid_batch(&mut self, t_ms: u64) {
        let decided = std::mem::take(&mut self.server_faults.lock().decided);
        for (at_ms, event) in decided {
            self.trace.borrow_mut().record(at_ms, "server", event);
        }
        let fired = std::mem::take(&mut self.server_faults.lock().crashed);
        if fired && self.server_up {
            self.sim.crash("server");
            self.server.lock().lose_memory();
            self.server_up = false;
            self.server_restart_at_ms = Some(t_ms + MID_BATCH_RESTART_MS);
            self.record(t_ms, TraceEvent::ServerCrashed { mid_batch: true });
        }
        if self.server_restart_at_ms.is_some_and(|at| t_ms >= at) {
            self.server_restart_at_ms = None;
            if !self.server_up {
                self.sim.bounce("server");
                self.server_up = true;
            }
        }
    }

    /// Traces each coverage point reached for the first time since the last call.
    pub(super) fn trace_coverage(&mut self, t_ms: u64) {
        for point in rockhound_engine::coverage::drain() {
            if self.covered.insert(point.clone()) {
                self.record(t_ms, TraceEvent::Covered { point });
            }
        }
    }

    fn record(&self, t_ms: u64, event: TraceEvent) {
        self.trace.borrow_mut().record(t_ms, "world", event);
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.sim.elapsed().as_millis()).expect("runs are short")
    }
}
