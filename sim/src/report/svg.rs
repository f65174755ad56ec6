//! The report's plots, as SVG text. Hand-written rather than drawn with a plotting crate:
//! five small chart kinds need only rectangles, lines, circles and text, and writing them
//! keeps the output byte-stable and free of font files (plotters measures text with a font
//! backend). Coordinates are printed with one decimal, so the same data gives the same
//! bytes.

use super::{DeviceTimeline, RunReport};
use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const LEFT: f64 = 110.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 46.0;

const OFFLINE: &str = "#b8bcc4";
const PARTITION: &str = "#f0a35e";
const HOLD: &str = "#f3d36b";
const DOWN: &str = "#d9534f";
const DEPTH: &str = "#2b6cb0";
const CONFLICT: &str = "#7b3fa0";
const DEAD: &str = "#111111";
const BAR: &str = "#4a7fb5";
const ENVELOPE: &str = "#c9dcf0";

/// Escapes text for SVG and HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Round tick values covering `[lo, hi]`, about `count` of them.
fn ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / count.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= count as f64)
        .unwrap_or(10.0 * magnitude);
    let mut values = Vec::new();
    let mut value = (lo / step).ceil() * step;
    while value <= hi + step * 1e-9 {
        values.push(value);
        value += step;
    }
    values
}

