//! Every scenario file: the library passes, every negative scenario is caught by its named
//! checker, with the seed, the simulated time and the events involved.

use rockhound_sim::{runner, scenario};
use std::path::{Path, PathBuf};

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// Every violation of a run, as text.
fn violations(checked: &runner::Checked) -> Vec<String> {
    checked
        .verdicts()
        .iter()
        .flat_map(|v| v.violations.iter().map(|v| v.to_string()))
        .collect()
}

#[test]
fn every_negative_scenario_is_caught_by_its_named_checker() {
    let negatives = files("scenarios/negative");
    assert!(negatives.len() >= 11, "one negative scenario per checker");
    let mut caught = std::collections::BTreeSet::new();
    for path in negatives {
        let spec = scenario::load(&path).unwrap();
        let expected = spec
            .expect
            .violation
            .expect("a negative scenario names its violation");
        let checked = runner::run(&spec, 7, runner::wants_determinism(&spec)).unwrap();
        let verdict = checked
            .verdicts()
            .into_iter()
            .find(|v| v.checker == expected)
            .unwrap_or_else(|| panic!("{}: checker {expected} did not run", path.display()));
        assert!(
            !verdict.violations.is_empty(),
            "{}: {expected} did not fire; summary {:?}",
            path.display(),
            checked.outcome.summary
        );
        let violation = &verdict.violations[0];
        assert_eq!(violation.seed, 7);
        assert!(
            !violation.events.is_empty(),
            "{}: no events quoted",
            path.display()
        );
        assert!(violation.to_string().contains("seed 7, t="), "{violation}");
        assert!(checked.passed(&spec));
        // Without the planted bug the same scenario holds every checker: the bug, not the
        // scenario, is what the checker caught.
        let mut healthy = spec.clone();
        healthy.planted = Default::default();
        healthy.expect.violation = None;
        let checked = runner::run(&healthy, 7, true).unwrap();
        let violations = violations(&checked);
        assert!(
            checked.passed(&healthy),
            "{} without its bug: {violations:?}",
            path.display()
        );
        caught.insert(expected);
    }
    assert_eq!(
        caught.len(),
        rockhound_sim::checkers::Checker::ALL.len(),
        "{caught:?}"
    );
}

#[test]
fn every_library_scenario_holds_with_its_expectations() {
    let library = files("scenarios");
    assert!(library.len() >= 20, "the scenario library");
    for path in library {
        let spec = scenario::load(&path).unwrap();
        assert!(
            spec.expect.violation.is_none(),
            "{}: negative scenarios go in negative/",
            path.display()
        );
        assert!(
            !spec.description.is_empty(),
            "{}: say what it exercises",
            path.display()
        );
        if spec.slow {
            continue;
        }
        let checked = runner::run(&spec, spec.seed.unwrap_or(0), true).unwrap();
        let violations = violations(&checked);
        assert!(
            checked.passed(&spec),
            "{}: {violations:?}, unmet {:?}",
            path.display(),
            checked.outcome.unmet
        );
    }
}

