//! `SyncConfig`: every tunable of the client and server, with validation and the seed's
//! three presets (development, production, offline-heavy).
//!
//! All durations are integer milliseconds. Defaults are the production preset.

use crate::backoff::{BACKOFF_CAP_MS_MAX, BACKOFF_DOUBLING_COUNT_MAX, BackoffPolicy};
use crate::entity::Catalogue;
use crate::op::BATCH_OP_COUNT_MAX;
use crate::planted::Planted;
use crate::time::{DAY_MS, HOUR_MS, SECOND_MS};
use serde::{Deserialize, Serialize};

/// The largest queue a configuration may ask for.
pub const QUEUE_OP_COUNT_MAX: usize = 1_000_000;
/// The longest queue TTL a configuration may ask for (one year).
pub const QUEUE_TTL_MS_MAX: u64 = 365 * DAY_MS;
/// The most retries a configuration may ask for before dead-lettering, short of unbounded.
pub const RETRY_COUNT_MAX: u32 = 1_000;

const _: () = assert!(BATCH_OP_COUNT_MAX <= QUEUE_OP_COUNT_MAX);

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// The longest batching window: a minute.
pub const BATCH_WINDOW_MS_MAX: u64 = 60_000;

/// Configuration of one deployment (client and server agree on it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Most ops in one batch. Default 50.
    pub batch_size: usize,
    /// How long a batch may be in flight before it counts as failed (the request
    /// timeout). Default 5,000 ms. The seed's name reads as a time to wait for a batch to
    /// fill as well; here that is [`SyncConfig::batch_window_ms`].
    pub batch_timeout_ms: u64,
    /// The batching window: once an op is ready, how long to wait for more before sending a
    /// batch that is not full (a full batch, or one with a priority-0 op, goes at once).
    /// Default 0: send at once (and then left out of the serialized form, so that traces
    /// of configurations without a window read as before).
    #[serde(skip_serializing_if = "is_zero")]
    pub batch_window_ms: u64,
    /// Interval between automatic sync attempts while online. Default 60,000 ms.
    pub auto_sync_interval_ms: u64,
    /// Failed attempts before an op is dead-lettered; `None` retries forever. Default 5.
    pub max_retries: Option<u32>,
    /// Most ops the local queue holds; a full queue refuses new ops. Default 10,000.
    pub max_queue_size: usize,
    /// How long an op may wait in the queue before it expires. Default 7 days.
    pub queue_ttl_ms: u64,
    /// The largest device clock skew the deployment tolerates. Default 1 hour.
    pub clock_skew_ms_max: u64,
    /// The retry schedule.
    pub backoff: BackoffPolicy,
    /// Whether telemetry events are emitted. Default true.
    pub enable_telemetry: bool,
    /// The seed's switch for a durable queue. Here the queue is always durable (an op is
    /// acknowledged to the caller only once it is on disk, and the no-loss, durability and
    /// exactly-once checkers rely on that), so this is kept only so that the seed's
    /// configurations, which set it to true, still read; `false` is refused by
    /// [`SyncConfig::validate`] rather than silently ignored.
    pub persist_queue: bool,
    /// Per-entity-type overrides of priority and conflict strategy.
    pub entities: Catalogue,
    /// Changes asked for per pull page. Default 500; 1 to the server's page limit.
    pub pull_page_len: usize,
    /// Bugs a negative test plants (none unless the simulation's `[planted]` table says
    /// so); never read from or written to a configuration file.
    #[serde(skip)]
    pub planted: Planted,
}

/// A configuration value out of its range; the message names the key and the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value} is invalid: {rule}")]
pub struct ConfigError {
    /// The offending key.
    pub key: &'static str,
    /// Its value, as written.
    pub value: String,
    /// The rule it breaks.
    pub rule: String,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig::production()
    }
}

impl SyncConfig {
    /// The seed's development preset: small batches, quick timeouts, 3 retries.
    pub fn development() -> SyncConfig {
        SyncConfig {
            batch_size: 25,
            batch_timeout_ms: 2 * SECOND_MS,
            auto_sync_interval_ms: 30 * SECOND_MS,
            max_retries: Some(3),
            enable_telemetry: false,
            ..SyncConfig::production()
        }
    }

