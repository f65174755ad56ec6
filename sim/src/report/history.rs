//! The simulation's throughput over time: `benches/throughput-history.csv` (one row per
//! recorded commit, written by `cargo run --release -p rockhound-benches --bin throughput`)
//! drawn as the suite report's `throughput.md` and its two bar charts.

use super::svg;

/// The header the history file starts with.
pub const HEADER: &str = "date,commit,machine,speed_sim_s_per_wall_s,swarm_seeds_per_min_per_core";

/// One recorded commit.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The day it was measured (`YYYY-MM-DD`).
    pub date: String,
    /// The commit measured (short hash).
    pub commit: String,
    /// The machine, in a few words.
    pub machine: String,
    /// `speed_ten_devices_one_hour.toml`: simulated seconds per wall second, one run.
    pub speed: f64,
    /// The swarm on one thread: seeds per minute.
    pub swarm: f64,
}

/// Reads the history file's text; a malformed row is an error naming its line.
pub fn parse(text: &str) -> Result<Vec<Row>, String> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == HEADER => {}
        _ => return Err(format!("the first line must be the header {HEADER:?}")),
    }
    let mut rows = Vec::new();
    for (index, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let at = index + 1;
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let [date, commit, machine, speed, swarm] = cells.as_slice() else {
            return Err(format!("line {at}: five comma-separated cells expected"));
        };
        let number = |cell: &str, what: &str| {
            cell.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| format!("line {at}: {what} {cell:?} is not a number"))
        };
        rows.push(Row {
            date: (*date).to_owned(),
            commit: (*commit).to_owned(),
            machine: (*machine).to_owned(),
            speed: number(speed, "speed")?,
            swarm: number(swarm, "swarm")?,
        });
    }
    Ok(rows)
}

/// The row as the history file writes it.
pub fn line(row: &Row) -> String {
    format!(
        "{},{},{},{:.0},{:.0}",
        row.date,
        row.commit,
        row.machine.replace(',', " "),
        row.speed,
        row.swarm
    )
}

/// `throughput.md` and its charts, oldest commit first.
pub fn files(rows: &[Row]) -> Vec<(String, String)> {
    let label = |row: &Row| format!("{} {}", row.date, row.commit);
    let speed: Vec<(String, f64)> = rows.iter().map(|r| (label(r), r.speed)).collect();
    let swarm: Vec<(String, f64)> = rows.iter().map(|r| (label(r), r.swarm)).collect();
    let mut md = String::from(
        "# Simulation throughput, commit by commit\n\n\
         Recorded with `cargo run --release -p rockhound-benches --bin throughput` into \
         `benches/throughput-history.csv`. Wall-clock figures: they move with the machine \
         (compare rows of one machine); the instruction-count gate (`perf_gate`) is what \
         guards the code.\n\n\
         ![speed](throughput-speed.svg)\n\n![swarm](throughput-swarm.svg)\n\n\
         | date | commit | machine | simulated s per wall s (ten devices, one hour) | swarm seeds per minute per core |\n\
         |---|---|---|---|---|\n",
    );
    for row in rows {
        md.push_str(&format!(
            "| {} | `{}` | {} | {:.0} | {:.0} |\n",
            row.date, row.commit, row.machine, row.speed, row.swarm
        ));
    }
    vec![
        ("throughput.md".to_owned(), md),
        (
            "throughput-speed.svg".to_owned(),
            svg::bars(
                "speed_ten_devices_one_hour: simulated s per wall s",
                "simulated s per wall s",
                &speed,
            ),
        ),
        (
            "throughput-swarm.svg".to_owned(),
            svg::bars(
                "swarm: seeds per minute per core",
                "seeds per minute",
                &swarm,
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_reads_back_and_draws_one_bar_per_commit_and_a_bad_row_is_named() {
        let row = Row {
            date: "2026-12-02".into(),
            commit: "abc1234".into(),
            machine: "2 cores, Xeon".into(),
            speed: 321.4,
            swarm: 812.0,
        };
        let text = format!("{HEADER}\n{}\n", line(&row));
        let rows = parse(&text).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].machine, "2 cores  Xeon",
            "a comma in a cell is replaced"
        );
        assert_eq!(rows[0].speed, 321.0);
        let files = files(&rows);
        assert!(files[0].1.contains("| 2026-12-02 | `abc1234` |"));
        assert!(files[1].1.contains("2026-12-02 abc1234") && files[1].1.contains("321"));
        assert!(files[2].1.contains("812"));
        assert!(parse("date,commit\n").unwrap_err().contains("header"));
        let bad = format!("{HEADER}\n2026-12-02,abc,m,fast,1\n");
        assert_eq!(
            parse(&bad).unwrap_err(),
            "line 2: speed \"fast\" is not a number"
        );
        let short = format!("{HEADER}\n2026-12-02,abc\n");
        assert!(parse(&short).unwrap_err().starts_with("line 2:"));
    }
}
