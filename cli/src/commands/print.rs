//! How one finished run is printed: its seed and digest line, the checkers' verdicts, the
//! unmet expectations and the command that reproduces it.

use super::{Exit, Job, code_of, digest_check, worst};
use rockhound_sim::runner::Checked;
use std::path::Path;

/// Prints one run's block: the contract line `seed=<N> digest=<hex>`, then the verdicts (in
/// `brief` mode a passing run gets one line instead). Returns its exit code.
// Long on purpose: prints one run's block (seed and digest, counts, verdicts, unmet expectations,
// the reproduce line) in the order a reader meets it.
pub(super) fn report(
    job: &Job,
    checked: &Checked,
    wall_s: f64,
    trace_out: Option<&Path>,
    brief: bool,
) -> Exit {
    println!("seed={} digest={}", job.seed, checked.outcome.digest);
    let code = code_of(job, checked);
    let expected = job.spec.expect.violation;
    if brief && code == Exit::Ok {
        match expected {
            Some(name) => println!("  ok    {} (planted bug caught by {name})", job.label),
            None => println!("  ok    {}", job.label),
        }
        return code;
    }
    let summary = &checked.outcome.summary;
    println!(
        "scenario {}: {} ops enqueued, {} edits refused, {} applied, {} conflicts, {} rejected, {} dead-lettered, {} expired, {} batches, converged {}",
        job.label,
        summary.enqueued,
        summary.refused,
        summary.applied,
        summary.conflicts,
        summary.rejected,
        summary.dead_lettered,
        summary.expired,
        summary.batches,
        summary
            .convergence_ms
            .map_or("never".to_owned(), |ms| format!("{ms} ms after healing")),
    );
    let runs = if checked.determinism.is_some() { 2 } else { 1 };
    // The run's actual length: it ends once everything converged after healing.
    let simulated_s = summary.simulated_ms as f64 / 1000.0;
    println!(
        "speed: {simulated_s:.0} simulated s per run, {runs} run(s) in {wall_s:.2} wall s: {:.0} simulated s per wall s",
        simulated_s * f64::from(runs) / wall_s.max(1e-9)
    );
    for verdict in checked.verdicts() {
        let state = match (verdict.ran, verdict.violations.len()) {
            (false, _) => "skipped".to_owned(),
            (true, 0) => "ok".to_owned(),
            (true, n) => format!("VIOLATED ({n})"),
        };
        println!("  {:<17} {state}", verdict.checker);
    }
    for verdict in checked.verdicts() {
        for violation in verdict.violations.iter().take(3) {
            print!("{violation}");
        }
    }
    for unmet in &checked.outcome.unmet {
        println!("  unmet expectation: {unmet}");
    }
    if let Some(path) = trace_out {
        match std::fs::File::create(path).and_then(|f| {
            checked
                .outcome
                .trace
                .write_jsonl(std::io::BufWriter::new(f))
        }) {
            Ok(_) => println!("trace written to {}", path.display()),
            Err(e) => {
                eprintln!("error: cannot write the trace to {}: {e}", path.display());
                return Exit::Usage;
            }
        }
    }
    let code = match digest_check(job, checked) {
        Some(false) => {
            println!(
                "digest {} differs from expect.digest {} recorded for seed {}",
                checked.outcome.digest,
                job.spec.expect.digest.as_deref().unwrap_or_default(),
                job.seed
            );
            worst([code, Exit::Nondeterminism])
        }
        _ => code,
    };
    match (code, expected) {
        (Exit::Ok, Some(name)) => println!("result: ok (the planted bug was caught by {name})"),
        (Exit::Ok, None) => println!("result: ok"),
        (Exit::Nondeterminism, _) => println!("result: NONDETERMINISTIC"),
        (_, Some(name)) => {
            println!("result: FAILED (expected {name} to report the planted bug; it did not)")
        }
        (_, None) => println!("result: FAILED"),
    }
    if code != Exit::Ok {
        println!("reproduce: {}", job.reproduce);
    }
    code
}
