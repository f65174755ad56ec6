//! Server health: whatever broken or hostile clients send, the server never fails a request
//! (no 5xx answer: a panic inside a request is answered 500, so a panic shows here too).
//! That it keeps serving every honest device is `liveness`'s half: after the heal every
//! queue drains and every replica converges, which needs answers.

use super::{Checker, Facts, Violation};
use crate::trace::TraceEvent;

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (index, line) in facts.lines.iter().enumerate() {
        if let TraceEvent::HttpError {
            request,
            status,
            code,
        } = &line.event
            && *status >= 500
        {
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
                },
            )
        };
        let violations = check(&Facts::new(&[error(500)]));
        assert_eq!(violations.len(), 1);
        assert!(violations[0].message.contains("500 (internal)"));
        assert!(check(&Facts::new(&[error(400), error(422)])).is_empty());
    }
}
