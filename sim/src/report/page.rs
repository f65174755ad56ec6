//! Markdown and self-contained HTML pages for one run and for a suite. The Markdown links
//! its plots as SVG files written beside it; the HTML carries them inline, with its styles,
//! and loads nothing from anywhere.

use super::RunReport;
use super::svg::{self, escape};
use std::fmt::Write as _;

/// Where a report comes from. Printed on one line that starts with [`PROVENANCE`], the only
/// line of a page that may change without the simulation changing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provenance {
    /// `git rev-parse HEAD`, with `+dirty` for uncommitted changes, or `unknown`.
    pub commit: String,
    /// SHA-256 of `Cargo.lock`, or `unknown`.
    pub lock_digest: String,
}

/// How the provenance line of every page begins.
pub const PROVENANCE: &str = "Provenance: ";

impl Provenance {
    /// The provenance line, starting with [`PROVENANCE`].
    pub fn line(&self) -> String {
        format!(
            "{PROVENANCE}git commit {}, Cargo.lock sha256 {}",
            self.commit, self.lock_digest
        )
    }
}

/// The files of one run's report: `(file name, contents)`.
pub fn run_files(report: &RunReport, provenance: &Provenance) -> Vec<(String, String)> {
    let stem = &report.name;
    let plots = plots(report);
    let mut files: Vec<(String, String)> = plots
        .iter()
        .map(|(suffix, _, svg)| (format!("{stem}-{suffix}.svg"), svg.clone()))
        .collect();
    files.push((
        format!("{stem}.md"),
        run_markdown(report, provenance, &plots),
    ));
    files.push((format!("{stem}.html"), run_html(report, provenance, &plots)));
    files
}

/// `(file suffix, caption, svg)` of every plot of a run.
fn plots(report: &RunReport) -> Vec<(&'static str, &'static str, String)> {
    let mut plots = vec![
        (
            "timeline",
            "Per device: online/offline, partitions, holds, crashes, queue depth, conflicts and dead-letters",
            svg::timeline(report),
        ),
        (
            "latency",
            "Enqueue-to-applied latency, simulated time",
            svg::histogram(
                "Enqueue to applied",
                "simulated seconds",
                &report.latencies_ms,
            ),
        ),
    ];
    if !report.retries.is_empty() {
        plots.push((
            "retries",
            "Retry delays against the backoff envelope",
            svg::retries(report),
        ));
    }
    let s = &report.summary;
    let failed: Vec<(String, f64)> = [
        ("dead-lettered", s.dead_lettered),
        ("expired", s.expired),
        ("blocked", s.blocked),
        ("rejected", s.rejected),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(label, n)| (label.to_owned(), n as f64))
    .collect();
    if !failed.is_empty() {
        plots.push((
            "failed",
            "Ops dead-lettered, expired, blocked or rejected at some point of the run",
            svg::bars("Ops that failed", "ops", &failed),
        ));
    }
    if !report.conflicts.is_empty() {
        let rows: Vec<(String, f64)> = report
            .conflicts
            .iter()
            .map(|((strategy, decision), n)| (format!("{strategy}: {decision}"), *n as f64))
            .collect();
        plots.push((
            "conflicts",
            "Conflicts by strategy and decision",
            svg::bars("Conflicts by strategy", "conflicts", &rows),
        ));
    }
    plots
}

fn verdict_word(ran: bool, violations: usize) -> String {
    match (ran, violations) {
        (false, _) => "skipped".to_owned(),
        (true, 0) => "holds".to_owned(),
        (true, n) => format!("VIOLATED ({n})"),
    }
}

/// The numbers of a run as `(label, value)` rows.
fn counts(report: &RunReport) -> Vec<(&'static str, String)> {
    let s = &report.summary;
    let mut sorted = report.latencies_ms.clone();
    sorted.sort_unstable();
    let latency = |q: f64| -> String {
        if sorted.is_empty() {
            return "—".to_owned();
        }
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        format!("{} ms", sorted[index])
    };
    vec![
        ("devices", s.devices.to_string()),
        ("simulated time", format!("{} ms", s.simulated_ms)),
        ("ops enqueued", s.enqueued.to_string()),
        ("enqueues refused", s.refused.to_string()),
        ("ops applied", s.applied.to_string()),
        ("conflicts", s.conflicts.to_string()),
        ("rejected", s.rejected.to_string()),
        ("dead-lettered", s.dead_lettered.to_string()),
        ("expired", s.expired.to_string()),
        ("blocked", s.blocked.to_string()),
        ("retries", s.retries.to_string()),
        ("duplicate answers", s.duplicates.to_string()),
        ("batches sent", s.batches.to_string()),
        ("pulls", s.pulls.to_string()),
        ("device crashes", s.device_crashes.to_string()),
        ("network faults", s.network_faults.to_string()),
        ("latency median", latency(0.5)),
        ("latency p95", latency(0.95)),
        (
            "edits lost to the wrong winner",
            report.lost_edits.to_string(),
        ),
        (
            "convergence after healing",
            s.convergence_ms
                .map_or("never".to_owned(), |ms| format!("{ms} ms")),
        ),
    ]
}