fn number(value: f64) -> String {
    if value.fract().abs() < 1e-9 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// A chart area with linear axes.
struct Frame {
    out: String,
    height: f64,
    /// Only whole-number ticks on the x axis (attempt counts).
    x_whole: bool,
    /// Only whole-number ticks on the y axis (counts).
    y_whole: bool,
    /// Left margin (room for the row labels).
    left: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn new(title: &str, height: f64, x: (f64, f64), y: (f64, f64)) -> Frame {
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(
            out,
            r#"<rect width="{WIDTH}" height="{height}" fill="white"/><text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"#,
            escape(title)
        );
        let x = (x.0, if x.1 > x.0 { x.1 } else { x.0 + 1.0 });
        let y = (y.0, if y.1 > y.0 { y.1 } else { y.0 + 1.0 });
        Frame {
            out,
            height,
            x_whole: false,
            y_whole: false,
            left: LEFT,
            x,
            y,
        }
    }

    fn sx(&self, x: f64) -> f64 {
        self.left + (x - self.x.0) / (self.x.1 - self.x.0) * (WIDTH - self.left - RIGHT)
    }

    fn sy(&self, y: f64) -> f64 {
        self.height - BOTTOM - (y - self.y.0) / (self.y.1 - self.y.0) * (self.height - TOP - BOTTOM)
    }

    /// Axes with ticks; `y_ticks` false for charts whose rows are labelled instead.
    fn axes(&mut self, x_label: &str, y_label: &str, y_ticks: bool) {
        let (x0, x1, y0, y1) = (self.left, WIDTH - RIGHT, self.height - BOTTOM, TOP);
        let _ = write!(
            self.out,
            r##"<path d="M{x0:.1} {y1:.1}V{y0:.1}H{x1:.1}" fill="none" stroke="#333"/>"##
        );
        let x_ticks = ticks(self.x.0, self.x.1, 8);
        for tick in x_ticks
            .into_iter()
            .filter(|t| !self.x_whole || t.fract() == 0.0)
        {
            let x = self.sx(tick);
            let _ = write!(
                self.out,
                r##"<path d="M{x:.1} {y0:.1}v5" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                y0 + 18.0,
                number(tick)
            );
        }
        if y_ticks {
            let y_ticks = ticks(self.y.0, self.y.1, 5);
            for tick in y_ticks
                .into_iter()
                .filter(|t| !self.y_whole || t.fract() == 0.0)
            {
                let y = self.sy(tick);
                let _ = write!(
                    self.out,
                    r##"<path d="M{x0:.1} {y:.1}h-5" stroke="#333"/><path d="M{x0:.1} {y:.1}H{x1:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                    x0 - 8.0,
                    y + 4.0,
                    number(tick)
                );
            }
        }
        let _ = write!(
            self.out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            self.height - 8.0,
            escape(x_label)
        );
        if !y_label.is_empty() {
            let _ = write!(
                self.out,
                r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
                (y0 + y1) / 2.0,
                escape(y_label)
            );
        }
    }

    /// A legend on its own line under the title.
    fn legend(&mut self, entries: &[(&str, &str)]) {
        let mut x = LEFT;
        for (colour, label) in entries {
            let _ = write!(
                self.out,
                r#"<rect x="{x:.1}" y="28" width="10" height="10" fill="{colour}"/><text x="{:.1}" y="37">{}</text>"#,
                x + 14.0,
                escape(label)
            );
            x += 20.0 + 7.0 * label.len() as f64;
        }
    }

    fn finish(mut self) -> String {
        self.out.push_str("</svg>");
        self.out
    }
}

/// One row per device over simulated time (seconds): offline, partitioned, held and crashed
/// bands, the queue depth as a line scaled to the deepest queue of the run, conflicts and
/// dead-letters marked, and the moment healing began.
// Long on purpose: draws one SVG top to bottom; pieces would only pass the canvas and scales
// around.
pub fn timeline(report: &RunReport) -> String {
    const ROW: f64 = 26.0;
    let devices: &[DeviceTimeline] = &report.devices;
    let height = TOP + BOTTOM + ROW * devices.len().max(1) as f64;
    let end_s = report.summary.simulated_ms as f64 / 1000.0;
    let mut frame = Frame::new(
        "Devices over simulated time",
        height,
        (0.0, end_s),
        (0.0, devices.len().max(1) as f64),
    );
    frame.legend(&[
        (OFFLINE, "offline"),
        (PARTITION, "partitioned"),
        (HOLD, "held"),
        (DOWN, "crashed"),
        (DEPTH, "queue depth"),
        (CONFLICT, "conflict"),
        (DEAD, "dead-letter"),
    ]);
    let deepest = devices
        .iter()
        .flat_map(|d| d.depth.iter().map(|(_, depth)| *depth))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    for (row, device) in devices.iter().enumerate() {
        let top = TOP + ROW * row as f64;
        let bottom = top + ROW - 4.0;
        let _ = write!(
            frame.out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            frame.left - 8.0,
            top + ROW / 2.0 + 2.0,
            escape(&device.name)
        );
        for (intervals, colour, inset) in [
            (&device.offline, OFFLINE, 0.0),
            (&device.partitions, PARTITION, 3.0),
            (&device.holds, HOLD, 6.0),
            (&device.down, DOWN, 9.0),
        ] {
            for (from, to) in intervals {
                let x0 = frame.sx(*from as f64 / 1000.0);
                let x1 = frame.sx(*to as f64 / 1000.0).max(x0 + 1.0);
                let _ = write!(
                    frame.out,
                    r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}" opacity="0.85"/>"#,
                    top + inset,
                    x1 - x0,
                    (ROW - 4.0 - 2.0 * inset).max(2.0)
                );
            }
        }
        // Queue depth as a step line inside the row.
        let mut path = String::new();
        let mut last_y = bottom;
        for (index, (t, depth)) in device.depth.iter().enumerate() {
            let x = frame.sx(*t as f64 / 1000.0);
            let y = bottom - (*depth as f64 / deepest) * (ROW - 6.0);
            if index == 0 {
                let _ = write!(path, "M{x:.1} {y:.1}");
            } else {
                let _ = write!(path, "H{x:.1}V{y:.1}");
            }
            last_y = y;
        }
        let _ = write!(path, "H{:.1}V{last_y:.1}", frame.sx(end_s));
        let _ = write!(
            frame.out,
            r#"<path d="{path}" fill="none" stroke="{DEPTH}" stroke-width="1.5"/>"#
        );
        for t in &device.conflicts {
            let _ = write!(
                frame.out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{CONFLICT}"/>"#,
                frame.sx(*t as f64 / 1000.0),
                top + 5.0
            );
        }
        for t in &device.dead_letters {
            let x = frame.sx(*t as f64 / 1000.0);
            let y = top + ROW - 9.0;
            let _ = write!(
                frame.out,
                r#"<path d="M{:.1} {:.1}l6 6m0 -6l-6 6" stroke="{DEAD}" stroke-width="1.5"/>"#,
                x - 3.0,
                y - 3.0
            );
        }
    }
    let healed = frame.sx(report.healed_at_ms as f64 / 1000.0);
    // The label goes on the side of the line with room for it.
    let (label_x, anchor) = if healed > WIDTH - RIGHT - 60.0 {
        (healed - 4.0, "end")
    } else {
        (healed + 4.0, "start")
    };
    let _ = write!(
        frame.out,
        r##"<path d="M{healed:.1} {TOP:.1}V{:.1}" stroke="#2f855a" stroke-dasharray="4 3"/><text x="{label_x:.1}" y="{:.1}" fill="#2f855a" text-anchor="{anchor}">healed</text>"##,
        height - BOTTOM,
        TOP - 2.0
    );
    frame.axes(
        &format!("simulated seconds (queue depth scaled to the deepest queue, {deepest:.0} ops)"),
        "",
        false,
    );
    frame.finish()
}