    /// The seed's production preset (the default).
    pub fn production() -> SyncConfig {
        SyncConfig {
            batch_size: 50,
            batch_timeout_ms: 5 * SECOND_MS,
            batch_window_ms: 0,
            auto_sync_interval_ms: 60 * SECOND_MS,
            max_retries: Some(5),
            max_queue_size: 10_000,
            queue_ttl_ms: 7 * DAY_MS,
            clock_skew_ms_max: HOUR_MS,
            backoff: BackoffPolicy::default(),
            enable_telemetry: true,
            persist_queue: true,
            entities: Catalogue::default(),
            pull_page_len: crate::client::coordinator::PULL_PAGE_LEN,
            planted: Planted::default(),
        }
    }

    /// The seed's offline-heavy preset: big batches, a 14-day TTL. (The seed also names a
    /// queue of 10,000 and a persisted queue, which production has already.)
    pub fn offline_heavy() -> SyncConfig {
        SyncConfig {
            batch_size: 100,
            queue_ttl_ms: 14 * DAY_MS,
            ..SyncConfig::production()
        }
    }

    /// The preset with this name (`development`, `production`, `offline_heavy`).
    pub fn preset(name: &str) -> Option<SyncConfig> {
        match name {
            "development" => Some(SyncConfig::development()),
            "production" => Some(SyncConfig::production()),
            "offline_heavy" | "offline-heavy" => Some(SyncConfig::offline_heavy()),
            _ => None,
        }
    }

    /// The longest time an op can keep being retried after its first attempt: its TTL plus
    /// one capped backoff delay with jitter.
    pub fn retry_span_ms_max(&self) -> u64 {
        let jitter = self.backoff.cap_ms * u64::from(self.backoff.jitter_percent) / 100;
        self.queue_ttl_ms + self.backoff.cap_ms + jitter
    }

    /// How long the server must remember an idempotency key so that no op still in some
    /// device's queue can be applied twice: queue TTL + maximum backoff + maximum skew, plus
    /// one day of margin (docs/api.md, `expired`).
    pub fn idempotency_retention_ms(&self) -> u64 {
        self.retry_span_ms_max() + self.clock_skew_ms_max + DAY_MS
    }

