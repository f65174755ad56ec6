//! Design comparisons: one scenario run under several configurations on the same seeds,
//! side by side. A comparison file (`scenarios/compare/*.toml`) holds the base scenario
//! under `[base]`, the seeds, and `[[variants]]`, each a name and configuration overrides
//! laid over the base's `[config]`.

use super::RunReport;
use super::page::{Provenance, page};
use super::svg::{self, escape};
use crate::runner;
use crate::spec::{ConfigSpec, RunSpec};
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::Path;

/// A comparison file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComparisonSpec {
    /// The question the comparison answers.
    pub description: String,
    /// The seeds, inclusive: `"A..B"`.
    pub seeds: String,
    /// The scenario every variant runs.
    pub base: RunSpec,
    /// The configurations compared.
    pub variants: Vec<Variant>,
}

/// One configuration of a comparison.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Its label.
    pub name: String,
    /// Overrides of the base's `[config]`.
    #[serde(default)]
    pub config: ConfigSpec,
}

/// The averages of one variant over the seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantResult {
    /// The variant.
    pub name: String,
    /// Runs where every checker held.
    pub held: usize,
    /// Runs.
    pub runs: usize,
    /// `(metric, mean over the seeds)`, in [`METRICS`] order.
    pub means: Vec<(&'static str, f64)>,
    /// Runs that never converged.
    pub never_converged: usize,
}

/// The metrics compared, in order.
pub const METRICS: [&str; 9] = [
    "ops applied",
    "ops dead-lettered",
    "ops expired",
    "conflicts",
    "edits lost to the wrong winner",
    "batches sent (requests)",
    "pulls (requests)",
    "convergence after healing (ms)",
    "op latency, enqueue to settled, median (ms)",
];

fn metrics(report: &RunReport) -> [f64; 9] {
    let s = &report.summary;
    let mut latencies = report.latencies_ms.clone();
    latencies.sort_unstable();
    let median = latencies.get(latencies.len() / 2).copied().unwrap_or(0);
    [
        s.applied as f64,
        s.dead_lettered as f64,
        s.expired as f64,
        s.conflicts as f64,
        report.lost_edits as f64,
        s.batches as f64,
        s.pulls as f64,
        s.convergence_ms.unwrap_or(0) as f64,
        median as f64,
    ]
}

/// Reads and checks a comparison file.
pub fn load(path: &Path) -> Result<ComparisonSpec, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let spec: ComparisonSpec =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    if spec.variants.len() < 2 {
        return Err(format!(
            "{}: a comparison needs two variants or more",
            path.display()
        ));
    }
    for variant in &spec.variants {
        variant_spec(&spec.base, variant)
            .validate()
            .map_err(|e| format!("{}: variant {:?}: {e}", path.display(), variant.name))?;
    }
    Ok(spec)
}

/// The base scenario with the variant's configuration laid over its own.
pub fn variant_spec(base: &RunSpec, variant: &Variant) -> RunSpec {
    let mut spec = base.clone();
    let mut config = serde_json::to_value(&base.config).expect("a config serializes");
    let over = serde_json::to_value(&variant.config).expect("a config serializes");
    if let (Some(config), Some(over)) = (config.as_object_mut(), over.as_object()) {
        for (key, value) in over {
            match (key.as_str(), value) {
                (_, serde_json::Value::Null) => {}
                ("strategies", serde_json::Value::Object(strategies)) => {
                    let merged = config
                        .entry("strategies")
                        .or_insert_with(|| serde_json::json!({}));
                    if let Some(merged) = merged.as_object_mut() {
                        merged.extend(strategies.clone());
                    }
                }
                _ => {
                    config.insert(key.clone(), value.clone());
                }
            }
        }
    }
    spec.config = serde_json::from_value(config).expect("a merged config deserializes");
    spec.name = format!("{} ({})", base.name, variant.name);
    spec
}