/// One broken file per kind of mistake; the errors name the file, line and column.
#[test]
fn broken_scenario_files_get_errors_with_file_line_and_column() {
    const HEAD: &str = "[[users]]\nname = \"ann\"\ndevices = [\"phone\", \"tablet\"]\n";
    let cases: &[(&str, String)] = &[
        ("syntax", format!("{HEAD}[sim\ntick_ms = 10\n")),
        ("unknown_key", format!("{HEAD}[sim]\ntick_ms = 10\nticks = 5\n")),
        ("wrong_type", format!("{HEAD}[sim]\nsafety_ms = \"a minute\"\n")),
        ("unit_missing", format!("{HEAD}[sim]\nsafety = 60000\n")),
        ("unknown_server_store", format!("{HEAD}[sim]\nserver_store = \"postgres\"\n")),
        ("empty_server_store", format!("{HEAD}[sim]\nserver_store = \"\"\n")),
        ("unknown_step", format!("{HEAD}[[steps]]\nat_ms = 0\ndo = \"explode\"\ndevice = \"phone\"\n")),
        ("unknown_step_key", format!("{HEAD}[[steps]]\nat_ms = 0\ndo = \"offline\"\ndevice = \"phone\"\nfor_ms = 10\n")),
        ("unknown_device", format!("{HEAD}[[steps]]\nat_ms = 0\ndo = \"offline\"\ndevice = \"watch\"\n")),
        ("unknown_entity", format!("{HEAD}[[steps]]\nat_ms = 0\ndo = \"update\"\ndevice = \"phone\"\nentity_type = \"specimen\"\nid = \"geode\"\nfields = {{ name = \"x\" }}\n")),
        ("unknown_parent", format!("{HEAD}[[steps]]\nat_ms = 0\ndo = \"create\"\ndevice = \"phone\"\nentity_type = \"find_log\"\nid = \"f\"\nfields = {{ field_session_id = \"nowhere\" }}\n")),
        ("unknown_entity_type", format!("{HEAD}[[steps]]\nat_ms = 0\ndo = \"create\"\ndevice = \"phone\"\nentity_type = \"rock\"\nid = \"r\"\n")),
        ("restart_without_crash", format!("{HEAD}[[steps]]\nat_ms = 0\ndo = \"crash\"\ndevice = \"tablet\"\n\n[[steps]]\nat_ms = 10\ndo = \"restart\"\ndevice = \"phone\"\n")),
        ("step_after_safety", format!("{HEAD}[sim]\nsafety_ms = 1000\n\n[[steps]]\nat_ms = 5000\ndo = \"offline\"\ndevice = \"phone\"\n")),
        ("bad_rate", format!("{HEAD}[network]\nloss_rate = 1.5\n")),
        ("latency_inverted", format!("{HEAD}[network]\nlatency_ms_min = 80\nlatency_ms_max = 20\n")),
        ("unknown_checker", format!("{HEAD}[expect]\nchecker = [\"no_loss\"]\n")),
        ("unknown_checker_name", format!("{HEAD}[expect]\ncheckers = [\"no_lost\"]\n")),
        ("forge_same_user", format!("{HEAD}[[steps]]\nat_ms = 0\ndo = \"forge\"\ndevice = \"phone\"\nvictim_device = \"tablet\"\n")),
        ("bad_strategy", format!("{HEAD}[config.strategies]\nspecimen = \"coin_flip\"\n")),
        ("unknown_coverage_point", format!("{HEAD}[expect]\ncovered = [\"server.answer.teleported\"]\n")),
        ("crash_after_no_op", format!("{HEAD}[[steps]]\nat_ms = 0\ndo = \"crash_server_mid_batch\"\nafter_ops = 0\n")),
        ("unknown_probe", format!("{HEAD}[[steps]]\nat_ms = 0\ndo = \"hostile\"\ndevice = \"phone\"\nprobe = \"rm_rf\"\n")),
        ("room_at_max", format!("{HEAD}[[steps]]\nat_ms = 0\ndo = \"server_room\"\nentities = 18446744073709551615\n")),
        ("bad_config", format!("{HEAD}[config]\nbatch_size = 0\n")),
        ("duplicate_device", "[[users]]\nname = \"ann\"\ndevices = [\"phone\"]\n\n[[users]]\nname = \"bob\"\ndevices = [\"phone\"]\n".to_owned()),
        ("no_users", "description = \"nobody\"\n".to_owned()),
    ];
    let mut report = String::new();
    for (name, text) in cases {
        let path = PathBuf::from(format!("scenarios/{name}.toml"));
        let error = scenario::parse(&path, text).expect_err(name).to_string();
        assert!(
            error.starts_with(&format!("scenarios/{name}.toml:")),
            "{error}"
        );
        report.push_str(&format!("{error}\n"));
    }
    insta::assert_snapshot!(report);
}

/// The backoff checker forgives an early resend after a restart only when the retry time's
/// record was never stored. The same trace with the `store_failed` events taken out (as if
/// every record had reached the disk) must be a violation: a restarted device that forgot
/// a durable schedule would be caught.
#[test]
fn backoff_forgives_an_early_resend_only_when_the_schedule_was_not_stored() {
    use rockhound_engine::client::observe::Event;
    use rockhound_sim::trace::TraceEvent;
    let (spec, lines) = library_run("disk_full_during_retries.toml");
    let backoff = |lines: &[rockhound_sim::trace::TraceLine]| backoff_violations(&spec, lines);
    let lines = &lines;
    assert!(backoff(lines).is_empty(), "the real run holds");
    let as_if_stored: Vec<_> = lines
        .iter()
        .filter(|l| {
            !matches!(
                l.event,
                TraceEvent::Client {
                    event: Event::StoreFailed { .. }
                }
            )
        })
        .cloned()
        .collect();
    assert!(as_if_stored.len() < lines.len(), "the run lost a record");
    let violations = backoff(&as_if_stored);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0]
            .to_string()
            .contains("before the shortest wait for its failure"),
        "{violations:?}"
    );
}