    /// Checks every value against its range and the relationships between them.
    // Long on purpose: one range check per key, in the order of the struct's fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn error(key: &'static str, value: impl ToString, rule: impl Into<String>) -> ConfigError {
            ConfigError {
                key,
                value: value.to_string(),
                rule: rule.into(),
            }
        }
        if self.batch_window_ms > BATCH_WINDOW_MS_MAX {
            return Err(error(
                "batch_window_ms",
                self.batch_window_ms,
                format!("use 0 to {BATCH_WINDOW_MS_MAX}"),
            ));
        }
        if !self.persist_queue {
            return Err(error(
                "persist_queue",
                false,
                "the queue is always durable (an in-memory queue would lose acknowledged ops \
                 in a crash); leave it out or set it to true",
            ));
        }
        if !(1..=BATCH_OP_COUNT_MAX).contains(&self.batch_size) {
            return Err(error(
                "batch_size",
                self.batch_size,
                format!("use 1 to {BATCH_OP_COUNT_MAX}"),
            ));
        }
        if !(1..=QUEUE_OP_COUNT_MAX).contains(&self.max_queue_size) {
            return Err(error(
                "max_queue_size",
                self.max_queue_size,
                format!("use 1 to {QUEUE_OP_COUNT_MAX}"),
            ));
        }
        if !(1..=crate::server::PULL_LIMIT_MAX).contains(&self.pull_page_len) {
            return Err(error(
                "pull_page_len",
                self.pull_page_len,
                format!("use 1 to {}", crate::server::PULL_LIMIT_MAX),
            ));
        }
        if self.batch_size > self.max_queue_size {
            return Err(error(
                "batch_size",
                self.batch_size,
                format!(
                    "a batch cannot be larger than max_queue_size ({})",
                    self.max_queue_size
                ),
            ));
        }
        if !(SECOND_MS..=HOUR_MS).contains(&self.batch_timeout_ms) {
            return Err(error(
                "batch_timeout_ms",
                self.batch_timeout_ms,
                "use 1,000 to 3,600,000 ms",
            ));
        }
        if !(SECOND_MS..=DAY_MS).contains(&self.auto_sync_interval_ms) {
            return Err(error(
                "auto_sync_interval_ms",
                self.auto_sync_interval_ms,
                "use 1,000 to 86,400,000 ms",
            ));
        }
        if let Some(retries) = self.max_retries
            && !(1..=RETRY_COUNT_MAX).contains(&retries)
        {
            return Err(error(
                "max_retries",
                retries,
                format!("use 1 to {RETRY_COUNT_MAX}, or leave it out for unbounded"),
            ));
        }
        if !(HOUR_MS..=QUEUE_TTL_MS_MAX).contains(&self.queue_ttl_ms) {
            return Err(error(
                "queue_ttl_ms",
                self.queue_ttl_ms,
                "use one hour to one year (3,600,000 to 31,536,000,000 ms)",
            ));
        }
        if self.clock_skew_ms_max > 7 * DAY_MS {
            return Err(error(
                "clock_skew_ms_max",
                self.clock_skew_ms_max,
                "use at most 7 days (604,800,000 ms)",
            ));
        }
        let backoff = &self.backoff;
        if backoff.initial_ms == 0 {
            return Err(error(
                "backoff.initial_ms",
                backoff.initial_ms,
                "must be at least 1 ms",
            ));
        }
        if backoff.cap_ms < backoff.initial_ms || backoff.cap_ms > BACKOFF_CAP_MS_MAX {
            return Err(error(
                "backoff.cap_ms",
                backoff.cap_ms,
                format!(
                    "use backoff.initial_ms ({}) to {BACKOFF_CAP_MS_MAX} ms",
                    backoff.initial_ms
                ),
            ));
        }
        if backoff.doubling_count > BACKOFF_DOUBLING_COUNT_MAX {
            return Err(error(
                "backoff.doubling_count",
                backoff.doubling_count,
                format!("use 0 to {BACKOFF_DOUBLING_COUNT_MAX}"),
            ));
        }
        if backoff.jitter_percent > 100 {
            return Err(error(
                "backoff.jitter_percent",
                backoff.jitter_percent,
                "use 0 to 100",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conflict::Strategy;
    use crate::entity::EntityType;

    #[test]
    fn a_pull_page_length_of_zero_or_beyond_the_servers_limit_is_refused() {
        for (len, ok) in [
            (0, false),
            (1, true),
            (crate::server::PULL_LIMIT_MAX, true),
            (crate::server::PULL_LIMIT_MAX + 1, false),
            (usize::MAX, false),
        ] {
            let config = SyncConfig {
                pull_page_len: len,
                ..SyncConfig::default()
            };
            let result = config.validate();
            assert_eq!(result.is_ok(), ok, "{len}: {result:?}");
            if let Err(error) = result {
                assert_eq!(error.key, "pull_page_len");
            }
        }
    }

    #[test]
    fn a_batching_window_beyond_a_minute_is_refused() {
        for (window, ok) in [
            (0, true),
            (BATCH_WINDOW_MS_MAX, true),
            (BATCH_WINDOW_MS_MAX + 1, false),
            (u64::MAX, false),
        ] {
            let config = SyncConfig {
                batch_window_ms: window,
                ..SyncConfig::default()
            };
            let result = config.validate();
            assert_eq!(result.is_ok(), ok, "{window}: {result:?}");
            if let Err(error) = result {
                assert_eq!(error.key, "batch_window_ms");
            }
        }
    }

    #[test]
    fn a_queue_that_is_not_persisted_is_refused_not_silently_ignored() {
        let config = SyncConfig {
            persist_queue: false,
            ..SyncConfig::offline_heavy()
        };
        let error = config.validate().unwrap_err();
        assert_eq!(error.key, "persist_queue");
        assert!(error.to_string().contains("always durable"), "{error}");
        // The seed's configurations say true, and read.
        let seed: SyncConfig = serde_json::from_str(r#"{"persist_queue": true}"#).unwrap();
        assert_eq!(seed.validate(), Ok(()));
    }

    #[test]
    fn every_preset_is_valid_and_matches_the_seed() {
        for name in ["development", "production", "offline_heavy"] {
            assert_eq!(
                SyncConfig::preset(name).unwrap().validate(),
                Ok(()),
                "{name}"
            );
        }
        let development = SyncConfig::development();
        assert_eq!(
            (
                development.batch_size,
                development.batch_timeout_ms,
                development.auto_sync_interval_ms,
                development.max_retries
            ),
            (25, 2_000, 30_000, Some(3))
        );
        // The seed turns telemetry on in production by name; development leaves it off.
        assert!(!development.enable_telemetry);
        let production = SyncConfig::production();
        assert_eq!(
            (
                production.batch_size,
                production.batch_timeout_ms,
                production.auto_sync_interval_ms,
                production.max_retries
            ),
            (50, 5_000, 60_000, Some(5))
        );
        assert!(production.enable_telemetry);
        let offline = SyncConfig::offline_heavy();
        assert_eq!(
            (
                offline.batch_size,
                offline.max_queue_size,
                offline.queue_ttl_ms
            ),
            (100, 10_000, 14 * DAY_MS)
        );
        assert!(offline.persist_queue);
        assert_eq!(SyncConfig::preset("staging"), None);
    }

    #[test]
    fn idempotency_retention_outlasts_every_retry_and_skew() {
        let config = SyncConfig::production();
        let retention = config.idempotency_retention_ms();
        assert!(retention > config.queue_ttl_ms + 75_000 + config.clock_skew_ms_max);
        assert_eq!(retention, 7 * DAY_MS + 75_000 + HOUR_MS + DAY_MS);
    }

    fn message(change: impl FnOnce(&mut SyncConfig)) -> String {
        let mut config = SyncConfig::production();
        change(&mut config);
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn every_out_of_range_value_is_named() {
        assert_eq!(
            message(|c| c.batch_size = 0),
            "batch_size = 0 is invalid: use 1 to 500"
        );
        assert_eq!(
            message(|c| c.max_queue_size = 0),
            "max_queue_size = 0 is invalid: use 1 to 1000000"
        );
        assert_eq!(
            message(|c| c.max_queue_size = 10),
            "batch_size = 50 is invalid: a batch cannot be larger than max_queue_size (10)"
        );
        assert_eq!(
            message(|c| c.batch_timeout_ms = 5),
            "batch_timeout_ms = 5 is invalid: use 1,000 to 3,600,000 ms"
        );
        assert_eq!(
            message(|c| c.auto_sync_interval_ms = 0),
            "auto_sync_interval_ms = 0 is invalid: use 1,000 to 86,400,000 ms"
        );
        assert_eq!(
            message(|c| c.max_retries = Some(0)),
            "max_retries = 0 is invalid: use 1 to 1000, or leave it out for unbounded"
        );
        assert_eq!(
            message(|c| c.queue_ttl_ms = 1),
            "queue_ttl_ms = 1 is invalid: use one hour to one year (3,600,000 to 31,536,000,000 ms)"
        );
        assert_eq!(
            message(|c| c.clock_skew_ms_max = 8 * DAY_MS),
            "clock_skew_ms_max = 691200000 is invalid: use at most 7 days (604,800,000 ms)"
        );
        assert_eq!(
            message(|c| c.backoff.initial_ms = 0),
            "backoff.initial_ms = 0 is invalid: must be at least 1 ms"
        );
        assert_eq!(
            message(|c| c.backoff.cap_ms = 10),
            "backoff.cap_ms = 10 is invalid: use backoff.initial_ms (1000) to 86400000 ms"
        );
        assert_eq!(
            message(|c| c.backoff.doubling_count = 31),
            "backoff.doubling_count = 31 is invalid: use 0 to 30"
        );
        assert_eq!(
            message(|c| c.backoff.jitter_percent = 101),
            "backoff.jitter_percent = 101 is invalid: use 0 to 100"
        );
    }

    #[test]
    fn unbounded_retries_are_valid() {
        let config = SyncConfig {
            max_retries: None,
            ..SyncConfig::production()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn config_reads_from_json_with_overrides_and_refuses_unknown_keys() {
        let config: SyncConfig = serde_json::from_str(
            r#"{"batch_size": 10, "entities": {"tag": {"strategy": "manual"}}}"#,
        )
        .unwrap();
        assert_eq!(config.batch_size, 10);
        assert_eq!(config.max_retries, Some(5));
        assert_eq!(
            config.entities.rules(EntityType::Tag).strategy,
            Strategy::Manual
        );
        let error = serde_json::from_str::<SyncConfig>(r#"{"batch_sise": 10}"#).unwrap_err();
        assert!(
            error.to_string().starts_with("unknown field `batch_sise`"),
            "{error}"
        );
    }
}