fn run_markdown(
    report: &RunReport,
    provenance: &Provenance,
    plots: &[(&str, &str, String)],
) -> String {
    let trace_page = super::trace_page::file_name(report);
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", report.name);
    if !report.description.is_empty() {
        let _ = writeln!(md, "{}\n", report.description);
    }
    let _ = writeln!(
        md,
        "- result: **{}**\n- seed: {}\n- trace digest: `{}`\n- reproduce: `{}`\n- interactive trace: [{}]({})\n\n{}\n",
        report.result(),
        report.seed,
        report.digest,
        report.reproduce,
        trace_page,
        trace_page,
        provenance.line()
    );
    md.push_str("## Checkers\n\n| checker | verdict |\n|---|---|\n");
    for (checker, ran, violations) in &report.verdicts {
        let _ = writeln!(md, "| {checker} | {} |", verdict_word(*ran, *violations));
    }
    for unmet in &report.unmet {
        let _ = writeln!(md, "\nUnmet expectation: {unmet}");
    }
    if !report.stories.is_empty() {
        md.push_str("\n## The ops the violations name\n\nAs `rockhound explain` tells them:\n");
        for (op, story) in &report.stories {
            let _ = writeln!(md, "\n`{op}`:\n");
            for sentence in story {
                let _ = writeln!(md, "- {sentence}");
            }
        }
    }
    md.push_str("\n## Counts\n\n| | |\n|---|---|\n");
    for (label, value) in counts(report) {
        let _ = writeln!(md, "| {label} | {value} |");
    }
    md.push_str("\n## Plots\n\n");
    for (suffix, caption, _) in plots {
        let _ = writeln!(md, "![{caption}]({}-{suffix}.svg)\n", report.name);
    }
    if !report.failed.is_empty() {
        md.push_str("## Ops that did not end applied\n\n| device | op | status | reason |\n|---|---|---|---|\n");
        for op in &report.failed {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                op.device,
                op.op_id,
                op.status.as_str(),
                op.reason.replace('|', "/")
            );
        }
    }
    md
}

const STYLE: &str = "body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}\
.bad{color:#b00;font-weight:bold}.ok{color:#2f855a}figure{margin:1.5em 0}figcaption{color:#555}\
code{background:#f3f3f3;padding:1px 4px}";

/// A complete HTML page: `body` with the report's inline styles.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n{body}</body></html>\n",
        escape(title)
    )
}

