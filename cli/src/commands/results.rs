//! Machine-readable results: `--format json` (one JSON object per run, then a summary, on
//! stdout) and `--junit FILE` (JUnit XML, one test case per scenario × seed), for CI systems
//! that show results natively (docs/reports.md).

use super::{Done, Exit, Job, code_of};
use rockhound_sim::coverage::{self, Table};
use rockhound_sim::runner::Checked;
use serde::{Deserialize, Serialize};
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

/// One run, as `--format json` prints it (and `merge` reads it back).
#[derive(Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// The scenario's name.
    pub scenario: String,
    /// Its seed.
    pub seed: u64,
    /// The trace digest (empty when the run could not start).
    pub digest: String,
    /// `ok`, `violation`, `nondeterminism` or `error`.
    pub result: String,
    /// Each checker: whether it ran, and what it found.
    pub verdicts: Vec<VerdictRecord>,
    /// Unmet expectations of the scenario file.
    pub unmet: Vec<String>,
    /// The run's counts.
    pub counts: Option<rockhound_sim::summary::Summary>,
    /// The coverage points it reached.
    pub coverage: Vec<String>,
    /// The command that runs it again.
    pub reproduce: String,
    /// Wall-clock seconds the run (and its re-run) took.
    pub wall_s: f64,
    /// Why it could not run, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its exit code, for the summary (read back from `result`).
    #[serde(skip)]
    pub code: Exit,
}

/// One checker's verdict.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerdictRecord {
    /// The checker.
    pub checker: String,
    /// Whether it ran.
    pub ran: bool,
    /// Its violations, each as the text the terminal shows.
    pub violations: Vec<String>,
}

/// The exit code a record's `result` stands for (the inverse of [`result_name`]).
pub(super) fn exit_of(result: &str) -> Exit {
    match result {
        "ok" => Exit::Ok,
        "nondeterminism" => Exit::Nondeterminism,
        "violation" => Exit::Violation,
        _ => Exit::Usage,
    }
}

fn result_name(code: Exit) -> &'static str {
    match code {
        Exit::Ok => "ok",
        Exit::Nondeterminism => "nondeterminism",
        Exit::Violation => "violation",
        _ => "error",
    }
}

/// The record of one finished run.
pub(super) fn record(job: &Job, result: Result<&Checked, &str>, wall_s: f64) -> RunRecord {
    match result {
        Ok(checked) => {
            let code = code_of(job, checked);
            RunRecord {
                scenario: job.label.clone(),
                seed: job.seed,
                digest: checked.outcome.digest.clone(),
                result: result_name(code).to_owned(),
                verdicts: verdicts(checked),
                unmet: checked.outcome.unmet.clone(),
                counts: Some(checked.outcome.summary.clone()),
                coverage: coverage::reached(&checked.outcome.trace.lines)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                reproduce: job.reproduce.clone(),
                wall_s,
                error: None,
                code,
            }
        }
        Err(error) => RunRecord {
            scenario: job.label.clone(),
            seed: job.seed,
            digest: String::new(),
            result: "error".to_owned(),
            verdicts: Vec::new(),
            unmet: Vec::new(),
            counts: None,
            coverage: Vec::new(),
            reproduce: job.reproduce.clone(),
            wall_s,
            error: Some(error.to_owned()),
            code: Exit::Usage,
        },
    }
}

/// The records of the finished runs among `results`, in job order.
pub(super) fn records(jobs: &[Job], results: &[Option<Done>]) -> Vec<RunRecord> {
    jobs.iter()
        .zip(results)
        .filter_map(|(job, done)| {
            done.as_ref().map(|(result, wall_s)| {
                record(job, result.as_ref().map_err(String::as_str), *wall_s)
            })
        })
        .collect()
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

/// Prints one JSON object per run, then the summary (runs, each result's count, the worst
/// result, the coverage table, and the members of `more`); returns the worst exit code.
pub(super) fn print_json(
    records: &[RunRecord],
    table: &Table,
    more: serde_json::Map<String, serde_json::Value>,
) -> Exit {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for record in records {
        *counts.entry(record.result.as_str()).or_default() += 1;
        println!(
            "{}",
            serde_json::to_string(record).expect("a record serializes")
        );
    }
    let code = super::worst(records.iter().map(|r| r.code));
    let mut summary = serde_json::json!({
        "runs": records.len(),
        "results": counts,
        "result": result_name(code),
        "coverage": table.to_json(),
    });
    if let Some(members) = summary.as_object_mut() {
        members.extend(more);
    }
    println!("{}", serde_json::json!({ "summary": summary }));
    code
}

/// Writes the JUnit XML of `records` to `path`: one suite, one test case per scenario and
/// seed, a failure with the verdicts and the reproduce command.
pub(super) fn write_junit(path: &Path, records: &[RunRecord]) -> std::io::Result<()> {
    let mut cases = String::new();
    let (mut failures, mut errors, mut total_s) = (0, 0, 0.0);
    for record in records {
        total_s += record.wall_s;
        let _ = write!(
            cases,
            "    <testcase classname=\"{}\" name=\"seed {}\" time=\"{:.3}\">",
            xml(&record.scenario),
            record.seed,
            record.wall_s
        );
        if let Some(error) = &record.error {
            errors += 1;
            let _ = write!(
                cases,
                "\n      <error message=\"{}\">{}</error>\n    ",
                xml(error),
                xml(&format!("reproduce: {}", record.reproduce))
            );
        } else if record.code != Exit::Ok {
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
                xml(&record.result),
                record.seed,
                xml(&record.result),
                xml(&text)
            );
        }
        cases.push_str("</testcase>\n");
    }
    let tests = records.len();
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
