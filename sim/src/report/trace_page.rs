//! The interactive trace page of one run (`NAME-trace.html`): a zoomable timeline of the
//! devices and the server (faults as bands, ops as marks), the story of any op a click
//! names (as `rockhound explain` tells it), and the violations, each of which jumps to its
//! moment and shows its trace lines. One self-contained file: its data, styles and script
//! are inline and it loads nothing, so it opens from a CI artifact as well as from disk.
//!
//! Everything in it is a function of the trace, like the rest of the report. The script
//! (`trace_page.js`) only draws and navigates; every sentence it shows was written here.

use super::page::Provenance;
use super::svg::escape;
use super::{DeviceTimeline, RunReport};
use crate::explain;
use crate::runner::Checked;
use crate::trace::{TraceEvent, TraceLine};
use rockhound_engine::client::Status;
use rockhound_engine::client::observe::Event;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// The script that draws the page from its data.
const SCRIPT: &str = include_str!("trace_page.js");

/// Lines of trace shown before and after each line a violation quotes.
const CONTEXT_LINES: usize = 2;

/// The most trace lines shown for one violation.
const LINES_MAX: usize = 60;

/// A fault over an interval: `offline`, `partitioned`, `held` or `down`.
#[derive(Debug, Serialize)]
struct Band {
    kind: &'static str,
    from: u64,
    to: u64,
}

/// Something that happened at one moment: an op's enqueue or change of status on its
/// device, the server's decision, a server crash.
#[derive(Debug, Serialize)]
struct Mark {
    t: u64,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<String>,
    label: String,
}

/// One lane of the timeline.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    bands: Vec<Band>,
    marks: Vec<Mark>,
}