fn run_html(report: &RunReport, provenance: &Provenance, plots: &[(&str, &str, String)]) -> String {
    let trace_page = super::trace_page::file_name(report);
    let mut body = String::new();
    let _ = writeln!(body, "<h1>{}</h1>", escape(&report.name));
    if !report.description.is_empty() {
        let _ = writeln!(body, "<p>{}</p>", escape(&report.description));
    }
    let _ = writeln!(
        body,
        "<ul><li>result: <span class=\"{}\">{}</span></li><li>seed: {}</li><li>trace digest: <code>{}</code></li><li>reproduce: <code>{}</code></li><li>interactive trace: <a href=\"{}\">{}</a></li></ul>\n<p>{}</p>",
        if report.passed { "ok" } else { "bad" },
        report.result(),
        report.seed,
        report.digest,
        escape(&report.reproduce),
        escape(&trace_page),
        escape(&trace_page),
        escape(&provenance.line())
    );
    body.push_str("<h2>Checkers</h2><table><tr><th>checker</th><th>verdict</th></tr>\n");
    for (checker, ran, violations) in &report.verdicts {
        let class = if *violations > 0 {
            " class=\"bad\""
        } else {
            ""
        };
        let _ = writeln!(
            body,
            "<tr><td>{checker}</td><td{class}>{}</td></tr>",
            verdict_word(*ran, *violations)
        );
    }
    body.push_str("</table>\n");
    for unmet in &report.unmet {
        let _ = writeln!(
            body,
            "<p class=\"bad\">Unmet expectation: {}</p>",
            escape(unmet)
        );
    }
    if !report.stories.is_empty() {
        body.push_str("<h2>The ops the violations name</h2>\n<p>As <code>rockhound explain</code> tells them:</p>\n");
        for (op, story) in &report.stories {
            let _ = writeln!(body, "<p><code>{}</code>:</p><ul>", escape(op));
            for sentence in story {
                let _ = writeln!(body, "<li>{}</li>", escape(sentence));
            }
            body.push_str("</ul>\n");
        }
    }
    body.push_str("<h2>Counts</h2><table>\n");
    for (label, value) in counts(report) {
        let _ = writeln!(body, "<tr><td>{label}</td><td>{}</td></tr>", escape(&value));
    }
    body.push_str("</table>\n<h2>Plots</h2>\n");
    for (_, caption, svg) in plots {
        let _ = writeln!(
            body,
            "<figure>{svg}<figcaption>{}</figcaption></figure>",
            escape(caption)
        );
    }
    if !report.failed.is_empty() {
        body.push_str("<h2>Ops that did not end applied</h2><table><tr><th>device</th><th>op</th><th>status</th><th>reason</th></tr>\n");
        for op in &report.failed {
            let _ = writeln!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&op.device),
                escape(&op.op_id),
                op.status.as_str(),
                escape(&op.reason)
            );
        }
        body.push_str("</table>\n");
    }
    page(&report.name, &body)
}

/// The suite's index pages (`index.md`, `index.html`): one row per run, linking its page.
pub fn suite_files(reports: &[RunReport], provenance: &Provenance) -> Vec<(String, String)> {
    let held = reports.iter().filter(|r| r.passed).count();
    let mut md = format!(
        "# Scenario suite\n\n{held} of {} runs hold.\n\n{}\n\n| scenario | seed | result | applied | conflicts | dead-lettered | expired | convergence |\n|---|---|---|---|---|---|---|---|\n",
        reports.len(),
        provenance.line()
    );
    let mut html = format!(
        "<h1>Scenario suite</h1><p>{held} of {} runs hold.</p><p>{}</p><table><tr><th>scenario</th><th>seed</th><th>result</th><th>applied</th><th>conflicts</th><th>dead-lettered</th><th>expired</th><th>convergence</th></tr>\n",
        reports.len(),
        escape(&provenance.line())
    );
    for report in reports {
        let s = &report.summary;
        let convergence = s
            .convergence_ms
            .map_or("never".to_owned(), |ms| format!("{ms} ms"));
        let result = report.result();
        let _ = writeln!(
            md,
            "| [{0}]({0}.md) | {1} | {2} | {3} | {4} | {5} | {6} | {7} |",
            report.name,
            report.seed,
            result,
            s.applied,
            s.conflicts,
            s.dead_lettered,
            s.expired,
            convergence
        );
        let _ = writeln!(
            html,
            "<tr><td><a href=\"{0}.html\">{0}</a></td><td>{1}</td><td class=\"{8}\">{2}</td><td>{3}</td><td>{4}</td><td>{5}</td><td>{6}</td><td>{7}</td></tr>",
            escape(&report.name),
            report.seed,
            result,
            s.applied,
            s.conflicts,
            s.dead_lettered,
            s.expired,
            convergence,
            if report.passed { "ok" } else { "bad" }
        );
    }
    html.push_str("</table>\n");
    let converged: Vec<(String, f64)> = reports
        .iter()
        .filter_map(|r| {
            r.summary
                .convergence_ms
                .map(|ms| (r.name.clone(), ms as f64 / 1000.0))
        })
        .collect();
    let chart = svg::bars(
        "Convergence after healing",
        "simulated seconds (runs that never converged are left out)",
        &converged,
    );
    let _ = writeln!(
        md,
        "\n![Convergence after healing, per run](index-convergence.svg)"
    );
    let _ = writeln!(
        html,
        "<figure>{chart}<figcaption>Convergence after healing, per run</figcaption></figure>"
    );
    vec![
        ("index-convergence.svg".to_owned(), chart.clone()),
        ("index.md".to_owned(), md),
        ("index.html".to_owned(), page("Scenario suite", &html)),
    ]
}

/// Writes `files` into `dir`, creating it.
pub fn write_all(dir: &std::path::Path, files: &[(String, String)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents)?;
    }
    Ok(())
}
