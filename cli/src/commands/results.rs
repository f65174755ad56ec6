//! Machine-readable results: `--format json` (one JSON object per run, then a summary, on
//! stdout) and `--junit FILE` (JUnit XML, one test case per scenario × seed), for CI systems
//! that show results natively (docs/reports.md).

use super::{Done, Exit, Job, code_of};
use rockhound_sim::coverage::{self, Table};
use rockhound_sim::runner::Checked;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// How `run` and `check` print their results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a person (the default).
    #[default]
    Text,
    /// One JSON object per run, then one summary object, each on its own line.
    Json,
}

/// One run, as `--format json` prints it.
#[derive(Debug, Serialize)]
pub struct RunRecord<'a> {
    /// The scenario's name.
    pub scenario: &'a str,
    /// Its seed.
    pub seed: u64,
    /// The trace digest (empty when the run could not start).
    pub digest: String,
    /// `ok`, `violation`, `nondeterminism` or `error`.
    pub result: &'static str,
    /// Each checker: whether it ran, and what it found.
    pub verdicts: Vec<VerdictRecord>,
    /// Unmet expectations of the scenario file.
    pub unmet: Vec<String>,
    /// The run's counts.
    pub counts: Option<&'a rockhound_sim::summary::Summary>,
    /// The coverage points it reached.
    pub coverage: Vec<&'a str>,
    /// The command that runs it again.
    pub reproduce: &'a str,
    /// Wall-clock seconds the run (and its re-run) took.
    pub wall_s: f64,
    /// Why it could not run, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// One checker's verdict.
#[derive(Debug, Serialize)]
pub struct VerdictRecord {
    /// The checker.
    pub checker: String,
    /// Whether it ran.
    pub ran: bool,
    /// Its violations, each as the text the terminal shows.
    pub violations: Vec<String>,
}

fn result_name(code: Exit) -> &'static str {
    match code {
        Exit::Ok => "ok",
        Exit::Nondeterminism => "nondeterminism",
        Exit::Violation => "violation",
        _ => "error",
    }
}

fn record<'a>(job: &'a Job, done: &'a Done) -> (RunRecord<'a>, Exit) {
    let (result, wall_s) = done;
    match result {
        Ok(checked) => {
            let code = code_of(job, checked);
            let record = RunRecord {
                scenario: &job.label,
                seed: job.seed,
                digest: checked.outcome.digest.clone(),
                result: result_name(code),
                verdicts: verdicts(checked),
                unmet: checked.outcome.unmet.clone(),
                counts: Some(&checked.outcome.summary),
                coverage: coverage::reached(&checked.outcome.trace.lines),
                reproduce: &job.reproduce,
                wall_s: *wall_s,
                error: None,
            };
            (record, code)
        }
        Err(error) => {
            let record = RunRecord {
                scenario: &job.label,
                seed: job.seed,
                digest: String::new(),
                result: "error",
                verdicts: Vec::new(),
                unmet: Vec::new(),
                counts: None,
                coverage: Vec::new(),
                reproduce: &job.reproduce,
                wall_s: *wall_s,
                error: Some(error),
            };
            (record, Exit::Usage)
        }
    }
}

fn verdicts(checked: &Checked) -> Vec<VerdictRecord> {
    checked
        .verdicts()
        .iter()
        .map(|v| VerdictRecord {
            checker: v.checker.to_string(),
            ran: v.ran,
            violations: v.violations.iter().map(ToString::to_string).collect(),
        })
        .collect()
}

/// Prints one JSON object per finished run, then the summary (runs, each result's count,
/// the coverage table); returns the worst exit code.
pub(super) fn print_json(jobs: &[Job], results: &[Option<Done>], table: &Table) -> Exit {
    let mut codes = Vec::new();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for (job, done) in jobs.iter().zip(results) {
        let Some(done) = done else { continue };
        let (record, code) = record(job, done);
        *counts.entry(record.result).or_default() += 1;
        println!(
            "{}",
            serde_json::to_string(&record).expect("a record serializes")
        );
        codes.push(code);
    }
    let code = super::worst(codes);
    let summary = serde_json::json!({
        "summary": {
            "runs": counts.values().sum::<usize>(),
            "results": counts,
            "result": result_name(code),
            "coverage": table.to_json(),
        }
    });
    println!("{summary}");
    code
}

/// Writes the JUnit XML of the finished runs to `path`: one suite, one test case per
/// scenario × seed, a failure with the verdicts and the reproduce command.
pub(super) fn write_junit(
    path: &Path,
    jobs: &[Job],
    results: &[Option<Done>],
) -> std::io::Result<()> {
    let mut cases = String::new();
    let (mut tests, mut failures, mut errors, mut total_s) = (0, 0, 0, 0.0);
    for (job, done) in jobs.iter().zip(results) {
        let Some(done) = done else { continue };
        let (record, code) = record(job, done);
        tests += 1;
        total_s += record.wall_s;
        let _ = write!(
            cases,
            "    <testcase classname=\"{}\" name=\"seed {}\" time=\"{:.3}\">",
            xml(record.scenario),
            record.seed,
            record.wall_s
        );
        if let Some(error) = record.error {
            errors += 1;
            let _ = write!(
                cases,
                "\n      <error message=\"{}\">{}</error>\n    ",
                xml(error),
                xml(&format!("reproduce: {}", record.reproduce))
            );
        } else if code != Exit::Ok {
            failures += 1;
            let mut text = String::new();
            for verdict in &record.verdicts {
                for violation in &verdict.violations {
                    text.push_str(violation);
                }
            }
            for unmet in &record.unmet {
                let _ = writeln!(text, "unmet expectation: {unmet}");
            }
            let _ = write!(
                text,
                "digest {}\nreproduce: {}",
                record.digest, record.reproduce
            );
            let _ = write!(
                cases,
                "\n      <failure message=\"{} (seed {})\" type=\"{}\">{}</failure>\n    ",
                xml(record.result),
                record.seed,
                xml(record.result),
                xml(&text)
            );
        }
        cases.push_str("</testcase>\n");
    }
    let document = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{total_s:.3}\">\n  <testsuite name=\"rockhound\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{total_s:.3}\">\n{cases}  </testsuite>\n</testsuites>\n"
    );
    std::fs::write(path, document)
}

/// `text` escaped for XML text and attribute values; characters XML 1.0 cannot hold
/// (most control characters) become `?`.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::xml;

    #[test]
    fn xml_escapes_markup_and_drops_what_xml_cannot_hold() {
        assert_eq!(
            xml("a<b>&\"c\"'d'\u{1}\n"),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;?\n"
        );
    }
}