/// A histogram of `values` (simulated ms, shown in seconds) in up to 20 bins.
pub fn histogram(title: &str, x_label: &str, values: &[u64]) -> String {
    const BINS: usize = 20;
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64 / 1000.0;
    let width = max / BINS as f64;
    let mut counts = [0u64; BINS];
    for value in values {
        let bin = ((*value as f64 / 1000.0) / width) as usize;
        counts[bin.min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let mut frame = Frame::new(title, 260.0, (0.0, max), (0.0, top));
    frame.y_whole = true;
    frame.axes(x_label, "ops", true);
    for (bin, count) in counts.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        let x0 = frame.sx(bin as f64 * width);
        let x1 = frame.sx((bin + 1) as f64 * width);
        let y = frame.sy(*count as f64);
        let _ = write!(
            frame.out,
            r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{BAR}"/>"#,
            x0 + 1.0,
            (x1 - x0 - 2.0).max(1.0),
            frame.sy(0.0) - y
        );
    }
    frame.finish()
}

/// Every retry delay (dots) against the jitter envelope of its attempt (bands).
pub fn retries(report: &RunReport) -> String {
    let attempts = report
        .retries
        .iter()
        .map(|(a, _)| *a)
        .max()
        .unwrap_or(1)
        .max(1);
    let backoff = &report.config.backoff;
    let highest = (1..=attempts)
        .map(|a| *backoff.envelope_ms(a).end())
        .chain(report.retries.iter().map(|(_, d)| *d))
        .max()
        .unwrap_or(1) as f64
        / 1000.0;
    let mut frame = Frame::new(
        "Retry delays against the backoff envelope",
        280.0,
        (0.5, attempts as f64 + 0.5),
        (0.0, highest * 1.05),
    );
    frame.x_whole = true;
    frame.legend(&[(ENVELOPE, "allowed (base ± jitter)"), (BAR, "retry")]);
    frame.axes("failed attempts so far", "delay (s)", true);
    for attempt in 1..=attempts {
        let range = backoff.envelope_ms(attempt);
        let x0 = frame.sx(attempt as f64 - 0.35);
        let x1 = frame.sx(attempt as f64 + 0.35);
        let y_low = frame.sy(*range.start() as f64 / 1000.0);
        let y_high = frame.sy(*range.end() as f64 / 1000.0);
        let _ = write!(
            frame.out,
            r#"<rect x="{x0:.1}" y="{y_high:.1}" width="{:.1}" height="{:.1}" fill="{ENVELOPE}"/>"#,
            x1 - x0,
            (y_low - y_high).max(1.0)
        );
    }
    for (index, (attempt, delay)) in report.retries.iter().enumerate() {
        // Spread the dots of one attempt across its band, in order, so they stay visible.
        let spread = (index % 13) as f64 / 13.0 * 0.5 - 0.25;
        let _ = write!(
            frame.out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{BAR}" opacity="0.8"/>"#,
            frame.sx(*attempt as f64 + spread),
            frame.sy(*delay as f64 / 1000.0)
        );
    }
    frame.finish()
}

/// Horizontal bars, one per `(label, value)`.
pub fn bars(title: &str, x_label: &str, rows: &[(String, f64)]) -> String {
    const ROW: f64 = 24.0;
    let height = TOP + BOTTOM + ROW * rows.len().max(1) as f64;
    let top = rows.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1.0);
    let mut frame = Frame::new(title, height, (0.0, top), (0.0, rows.len().max(1) as f64));
    let longest = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    frame.left = (longest as f64 * 7.0 + 16.0).clamp(LEFT, WIDTH / 2.0);
    frame.x_whole = rows.iter().all(|(_, v)| v.fract() == 0.0);
    frame.axes(x_label, "", false);
    for (row, (label, value)) in rows.iter().enumerate() {
        let y = TOP + ROW * row as f64;
        let x1 = frame.sx(*value);
        let _ = write!(
            frame.out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{BAR}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            frame.left - 8.0,
            y + ROW / 2.0 + 4.0,
            escape(label),
            frame.left,
            y + 3.0,
            (x1 - frame.left).max(0.0),
            ROW - 6.0,
            x1 + 4.0,
            y + ROW / 2.0 + 4.0,
            number(*value)
        );
    }
    frame.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(
            ticks(0.0, 360.0, 8),
            vec![0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0]
        );
        assert_eq!(ticks(0.5, 3.5, 8), vec![0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]);
    }

    #[test]
    fn text_is_escaped() {
        let svg = bars("a <b> & \"c\"", "x", &[("<script>".to_owned(), 2.0)]);
        assert!(!svg.contains("<script>") && !svg.contains("<b>"));
        assert!(svg.contains("&lt;script&gt;") && svg.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
    }
}
