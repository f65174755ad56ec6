//! Scenario files: TOML that deserializes into a [`RunSpec`] (reference:
//! `docs/scenarios.md`). Every error names the file, line and column: syntax errors, unknown
//! keys and wrong types from the TOML parser's spans; semantic errors (an unknown device, a
//! step after the safety phase) from the key the validator names.

use crate::spec::{RunSpec, SpecError};
use std::fmt;
use std::path::{Path, PathBuf};

/// The largest scenario file read, in bytes.
pub const SCENARIO_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A scenario file that cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl std::error::Error for ScenarioError {}

/// Reads and validates a scenario file. The scenario's name defaults to the file stem.
pub fn load(path: &Path) -> Result<RunSpec, ScenarioError> {
    let error = |message: String| ScenarioError {
        file: path.to_path_buf(),
        line: 1,
        column: 1,
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| error(format!("cannot read: {e}")))?;
    if bytes.len() > SCENARIO_BYTES_MAX {
        return Err(error(format!(
            "{} bytes, more than the limit of {SCENARIO_BYTES_MAX}",
            bytes.len()
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| error(format!("not UTF-8: {e}")))?;
    let mut spec = parse(path, &text)?;
    if spec.name.is_empty() {
        spec.name = path
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    }
    Ok(spec)
}

/// Parses and validates scenario text; `file` only labels errors.
pub fn parse(file: &Path, text: &str) -> Result<RunSpec, ScenarioError> {
    let spec: RunSpec = toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map_or((1, 1), |span| line_column(text, span.start));
        ScenarioError {
            file: file.to_path_buf(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })?;
    spec.validate().map_err(|e| located(file, text, &e))?;
    Ok(spec)
}

/// The scenario as TOML (for `export` and `shrink`); parsing it gives the same spec back.
pub fn to_toml(spec: &RunSpec) -> String {
    toml::to_string(spec).expect("run specs serialize to TOML")
}

fn located(file: &Path, text: &str, error: &SpecError) -> ScenarioError {
    let (line, column) = error
        .path
        .as_deref()
        .and_then(|path| locate(text, path))
        .unwrap_or((1, 1));
    ScenarioError {
        file: file.to_path_buf(),
        line,
        column,
        message: error.message.clone(),
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |n| before.len() - n - 1)
        + 1;
    (line, column)
}

/// Where a key path (`steps[3]`, `sim.tick_ms`, `users`) is written in the file.
fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    if let Some(rest) = path.strip_prefix("steps[") {
        let index: usize = rest.trim_end_matches(']').parse().ok()?;
        return lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with("[[steps]]"))
            .nth(index)
            .map(|(n, _)| (n + 1, 1));
    }
    let (section, key) = match path.split_once('.') {
        Some((section, key)) => (section, Some(key)),
        None => (path, None),
    };
    let header = lines.iter().position(|l| {
        let l = l.trim();
        l == format!("[{section}]") || l == format!("[[{section}]]")
    })?;
    let Some(key) = key else {
        return Some((header + 1, 1));
    };
    for (n, line) in lines.iter().enumerate().skip(header + 1) {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            break;
        }
        if trimmed.starts_with(key) && trimmed[key.len()..].trim_start().starts_with('=') {
            return Some((n + 1, line.len() - trimmed.len() + 1));
        }
    }
    Some((header + 1, 1))
}
