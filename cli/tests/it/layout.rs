//! The code's shape, checked on every test run: no source file over 700 lines outside tests,
//! and no function over 80 lines unless a `// Long on purpose:` comment above it says why
//! (ARCHITECTURE.md, "Code shape").

use std::path::{Path, PathBuf};

const FILE_LINES_MAX: usize = 700;
const FN_LINES_MAX: usize = 80;
const REASON: &str = "// Long on purpose:";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every production source file: `src/` of each crate, without test modules' files.
fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "tests" {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for krate in ["engine", "io", "sim", "cli", "benches"] {
        walk(&repo().join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 50, "the walk found the sources");
    files
}

/// The lines before a file's first top-level `#[cfg(test)]` (its test module).
fn production_lines(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .collect()
}

/// Functions over the limit with no reason given: (name, first line, length).
fn long_functions(lines: &[&str]) -> Vec<(String, usize, usize)> {
    let mut long = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let signature = [
            "fn ",
            "pub fn ",
            "pub(super) fn ",
            "pub(crate) fn ",
            "async fn ",
        ]
        .iter()
        .find_map(|prefix| trimmed.strip_prefix(prefix));
        let Some(rest) = signature else { continue };
        if line.trim_end().ends_with(';') {
            continue;
        }
        let close = format!("{indent}}}");
        let Some(length) = lines[start..].iter().position(|l| *l == close) else {
            continue;
        };
        let reasoned = lines[..start]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with("//") || l.trim_start().starts_with("#["))
            .any(|l| l.trim_start().starts_with(REASON));
        if length + 1 > FN_LINES_MAX && !reasoned {
            let name = rest.split(['(', '<']).next().unwrap_or(rest).to_owned();
            long.push((name, start + 1, length + 1));
        }
    }
    long
}

#[test]
fn no_source_file_is_over_700_lines_and_no_function_over_80_without_a_reason() {
    let mut problems = Vec::new();
    for file in sources() {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines = production_lines(&text);
        let shown = file
            .strip_prefix(repo())
            .unwrap_or(&file)
            .display()
            .to_string();
        if lines.len() > FILE_LINES_MAX {
            problems.push(format!("{shown}: {} lines", lines.len()));
        }
        for (name, line, length) in long_functions(&lines) {
            problems.push(format!("{shown}:{line}: fn {name} is {length} lines"));
        }
    }
    assert!(
        problems.is_empty(),
        "cut these by role, or say why in a `{REASON}` comment:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_shape_check_finds_a_long_function_and_accepts_a_reason() {
    let body = "    let x = 1;\n".repeat(FN_LINES_MAX);
    let long = format!("/// Doc.\nfn big() {{\n{body}}}\n");
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(
        long_functions(&lines),
        vec![("big".to_owned(), 2, FN_LINES_MAX + 2)]
    );
    let reasoned = format!("{REASON} one table.\n{long}");
    let lines: Vec<&str> = reasoned.lines().collect();
    assert!(long_functions(&lines).is_empty());
    let text = format!("fn a() {{}}\n#[cfg(test)]\nmod tests {{\n{body}}}\n");
    assert_eq!(
        production_lines(&text).len(),
        1,
        "a test module is not counted"
    );
}

/// The independent oracle shares no code with what it checks: the reference model's code
/// (its comments aside) uses neither the engine's conflict functions, nor its replay, nor
/// its server, nor its strategy table (only the wire's types).
#[test]
fn the_reference_model_does_not_use_the_code_it_checks() {
    let text = std::fs::read_to_string(repo().join("sim/src/checkers/reference.rs")).unwrap();
    let model: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for forbidden in [
        "rockhound_engine::conflict",
        "server::replay",
        "replay_rows",
        "server::Server",
        "handle_batch",
        "decision_code",
        "default_strategy()",
        ".rules(",
    ] {
        assert!(
            !model.contains(forbidden),
            "sim/src/checkers/reference.rs uses {forbidden}"
        );
    }
}
