//! The interactive trace page's data, read back out of the page: every op the timeline
//! marks has its story, a violation carries the lines it quotes, and text from the trace
//! (field values a user typed) cannot close the page's script. The page in a real browser
//! is tested in `cli/tests/it/browser.rs`.

use rockhound_sim::report::RunReport;
use rockhound_sim::report::page::Provenance;
use rockhound_sim::report::trace_page;
use rockhound_sim::{explain, runner, scenario};
use serde_json::Value;
use std::path::Path;

fn provenance() -> Provenance {
    Provenance {
        commit: "c".to_owned(),
        lock_digest: "l".to_owned(),
    }
}

/// The page of `file`'s run at `seed`, with its data parsed back.
fn page_of(file: &str, text: Option<&str>, seed: u64) -> (String, Value, runner::Checked) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    let spec = match text {
        Some(text) => scenario::parse(&path, text).unwrap(),
        None => scenario::load(&path).unwrap(),
    };
    let checked = runner::run(&spec, seed, false).unwrap();
    let report = RunReport::new(&spec, &checked);
    let (name, html) = trace_page::file(&report, &checked, &provenance());
    assert_eq!(name, format!("{}-trace.html", spec.name));
    let start = html.find("id=\"trace-data\">").expect("the data element") + 16;
    let end = start + html[start..].find("</script>").expect("the data ends");
    let data: Value = serde_json::from_str(&html[start..end]).expect("the data is JSON");
    (html, data, checked)
}

#[test]
fn every_marked_op_has_its_story_and_each_violation_its_quoted_lines() {
    let (html, data, checked) = page_of(
        "scenarios/negative/dependency_order_child_before_parent.toml",
        None,
        7,
    );
    assert!(
        !html.contains("src=") && !html.contains("href=\"http"),
        "loads nothing"
    );
    let rows = data["rows"].as_array().unwrap();
    assert_eq!(rows[0]["name"], "server");
    assert_eq!(rows[1]["name"], "phone");
    // The phone is offline from the start until it goes online at 2 s.
    assert_eq!(rows[1]["bands"][0]["kind"], "offline");
    assert_eq!(rows[1]["bands"][0]["to"], 2000);
    let values = explain::as_values(&checked.outcome.trace.lines);
    for row in rows {
        for mark in row["marks"].as_array().unwrap() {
            let Some(op) = mark["op"].as_str() else {
                continue;
            };
            let told: Vec<String> = data["stories"][op]
                .as_array()
                .unwrap_or_else(|| panic!("no story of {op}"))
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(told, explain::story(&values, op), "{op}");
        }
    }
    let violations = data["violations"].as_array().unwrap();
    let expected: Vec<_> = checked
        .verdicts()
        .into_iter()
        .flat_map(|v| v.violations.iter())
        .collect();
    assert_eq!(violations.len(), expected.len());
    assert!(!violations.is_empty(), "the planted bug is caught");
    for (shown, violation) in violations.iter().zip(expected) {
        assert_eq!(shown["checker"], violation.checker.to_string());
        assert_eq!(shown["t"], violation.t_ms);
        let quoted: Vec<u64> = shown["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["quoted"] == true)
            .map(|l| l["n"].as_u64().unwrap())
            .collect();
        let named: Vec<u64> = violation.events.iter().map(|(n, _)| *n as u64).collect();
        assert_eq!(quoted, named);
        assert!(
            shown["ops"]
                .as_array()
                .unwrap()
                .iter()
                .any(|op| op == "phone:1")
        );
    }
}

#[test]
fn a_field_value_that_looks_like_markup_stays_data() {
    // The negative scenario's parent, with markup typed into its site: the step's trace line
    // is context of the first quoted line, so the page carries it.
    let file = "scenarios/negative/dependency_order_child_before_parent.toml";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    let typed = "</script><img src=x onerror=alert(2)><!--";
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("site = \"Agate Ridge\"", &format!("site = \"{typed}\""));
    assert!(text.contains(typed));
    let (html, data, _) = page_of(file, Some(&text), 7);
    // One data element and one script: the user's text closed neither.
    assert_eq!(html.matches("</script>").count(), 2);
    assert!(!html.contains("<img") && !html.contains("<!--"));
    let carried = data["violations"][0]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|line| line["text"].as_str().unwrap().contains(typed));
    assert!(carried, "the value is shown as typed, as text");
}