/// A library scenario and the trace of its seed 0.
fn library_run(
    name: &str,
) -> (
    rockhound_sim::spec::RunSpec,
    Vec<rockhound_sim::trace::TraceLine>,
) {
    let spec = scenario::load(
        &files("scenarios")
            .into_iter()
            .find(|p| p.ends_with(name))
            .unwrap(),
    )
    .unwrap();
    let checked = runner::run(&spec, 0, false).unwrap();
    (spec, checked.outcome.trace.lines)
}

/// What the backoff checker says of `lines`.
fn backoff_violations(
    spec: &rockhound_sim::spec::RunSpec,
    lines: &[rockhound_sim::trace::TraceLine],
) -> Vec<rockhound_sim::checkers::Violation> {
    violations_of(spec, lines, rockhound_sim::checkers::Checker::Backoff)
}

/// What `checker` says of `lines`.
fn violations_of(
    spec: &rockhound_sim::spec::RunSpec,
    lines: &[rockhound_sim::trace::TraceLine],
    checker: rockhound_sim::checkers::Checker,
) -> Vec<rockhound_sim::checkers::Violation> {
    rockhound_sim::checkers::check(&rockhound_sim::checkers::Facts::new(lines), spec)
        .into_iter()
        .find(|v| v.checker == checker)
        .unwrap()
        .violations
}

/// A listing must show every conflict of its user that was open on the server the whole
/// time it ran: the same trace with one listing's result emptied is a violation naming the
/// conflict.
#[test]
fn conflict_visibility_catches_a_listing_that_leaves_out_an_open_conflict() {
    use rockhound_engine::client::observe::Event;
    use rockhound_sim::checkers::Checker;
    use rockhound_sim::trace::TraceEvent;
    let (spec, lines) = library_run("conflict_left_open.toml");
    let visibility = |lines: &[_]| violations_of(&spec, lines, Checker::ConflictVisibility);
    assert!(visibility(&lines).is_empty(), "the real run holds");
    let mut hidden = lines.clone();
    let listed = hidden
        .iter_mut()
        .find_map(|line| match &mut line.event {
            TraceEvent::Client {
                event: Event::ConflictsListed { open },
            } if !open.is_empty() => Some(open),
            _ => None,
        })
        .expect("a listing shows the open conflict");
    let conflict = listed.remove(0);
    let violations = visibility(&hidden);
    assert!(
        violations.iter().any(|v| v.to_string().contains(&format!(
            "not {conflict}, open on the server the whole time"
        ))),
        "{violations:?}"
    );
}

/// The backoff checker counts a dead-letter as a failure of its own: the same trace with
/// the failure before a dead-letter taken out (as if the coordinator had given up one
/// attempt early) must be a violation that says so.
#[test]
fn backoff_catches_a_dead_letter_one_failure_early() {
    use rockhound_engine::client::Status;
    use rockhound_engine::client::observe::Event;
    use rockhound_sim::trace::TraceEvent;
    let (spec, lines) = library_run("flaky_dead_letter_retry.toml");
    assert!(
        backoff_violations(&spec, &lines).is_empty(),
        "the real run holds"
    );
    let update = |line: &rockhound_sim::trace::TraceLine| match &line.event {
        TraceEvent::Client {
            event: Event::Op(update),
        } => Some(update.clone()),
        _ => None,
    };
    let dead = lines
        .iter()
        .position(|l| update(l).is_some_and(|u| u.status == Status::Error))
        .expect("the run dead-letters an op");
    let op_id = update(&lines[dead]).unwrap().op_id;
    assert_eq!(update(&lines[dead]).unwrap().attempts, 3);
    let last_failure = lines[..dead]
        .iter()
        .rposition(|l| update(l).is_some_and(|u| u.op_id == op_id && u.delay_ms.is_some()))
        .expect("it failed before");
    let mut early = lines.clone();
    early.remove(last_failure);
    let violations = backoff_violations(&spec, &early);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].to_string().contains(&format!(
            "{op_id} dead-lettered after 2 failed attempts; the limit is 3"
        )),
        "{violations:?}"
    );
}