/// Runs every variant on every seed (no determinism re-run) and averages.
pub fn run(spec: &ComparisonSpec, seeds: std::ops::RangeInclusive<u64>) -> Vec<VariantResult> {
    spec.variants
        .iter()
        .map(|variant| {
            let run_spec = variant_spec(&spec.base, variant);
            let mut sums = [0.0; METRICS.len()];
            let (mut held, mut runs, mut never) = (0, 0, 0);
            for seed in seeds.clone() {
                let Ok(checked) = runner::run(&run_spec, seed, false) else {
                    continue;
                };
                let report = RunReport::new(&run_spec, &checked);
                runs += 1;
                held += usize::from(report.passed);
                never += usize::from(report.summary.convergence_ms.is_none());
                for (sum, value) in sums.iter_mut().zip(metrics(&report)) {
                    *sum += value;
                }
            }
            VariantResult {
                name: variant.name.clone(),
                held,
                runs,
                means: METRICS
                    .iter()
                    .zip(sums)
                    .map(|(metric, sum)| (*metric, sum / runs.max(1) as f64))
                    .collect(),
                never_converged: never,
            }
        })
        .collect()
}

/// `(file name, contents)` of a comparison's report, named after `stem`.
// Long on purpose: writes one comparison's pages in order (table, plots, Markdown, HTML).
pub fn files(
    stem: &str,
    spec: &ComparisonSpec,
    results: &[VariantResult],
    provenance: &Provenance,
) -> Vec<(String, String)> {
    let mut md = format!(
        "# Comparison: {stem}\n\n{}\n\nScenario `{}`, seeds {}, every variant on every seed. Means over the seeds.\n\n{}\n\n| metric |",
        spec.description,
        spec.base.name,
        spec.seeds,
        provenance.line()
    );
    let mut html = format!(
        "<h1>Comparison: {}</h1><p>{}</p><p>Scenario <code>{}</code>, seeds {}, every variant on every seed. Means over the seeds.</p><p>{}</p><table><tr><th>metric</th>",
        escape(stem),
        escape(&spec.description),
        escape(&spec.base.name),
        escape(&spec.seeds),
        escape(&provenance.line())
    );
    for result in results {
        let _ = write!(md, " {} |", result.name);
        let _ = write!(html, "<th>{}</th>", escape(&result.name));
    }
    md.push_str("\n|---|");
    html.push_str("</tr>\n");
    for _ in results {
        md.push_str("---|");
    }
    md.push('\n');
    let mut rows = vec![(
        "runs where every checker held".to_owned(),
        results
            .iter()
            .map(|r| format!("{} of {}", r.held, r.runs))
            .collect::<Vec<_>>(),
    )];
    for (index, metric) in METRICS.iter().enumerate() {
        rows.push((
            (*metric).to_owned(),
            results
                .iter()
                .map(|r| format!("{:.1}", r.means[index].1))
                .collect(),
        ));
    }
    rows.push((
        "runs that never converged".to_owned(),
        results
            .iter()
            .map(|r| r.never_converged.to_string())
            .collect(),
    ));
    for (label, values) in &rows {
        let _ = writeln!(md, "| {label} | {} |", values.join(" | "));
        let _ = writeln!(
            html,
            "<tr><td>{}</td>{}</tr>",
            escape(label),
            values
                .iter()
                .map(|v| format!("<td>{}</td>", escape(v)))
                .collect::<String>()
        );
    }
    html.push_str("</table>\n");
    md.push('\n');
    let mut out = Vec::new();
    for (index, metric) in METRICS.iter().enumerate() {
        let bars: Vec<(String, f64)> = results
            .iter()
            .map(|r| (r.name.clone(), r.means[index].1))
            .collect();
        if bars.iter().all(|(_, v)| *v == 0.0) {
            continue;
        }
        let chart = svg::bars(metric, "mean over the seeds", &bars);
        let file = format!("{stem}-{index}.svg");
        let _ = writeln!(md, "![{metric}]({file})\n");
        let _ = writeln!(
            html,
            "<figure>{chart}<figcaption>{}</figcaption></figure>",
            escape(metric)
        );
        out.push((file, chart));
    }
    out.push((format!("{stem}.md"), md));
    out.push((
        format!("{stem}.html"),
        page(&format!("Comparison: {stem}"), &html),
    ));
    out
}
