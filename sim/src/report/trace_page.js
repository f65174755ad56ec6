// The trace page's script (sim/src/report/trace_page.rs writes the page and its data).
// It draws the timeline from the data and navigates it; every sentence it shows comes from
// the data, and all of it goes in as text, never as markup.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("trace-data").textContent);
  const svg = document.getElementById("timeline");
  const NS = "http://www.w3.org/2000/svg";
  const LABEL_W = 90, ROW_H = 26, AXIS_H = 24, MIN_SPAN = 10;
  const BAND = { offline: "#ddd", partitioned: "#f6ad55", held: "#faf089", down: "#feb2b2" };
  const MARK = {
    enqueued: "#3182ce", applied: "#38a169", conflict: "#805ad5", dead_letter: "#000",
    rejected: "#dd6b20", expired: "#dd6b20", blocked: "#dd6b20", decided: "#2c5282", crash: "#e53e3e",
  };
  const end = Math.max(data.end_ms, 1);
  let view = { from: 0, to: end };
  let selectedOp = null, cursor = null;

  function width() { return Math.max(svg.clientWidth || 0, 600); }
  function x(t) { return LABEL_W + (t - view.from) / (view.to - view.from) * (width() - LABEL_W - 10); }
  function timeAt(px) { return view.from + (px - LABEL_W) / (width() - LABEL_W - 10) * (view.to - view.from); }
  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const key in attrs) node.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function seconds(ms) {
    if (ms < 1000) return Math.round(ms) + " ms";
    return (ms / 1000).toFixed(3).replace(/0+$/, "").replace(/\.$/, "") + " s";
  }
  function tickStep(span) {
    const raw = span / 8, power = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (raw <= m * power) return m * power;
    return 10 * power;
  }

  function setView(from, to) {
    let span = Math.max(to - from, MIN_SPAN);
    span = Math.min(span, end);
    from = Math.min(Math.max(from, 0), end - span);
    view = { from: from, to: from + span };
    draw();
  }

  function draw() {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const w = width(), height = AXIS_H + data.rows.length * ROW_H + 4;
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", "0 0 " + w + " " + height);
    const step = tickStep(view.to - view.from);
    for (let t = Math.ceil(view.from / step) * step; t <= view.to; t += step) {
      el("line", { x1: x(t), x2: x(t), y1: AXIS_H - 4, y2: height, stroke: "#eee" }, svg);
      el("text", { x: x(t), y: AXIS_H - 8, "font-size": 11, "text-anchor": "middle", fill: "#555" }, svg).textContent = seconds(t);
    }
    const clip = el("clipPath", { id: "plot" }, el("defs", {}, svg));
    el("rect", { x: LABEL_W, y: 0, width: w - LABEL_W - 10, height: height }, clip);
    const plot = el("g", { "clip-path": "url(#plot)" }, svg);
    data.rows.forEach(function (row, i) {
      const y = AXIS_H + i * ROW_H;
      el("text", { x: 4, y: y + ROW_H / 2 + 4, "font-size": 12, "font-weight": row.name === "server" ? "bold" : "normal" }, svg).textContent = row.name;
      el("line", { x1: LABEL_W, x2: w - 10, y1: y + ROW_H, y2: y + ROW_H, stroke: "#ddd" }, svg);
      for (const band of row.bands) {
        if (band.to < view.from || band.from > view.to) continue;
        const r = el("rect", { x: x(band.from), y: y + 3, width: Math.max(x(band.to) - x(band.from), 1), height: ROW_H - 6, fill: BAND[band.kind], class: "band" }, plot);
        el("title", {}, r).textContent = band.kind + " " + seconds(band.from) + " – " + seconds(band.to);
      }
      for (const mark of row.marks) {
        if (mark.t < view.from || mark.t > view.to) continue;
        const cy = y + ROW_H / 2, cx = x(mark.t);
        let shape;
        if (mark.kind === "crash") {
          shape = el("rect", { x: cx - 1.5, y: y + 1, width: 3, height: ROW_H - 2, fill: MARK.crash }, plot);
        } else if (mark.kind === "decided") {
          shape = el("rect", { x: cx - 4, y: cy - 4, width: 8, height: 8, fill: MARK.decided, transform: "rotate(45 " + cx + " " + cy + ")" }, plot);
        } else {
          shape = el("circle", { cx: cx, cy: cy, r: 4, fill: MARK[mark.kind] || "#999" }, plot);
        }
        if (mark.op) {
          shape.setAttribute("class", "mark" + (mark.op === selectedOp ? " sel" : ""));
          shape.setAttribute("data-op", mark.op);
          shape.addEventListener("click", function (event) { event.stopPropagation(); showOp(mark.op); });
        }
        el("title", {}, shape).textContent = "t=" + mark.t + " ms  " + mark.label;
      }
    });
    if (data.healed_at_ms >= view.from && data.healed_at_ms <= view.to) {
      el("line", { x1: x(data.healed_at_ms), x2: x(data.healed_at_ms), y1: AXIS_H, y2: height, stroke: "#2f855a", "stroke-dasharray": "4 3" }, plot);
    }
    if (cursor !== null && cursor >= view.from && cursor <= view.to) {
      el("line", { id: "cursor", x1: x(cursor), x2: x(cursor), y1: AXIS_H, y2: height, stroke: "#b00", "stroke-width": 2 }, plot);
    }
    document.getElementById("window").textContent = seconds(view.from) + " – " + seconds(view.to) + " of " + seconds(end);
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function add(parent, tag, text) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    parent.appendChild(node);
    return node;
  }

  function showOp(op) {
    selectedOp = op;
    const pane = document.getElementById("story");
    clear(pane);
    add(pane, "h2", "Op " + op);
    const story = data.stories[op];
    if (!story) {
      add(pane, "p", "No op " + op + " in this run.");
    } else {
      const list = add(pane, "ol");
      for (const sentence of story) add(list, "li", sentence);
    }
    location.hash = "op=" + encodeURIComponent(op);
    draw();
  }

  function showViolation(i) {
    const violation = data.violations[i];
    if (!violation) {
      // A link to a violation this run does not have: say so, and show the whole run.
      const pane = document.getElementById("lines");
      clear(pane);
      add(pane, "p", "No violation " + i + " in this run (it has " + data.violations.length + ").");
      setView(0, end);
      return;
    }
    document.querySelectorAll("#violations li").forEach(function (li) {
      li.classList.toggle("sel", li.getAttribute("data-violation") === String(i));
    });
    const times = violation.lines.filter(function (l) { return l.quoted; }).map(function (l) { return l.t; }).concat([violation.t]);
    const lo = Math.min.apply(null, times), hi = Math.max.apply(null, times);
    const pad = Math.max((hi - lo) * 0.15, 1000);
    cursor = violation.t;
    const pane = document.getElementById("lines");
    clear(pane);
    add(pane, "h3", "Trace lines of " + violation.checker + " (quoted ones highlighted)");
    let previous = null;
    for (const line of violation.lines) {
      if (previous !== null && line.n > previous + 1) add(pane, "pre", "…").className = "gap";
      previous = line.n;
      const pre = add(pane, "pre", "line " + line.n + ": " + line.text);
      pre.setAttribute("data-line", line.n);
      if (line.quoted) pre.classList.add("quoted");
      if (line.ops.length > 0) {
        pre.classList.add("op");
        pre.title = "the story of " + line.ops.join(", ");
        pre.addEventListener("click", function () { showOp(line.ops[0]); });
      }
    }
    if (violation.ops.length > 0) showOp(violation.ops[0]);
    location.hash = "violation=" + i;
    setView(lo - pad, hi + pad);
  }

  document.querySelectorAll("#violations li").forEach(function (li) {
    li.addEventListener("click", function () { showViolation(Number(li.getAttribute("data-violation"))); });
  });
  function zoom(factor, at) {
    const t = at === undefined ? (view.from + view.to) / 2 : at;
    setView(t - (t - view.from) * factor, t + (view.to - t) * factor);
  }
  document.getElementById("zoom-in").addEventListener("click", function () { zoom(0.5); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoom(2); });
  document.getElementById("zoom-all").addEventListener("click", function () { setView(0, end); });
  svg.addEventListener("wheel", function (event) {
    event.preventDefault();
    const box = svg.getBoundingClientRect();
    zoom(event.deltaY < 0 ? 0.8 : 1.25, timeAt(event.clientX - box.left));
  }, { passive: false });
  let drag = null;
  svg.addEventListener("mousedown", function (event) { drag = { x: event.clientX, view: view }; svg.style.cursor = "grabbing"; });
  window.addEventListener("mouseup", function () { drag = null; svg.style.cursor = ""; });
  window.addEventListener("mousemove", function (event) {
    if (!drag) return;
    const perPx = (drag.view.to - drag.view.from) / (width() - LABEL_W - 10);
    const shift = (drag.x - event.clientX) * perPx;
    setView(drag.view.from + shift, drag.view.to + shift);
  });
  document.getElementById("op-search").addEventListener("change", function (event) {
    const op = event.target.value.trim();
    if (op) showOp(op);
  });
  window.addEventListener("resize", draw);

  const hash = decodeURIComponent(location.hash.slice(1));
  if (hash.startsWith("violation=")) showViolation(Number(hash.slice(10)));
  else if (hash.startsWith("op=")) showOp(hash.slice(3));
  else if (data.violations.length > 0) showViolation(0);
  else draw();
})();
