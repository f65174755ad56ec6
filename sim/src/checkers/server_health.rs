//! Server health: whatever broken or hostile clients send, the server never fails a request
//! (no 5xx answer: a panic inside a request is answered 500, so a panic shows here too).
//! That it keeps serving every honest device is `liveness`'s half: after the heal every
//! queue drains and every replica converges, which needs answers. One 5xx is allowed: a
//! 503 (`busy`, with `Retry-After`) inside an `overload` window, where shedding load is
//! what the server was told to do.

use super::{Checker, Facts, Violation};
use crate::spec::Action;
use crate::trace::TraceEvent;

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut shedding_until_ms = 0;
    for (index, line) in facts.lines.iter().enumerate() {
        if let TraceEvent::Step {
            action: Action::Overload { ms },
        } = &line.event
        {
            // An answer given inside the window reaches the device within a request
            // timeout (the device gives up on it after that).
            shedding_until_ms = line
                .t_ms
                .saturating_add(*ms)
                .saturating_add(facts.config.batch_timeout_ms);
        }
        if let TraceEvent::HttpError {
            request,
            status,
            code,
            ..
        } = &line.event
            && *status >= 500
        {
            // Its body says `busy`, unless the answer was cut short on the way.
            if *status == 503 && line.t_ms < shedding_until_ms {
                continue;
            }
            let request = serde_json::to_value(request).unwrap_or_default();
            violations.push(facts.violation(
                Checker::ServerHealth,
                index,
                format!(
                    "the server answered {} a {status} ({code}) to its {} request",
                    line.host,
                    request.as_str().unwrap_or("?")
                ),
                &[index],
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{RequestKind, TraceLine};

    fn line(host: &str, event: TraceEvent) -> TraceLine {
        TraceLine {
            t_ms: 1_000,
            host: host.into(),
            event,
        }
    }

    #[test]
    fn a_server_error_is_caught_and_a_refusal_is_not() {
        let error = |status| {
            line(
                "phone",
                TraceEvent::HttpError {
                    request: RequestKind::Hostile,
                    status,
                    code: "internal".into(),
                    retry_after_ms: None,
                },
            )
        };
        let violations = check(&Facts::new(&[error(500)]));
        assert_eq!(violations.len(), 1);
        assert!(violations[0].message.contains("500 (internal)"));
        assert!(check(&Facts::new(&[error(400), error(422)])).is_empty());
    }

    #[test]
    fn shedding_load_is_allowed_only_inside_an_overload_window() {
        let busy = line(
            "phone",
            TraceEvent::HttpError {
                request: RequestKind::Batch,
                status: 503,
                code: "busy".into(),
                retry_after_ms: Some(1_000),
            },
        );
        assert_eq!(
            check(&Facts::new(std::slice::from_ref(&busy))).len(),
            1,
            "no window"
        );
        let mut overload = line(
            "world",
            TraceEvent::Step {
                action: Action::Overload { ms: 500 },
            },
        );
        overload.t_ms = 900;
        assert!(check(&Facts::new(&[overload.clone(), busy.clone()])).is_empty());
        let mut late = busy;
        late.t_ms = 900 + 500 + rockhound_engine::SyncConfig::default().batch_timeout_ms + 1;
        assert_eq!(
            check(&Facts::new(&[overload, late])).len(),
            1,
            "after the window"
        );
    }
}