/// A trace line as a violation shows it.
#[derive(Debug, Serialize)]
struct Line {
    n: usize,
    t: u64,
    text: String,
    /// Quoted by the violation (the others are context).
    quoted: bool,
    ops: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ViolationView {
    checker: String,
    t: u64,
    message: String,
    ops: Vec<String>,
    lines: Vec<Line>,
}

#[derive(Debug, Serialize)]
struct Data {
    end_ms: u64,
    healed_at_ms: u64,
    rows: Vec<Row>,
    stories: BTreeMap<String, Vec<String>>,
    violations: Vec<ViolationView>,
}

/// The file name of a run's trace page.
pub fn file_name(report: &RunReport) -> String {
    format!("{}-trace.html", report.name)
}

/// The trace page of the run `report` was read from: `(file name, html)`.
pub fn file(report: &RunReport, checked: &Checked, provenance: &Provenance) -> (String, String) {
    let lines = &checked.outcome.trace.lines;
    let values = explain::as_values(lines);
    let rows = rows(report, lines);
    let ops: BTreeSet<String> = rows
        .iter()
        .flat_map(|row| row.marks.iter().filter_map(|mark| mark.op.clone()))
        .collect();
    let stories = ops
        .into_iter()
        .map(|op| {
            let story = explain::story(&values, &op);
            (op, story)
        })
        .filter(|(_, story)| !story.is_empty())
        .collect();
    let data = Data {
        end_ms: report.summary.simulated_ms,
        healed_at_ms: report.healed_at_ms,
        rows,
        stories,
        violations: violations(checked, lines),
    };
    (file_name(report), html(report, provenance, &data))
}

fn bands(device: &DeviceTimeline) -> Vec<Band> {
    let lanes: [(&'static str, &Vec<(u64, u64)>); 4] = [
        ("offline", &device.offline),
        ("partitioned", &device.partitions),
        ("held", &device.holds),
        ("down", &device.down),
    ];
    lanes
        .into_iter()
        .flat_map(|(kind, intervals)| {
            intervals
                .iter()
                .map(move |&(from, to)| Band { kind, from, to })
        })
        .collect()
}

/// The server's lane first, then one lane per device (the report's order).
fn rows(report: &RunReport, lines: &[TraceLine]) -> Vec<Row> {
    let mut server = Row {
        name: "server".to_owned(),
        bands: Vec::new(),
        marks: Vec::new(),
    };
    let mut devices: BTreeMap<&str, Row> = report
        .devices
        .iter()
        .map(|device| {
            let row = Row {
                name: device.name.clone(),
                bands: bands(device),
                marks: Vec::new(),
            };
            (device.name.as_str(), row)
        })
        .collect();
    for line in lines {
        let t = line.t_ms;
        match &line.event {
            TraceEvent::Client { event } => {
                let Some(row) = devices.get_mut(line.host.as_str()) else {
                    continue;
                };
                let mark = match event {
                    Event::Enqueued { op_id, kind, .. } => Some(Mark {
                        t,
                        kind: "enqueued",
                        op: Some(op_id.to_string()),
                        label: format!("{op_id} enqueued ({})", kind.as_str()),
                    }),
                    Event::Op(update) => shown_status(update.status).map(|kind| Mark {
                        t,
                        kind,
                        op: Some(update.op_id.to_string()),
                        label: format!("{}: {}", update.op_id, update.status.as_str()),
                    }),
                    _ => None,
                };
                row.marks.extend(mark);
            }
            TraceEvent::Decided {
                user,
                op_id,
                status,
                ..
            } => server.marks.push(Mark {
                t,
                kind: "decided",
                op: Some(op_id.to_string()),
                label: format!("{op_id} of {user}: {}", status.as_str()),
            }),
            TraceEvent::ServerCrashed { .. } => server.marks.push(Mark {
                t,
                kind: "crash",
                op: None,
                label: "server crashed inside a batch".to_owned(),
            }),
            TraceEvent::Crashed { .. } if line.host == "server" => server.marks.push(Mark {
                t,
                kind: "crash",
                op: None,
                label: "server crashed".to_owned(),
            }),
            _ => {}
        }
    }
    std::iter::once(server)
        .chain(devices.into_values())
        .collect()
}

/// The statuses an op's lane marks (the others are steps on the way).
fn shown_status(status: Status) -> Option<&'static str> {
    match status {
        Status::Applied => Some("applied"),
        Status::Conflict => Some("conflict"),
        Status::Error => Some("dead_letter"),
        Status::Rejected => Some("rejected"),
        Status::Expired => Some("expired"),
        Status::Blocked => Some("blocked"),
        _ => None,
    }
}

fn violations(checked: &Checked, lines: &[TraceLine]) -> Vec<ViolationView> {
    let mut views = Vec::new();
    for verdict in checked.verdicts() {
        for violation in &verdict.violations {
            let quoted: BTreeMap<usize, &String> = violation
                .events
                .iter()
                .map(|(n, json)| (*n, json))
                .collect();
            let mut shown: BTreeSet<usize> = BTreeSet::new();
            for &n in quoted.keys() {
                let from = n.saturating_sub(CONTEXT_LINES);
                let to = (n + CONTEXT_LINES).min(lines.len().saturating_sub(1));
                shown.extend(from..=to);
            }
            let lines: Vec<Line> = shown
                .into_iter()
                .filter_map(|n| {
                    // A quoted line is shown as the checker quoted it (a determinism
                    // re-run's line may not be in this trace at all).
                    let text = match quoted.get(&n) {
                        Some(json) => (*json).clone(),
                        None => lines.get(n)?.to_json(),
                    };
                    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    Some(Line {
                        n,
                        t: value["t_ms"].as_u64().unwrap_or(violation.t_ms),
                        text,
                        quoted: quoted.contains_key(&n),
                        ops: explain::op_ids(&value),
                    })
                })
                .take(LINES_MAX)
                .collect();
            views.push(ViolationView {
                checker: violation.checker.to_string(),
                t: violation.t_ms,
                message: violation.message.clone(),
                ops: explain::ops_named_by(violation),
                lines,
            });
        }
    }
    views
}

/// JSON that is safe inside a `<script>` element: every `<` written as `\u003c` (it can only
/// be inside a string), so no `</script>` or `<!--` a user typed can end or hide the data.
fn script_json(data: &Data) -> String {
    serde_json::to_string(data)
        .expect("the page's data always serializes")
        .replace('<', "\\u003c")
}

const STYLE: &str = "body{font-family:sans-serif;margin:1em 2em;color:#222}\
h1{margin:.2em 0}header p{margin:.2em 0}code{background:#f3f3f3;padding:1px 4px}\
.bad{color:#b00;font-weight:bold}.ok{color:#2f855a}\
#controls{margin:.8em 0;display:flex;gap:.5em;align-items:center;flex-wrap:wrap}\
#controls button{font-size:15px;min-width:2.2em}#window{color:#555;font-size:13px}\
#timeline{width:100%;border:1px solid #ccc;cursor:grab;user-select:none;display:block}\
#timeline .mark{cursor:pointer}#timeline .sel{stroke:#000;stroke-width:2}\
.legend span{display:inline-block;margin-right:1em;font-size:13px}\
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}\
#panes{display:flex;gap:2em;align-items:flex-start}#panes>section{flex:1;min-width:0}\
#violations li{cursor:pointer;margin:.3em 0}#violations li.sel{background:#fde8e8}\
#story ol{padding-left:1.5em;font-family:monospace;font-size:13px}#story li{white-space:pre-wrap}\
#lines pre{margin:0;font-size:12px;white-space:pre-wrap;word-break:break-all;padding:2px 4px}\
#lines pre.quoted{background:#fff3cd;font-weight:bold}#lines pre.gap{color:#888}#lines pre.op{cursor:pointer;text-decoration:underline dotted}";

/// What each mark and band colour means.
const LEGEND: &str = "<p class=\"legend\">\
<span><i style=\"background:#ddd\"></i>offline</span>\
<span><i style=\"background:#f6ad55\"></i>partitioned</span>\
<span><i style=\"background:#faf089\"></i>held</span>\
<span><i style=\"background:#feb2b2\"></i>down</span>\
<span><i style=\"background:#3182ce;border-radius:6px\"></i>enqueued</span>\
<span><i style=\"background:#38a169;border-radius:6px\"></i>applied</span>\
<span><i style=\"background:#805ad5;border-radius:6px\"></i>conflict</span>\
<span><i style=\"background:#000;border-radius:6px\"></i>dead-lettered</span>\
<span><i style=\"background:#dd6b20;border-radius:6px\"></i>rejected, expired or blocked</span>\
<span><i style=\"background:#2c5282\"></i>server decision</span>\
<span><i style=\"background:#e53e3e\"></i>server crash</span>\
<span><i style=\"border-left:2px dashed #2f855a;width:0\"></i>healed (liveness phase)</span>\
<span><i style=\"background:#b00;width:2px\"></i>the chosen violation</span></p>";

fn html(report: &RunReport, provenance: &Provenance, data: &Data) -> String {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<header><h1>{} — trace</h1><p>result: <span class=\"{}\">{}</span> · seed {} · trace digest <code>{}</code></p><p>reproduce: <code>{}</code> · <a href=\"{}.html\">the run's report</a></p><p>{}</p></header>",
        escape(&report.name),
        if report.passed { "ok" } else { "bad" },
        escape(&report.result()),
        report.seed,
        escape(&report.digest),
        escape(&report.reproduce),
        escape(&report.name),
        escape(&provenance.line())
    );
    body.push_str(
        "<div id=\"controls\"><button id=\"zoom-in\" title=\"zoom in\">+</button><button id=\"zoom-out\" title=\"zoom out\">−</button><button id=\"zoom-all\">whole run</button><span id=\"window\"></span><label>op <input id=\"op-search\" placeholder=\"op id\" size=\"28\"></label></div>\n",
    );
    body.push_str(LEGEND);
    body.push_str("<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"timeline\"></svg>\n<p style=\"font-size:13px;color:#555\">Wheel to zoom around the pointer, drag to pan, click a mark for its op's story.</p>\n<div id=\"panes\"><section id=\"violations\"><h2>Violations</h2>");
    if data.violations.is_empty() {
        body.push_str("<p>None: every checker holds.</p>");
    } else {
        body.push_str("<ol>");
        for (i, violation) in data.violations.iter().enumerate() {
            let _ = write!(
                body,
                "<li data-violation=\"{i}\"><b>{}</b> at t={} ms: {}</li>",
                escape(&violation.checker),
                violation.t,
                escape(&violation.message)
            );
        }
        body.push_str("</ol>");
    }
    body.push_str("<div id=\"lines\"></div></section><section id=\"story\"><h2>Op</h2><p>Click a mark on the timeline, or a violation's line that names an op.</p></section></div>\n");
    let _ = write!(
        body,
        "<script type=\"application/json\" id=\"trace-data\">{}</script>\n<script>{SCRIPT}</script>\n",
        script_json(data)
    );
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} — trace</title><style>{STYLE}</style></head><body>\n{body}</body></html>\n",
        escape(&report.name)
    )
}
