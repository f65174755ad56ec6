//! The interactive trace page in a real browser: Debian's headless Chromium, driven through
//! ChromeDriver's WebDriver protocol (HTTP/1.1 on loopback, one connection per command). The page of a failing run
//! must load with no console error, show the story `rockhound explain` tells when an op's
//! mark is clicked, jump to a violation's trace lines, and zoom.
//!
//! Without Chromium and ChromeDriver the test says so and passes, unless
//! `ROCKHOUND_REQUIRE_BROWSER` is set (`.ci/run` installs both and sets it). The screenshot
//! of the page is written to `target/trace-page.png`.

use base64::Engine as _;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn program(var: &str, default: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()));
    path.exists().then_some(path)
}

/// ChromeDriver and a session of headless Chromium; both end when dropped.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Option<Browser> {
        let (Some(chromium), Some(chromedriver)) = (
            program("ROCKHOUND_CHROMIUM", "/usr/bin/chromium"),
            program("ROCKHOUND_CHROMEDRIVER", "/usr/bin/chromedriver"),
        ) else {
            assert!(
                std::env::var_os("ROCKHOUND_REQUIRE_BROWSER").is_none(),
                "ROCKHOUND_REQUIRE_BROWSER is set but /usr/bin/chromium or /usr/bin/chromedriver is missing (Debian packages chromium, chromium-driver)"
            );
            eprintln!(
                "skipped: no /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)"
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        // Up to 20 s for the driver to listen (counted in tries, not by a clock).
        let mut tries = 0;
        while browser.try_call("GET", "/status", None).is_err() {
            tries += 1;
            assert!(tries < 200, "chromedriver never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The flags Chromium needs as root on a closed network, headless.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let session = browser.call(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args},
                "goog:loggingPrefs": {"browser": "ALL"},
            }}})),
        );
        browser.session = session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        Some(browser)
    }

    /// One WebDriver command: its `value`, or the error the driver gave.
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .map_err(|e| e.to_string())?;
        // ChromeDriver may keep the connection open after its answer: read the head, then
        // exactly Content-Length bytes.
        let mut response = Vec::new();
        let mut chunk = [0u8; 65536];
        let (head, body) = loop {
            let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("{method} {path}: connection closed early"));
            }
            response.extend_from_slice(&chunk[..n]);
            let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&response[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .ok_or_else(|| format!("{method} {path}: no Content-Length: {head}"))?;
            if response.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&response[end + 4..end + 4 + length]);
                break (head, body.into_owned());
            }
        };
        let value: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if head.starts_with("HTTP/1.1 200") {
            Ok(value["value"].clone())
        } else {
            Err(format!("{method} {path}: {head}: {body}"))
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body).unwrap()
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        let found = self.session_call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
            .collect()
    }

    fn find(&self, css: &str) -> String {
        self.find_all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element {css}"))
    }

    fn text(&self, element: &str) -> String {
        self.session_call("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn attribute(&self, element: &str, name: &str) -> String {
        self.session_call("GET", &format!("/element/{element}/attribute/{name}"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn click(&self, element: &str) {
        self.session_call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    fn console_errors(&self) -> Vec<String> {
        let log = self.session_call("POST", "/se/log", Some(json!({"type": "browser"})));
        log.as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn rockhound(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rockhound"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

/// `text` with each run of white space as one space (what a page shows).
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The sentences of `rockhound explain`'s story of `op` (the `t=` lines under `op ID:`; the
/// run fails, so explain exits 1 after printing its violations first).
fn explained(scenario: &str, seed: &str, op: &str) -> Vec<String> {
    let out = rockhound(&["explain", scenario, "--seed", seed, "--op", op]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (_, story) = stdout
        .split_once(&format!("op {op}:\n"))
        .unwrap_or_else(|| panic!("no story of {op}: {stdout}"));
    story
        .lines()
        .map(str::trim)
        .take_while(|line| line.starts_with("t="))
        .map(words)
        .collect()
}

#[test]
fn the_trace_page_of_a_failing_run_loads_clean_tells_an_ops_story_on_click_and_jumps_to_a_violation()
 {
    let Some(browser) = Browser::start() else {
        return;
    };
    let scenario = "../scenarios/negative/dependency_order_child_before_parent.toml";
    let seed = "7";
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let run = rockhound(&["run", scenario, "--seed", seed, "--report", dir]);
    let page = Path::new(dir).join("dependency_order_child_before_parent-trace.html");
    assert!(page.exists(), "{run:?}");
    let quoted_lines: Vec<u64> = {
        let json = rockhound(&["run", scenario, "--seed", seed, "--format", "json"]);
        let first: Value = serde_json::from_str(
            String::from_utf8_lossy(&json.stdout)
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        let text = first["verdicts"].to_string();
        // Each violation quotes its lines as `line N: {json}`.
        text.split("line ")
            .skip(1)
            .filter_map(|rest| rest.split(':').next()?.trim().parse().ok())
            .collect()
    };
    assert!(
        !quoted_lines.is_empty(),
        "the run must fail: {quoted_lines:?}"
    );

    // Links to what the run does not have: the page says so and still draws the run.
    let open = |fragment: &str| {
        let url = format!("file://{}{fragment}", page.display());
        browser.session_call("POST", "/url", Some(json!({ "url": url })));
        browser.session_call("POST", "/refresh", Some(json!({})));
    };
    open("#violation=99");
    assert_eq!(
        browser.text(&browser.find("#lines p")),
        "No violation 99 in this run (it has 2)."
    );
    assert!(
        !browser.find_all("circle.mark").is_empty(),
        "the run is drawn"
    );
    open("#op=no-such-op");
    assert_eq!(browser.text(&browser.find("#story h2")), "Op no-such-op");
    assert_eq!(
        browser.text(&browser.find("#story p")),
        "No op no-such-op in this run."
    );
    assert!(
        !browser.find_all("circle.mark").is_empty(),
        "the run is drawn"
    );
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    open("");
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // A failing run opens on its first violation: the quoted lines, the cursor, the story.
    let shown: Vec<u64> = browser
        .find_all("#lines pre.quoted")
        .iter()
        .map(|pre| browser.attribute(pre, "data-line").parse().unwrap())
        .collect();
    assert!(!shown.is_empty(), "no quoted line shown");
    for line in &shown {
        assert!(
            quoted_lines.contains(line),
            "line {line} is not one the violation quotes: {quoted_lines:?}"
        );
    }
    assert_eq!(
        browser.find_all("#cursor").len(),
        1,
        "no cursor at the violation"
    );
    let window = browser.text(&browser.find("#window"));

    // Clicking an op's mark tells the story `rockhound explain` tells.
    browser.click(&browser.find("#zoom-all"));
    let whole = browser.text(&browser.find("#window"));
    assert_ne!(window, whole, "the violation zoomed in: {window} / {whole}");
    let marks = browser.find_all("circle.mark[data-op]");
    assert!(!marks.is_empty());
    let mark = &marks[marks.len() / 2];
    let op = browser.attribute(mark, "data-op");
    browser.click(mark);
    let heading = browser.text(&browser.find("#story h2"));
    assert_eq!(heading, format!("Op {op}"));
    let story: Vec<String> = browser
        .find_all("#story li")
        .iter()
        .map(|li| words(&browser.text(li)))
        .collect();
    assert_eq!(story, explained(scenario, seed, &op));
    assert!(
        !browser
            .find_all(&format!("circle.sel[data-op=\"{op}\"]"))
            .is_empty(),
        "the clicked op's marks are highlighted"
    );

    // Zooming in halves the window.
    browser.click(&browser.find("#zoom-in"));
    let zoomed = browser.text(&browser.find("#window"));
    assert_ne!(zoomed, whole);

    // Back to the violation, then the picture to look at.
    browser.click(&browser.find("#violations li"));
    assert_eq!(browser.find_all("#violations li.sel").len(), 1);
    let png = browser.session_call("GET", "/screenshot", None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/trace-page.png");
    std::fs::write(&target, png).unwrap();
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}