/// Every count, duration and size a scenario sets has a limit; beyond it the file is
/// refused at the key's line, before anything is expanded (one line once took 15-22 GB).
#[test]
fn scenario_values_beyond_their_limits_are_refused_at_their_line() {
    const HEAD: &str = "[[users]]\nname = \"ann\"\ndevices = [\"phone\", \"tablet\"]\n";
    let cases: &[(&str, String)] = &[
        (
            "actions",
            format!("{HEAD}[workload]\nactions_per_device = 18446744073709551615\n"),
        ),
        (
            "trips",
            format!("{HEAD}[workload]\nfield_trips_per_device = 99999999\n"),
        ),
        (
            "trip_length",
            format!("{HEAD}[workload]\nfield_trip_ms_max = 18446744073709551615\n"),
        ),
        (
            "crashes",
            format!("{HEAD}[faults]\ndevice_crashes = 4000000000\n"),
        ),
        (
            "partitions",
            format!("{HEAD}[faults]\npartitions = 10001\n"),
        ),
        (
            "outage",
            format!("{HEAD}[faults]\noutage_ms_max = 18446744073709551615\n"),
        ),
        (
            "fault_skew",
            format!("{HEAD}[faults]\nskew_ms_max = 18446744073709551615\n"),
        ),
        ("fault_rate", format!("{HEAD}[faults]\nloss_rate = nan\n")),
        (
            "phases_wrap",
            format!("{HEAD}[sim]\nsafety_ms = 18446744073709551615\nliveness_ms = 2\n"),
        ),
        (
            "hosts",
            format!("{HEAD}[sim]\ndevices_per_host = 18446744073709551615\n"),
        ),
        (
            "latency",
            format!("{HEAD}[network]\nlatency_ms_max = 18446744073709551615\n"),
        ),
        ("epoch", format!("{HEAD}[sim]\nepoch_ms = 4102444000000\n")),
        (
            "torn",
            format!(
                "{HEAD}[[steps]]\nat_ms = 0\ndo = \"crash\"\ndevice = \"phone\"\ntorn_bytes = 18446744073709551615\n"
            ),
        ),
        (
            "skew_step",
            format!(
                "{HEAD}[[steps]]\nat_ms = 0\ndo = \"skew\"\ndevice = \"phone\"\noffset_ms = -9223372036854775808\n"
            ),
        ),
        (
            "disk",
            format!(
                "{HEAD}[[steps]]\nat_ms = 0\ndo = \"disk\"\ndevice = \"phone\"\ncapacity_bytes = 18446744073709551615\n"
            ),
        ),
        (
            "orphan_create",
            format!(
                "{HEAD}[[steps]]\nat_ms = 0\ndo = \"create\"\ndevice = \"phone\"\nentity_type = \"find_log\"\nid = \"f\"\n"
            ),
        ),
        (
            "empty_update",
            format!(
                "{HEAD}[[steps]]\nat_ms = 0\ndo = \"create\"\ndevice = \"phone\"\nentity_type = \"tag\"\nid = \"t\"\n\n[[steps]]\nat_ms = 1\ndo = \"update\"\ndevice = \"phone\"\nentity_type = \"tag\"\nid = \"t\"\nfields = {{}}\n"
            ),
        ),
        (
            "huge_number",
            format!(
                "{HEAD}[[steps]]\nat_ms = 0\ndo = \"create\"\ndevice = \"phone\"\nentity_type = \"tag\"\nid = \"t\"\nfields = {{ count = 9007199254740993 }}\n"
            ),
        ),
        (
            "bad_digest",
            format!("{HEAD}[expect]\ndigest = \"not-a-digest\"\n"),
        ),
        ("tick_max", format!("{HEAD}[sim]\ntick_ms = 10001\n")),
        (
            "overload_zero",
            format!("{HEAD}[[steps]]\nat_ms = 0\ndo = \"overload\"\nms = 0\n"),
        ),
        (
            "overload_huge",
            format!("{HEAD}[[steps]]\nat_ms = 0\ndo = \"overload\"\nms = 18446744073709551615\n"),
        ),
        (
            // A delete always goes at priority 0: `blocking` has no meaning there.
            "blocking_delete",
            format!(
                "{HEAD}[[steps]]\nat_ms = 0\ndo = \"delete\"\ndevice = \"phone\"\nentity_type = \"tag\"\nid = \"t\"\nblocking = true\n"
            ),
        ),
        (
            "reboot_clock",
            format!(
                "{HEAD}[[steps]]\nat_ms = 0\ndo = \"crash\"\ndevice = \"phone\"\n\n[[steps]]\nat_ms = 1\ndo = \"restart\"\ndevice = \"phone\"\nclock_offset_ms = -9223372036854775808\n"
            ),
        ),
    ];
    let mut report = String::new();
    for (name, text) in cases {
        let path = PathBuf::from(format!("scenarios/{name}.toml"));
        let error = scenario::parse(&path, text).expect_err(name).to_string();
        let line: usize = error.split(':').nth(1).unwrap().parse().unwrap();
        assert!(line > 3, "{name}: the error points past the users: {error}");
        report.push_str(&format!("{error}\n"));
    }
    insta::assert_snapshot!(report);
}
