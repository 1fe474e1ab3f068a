"""The report page's inline CSS and JavaScript (kept in Python so they ship with the package)."""

CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#fafbfc; --good:#067647; --bad:#b42318; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; padding: 0 24px 48px; }
header { padding: 18px 0 8px; border-bottom: 1px solid var(--line); margin-bottom: 12px; }
h1 { font-size: 22px; margin: 0 0 8px; } h2 { font-size: 18px; margin: 28px 0 10px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
nav a { margin-right: 14px; color: #0a58ca; text-decoration: none; }
.note { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; background: #fff; margin: 6px 0 12px; }
th, td { border: 1px solid var(--line); padding: 3px 9px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f4f7; }
td.better { color: var(--good); font-weight: 600; } td.worse { color: var(--bad); font-weight: 600; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 14px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
.overview { display: grid; grid-template-columns: minmax(300px, 460px) 1fr; gap: 18px; align-items: start; }
svg.chart { width: 100%; height: auto; font-size: 10px; }
svg .chart-title { font-size: 12px; font-weight: 600; fill: var(--fg); }
svg .grid, svg .ring, svg .spoke { stroke: var(--line); stroke-width: 1; }
svg .axis { stroke: #98a2b3; } svg .tick, svg .na { fill: var(--muted); } svg .val { fill: var(--fg); font-size: 9px; }
svg .axis-title, svg .axis-label { fill: var(--fg); font-size: 11px; }
svg .line { stroke-width: 2; } svg .count { fill: var(--fg); font-size: 9px; }
svg .dot { fill-opacity: .8; stroke: #fff; stroke-width: .8; } svg .area { fill-opacity: .15; stroke-width: 2; }
.legend { margin: 6px 0; } .legend-item { margin-right: 16px; white-space: nowrap; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
.filters { display: flex; flex-wrap: wrap; gap: 10px 16px; align-items: center; background: #fff;
           border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; position: sticky; top: 0; z-index: 1; }
.filters label { color: var(--muted); } .filters select, .filters input { margin-left: 4px; }
#traj-list { list-style: none; padding: 0; margin: 8px 0; }
li.traj { background: #fff; border: 1px solid var(--line); border-left: 4px solid #98a2b3; border-radius: 6px; margin: 6px 0; }
li.traj.correct { border-left-color: var(--good); } li.traj.wrong { border-left-color: var(--bad); }
li.traj.partial { border-left-color: #dc6803; }
li.traj summary { cursor: pointer; padding: 6px 10px; display: flex; gap: 8px; align-items: baseline; flex-wrap: wrap; }
.qid, .ds { color: var(--muted); font-size: 12px; } .qtext { flex-basis: 100%; }
.badge { font-size: 11px; padding: 0 6px; border-radius: 9px; background: #f2f4f7; }
.badge.correct { background: #dcfae6; } .badge.wrong { background: #fee4e2; } .badge.partial { background: #fef0c7; }
.traj-body { padding: 4px 12px 10px; } .traj-body dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0 0 8px; }
.traj-body dt { color: var(--muted); }
.blk { margin: 4px 0; padding: 4px 8px; border-radius: 5px; }
.blk pre { margin: 0; white-space: pre-wrap; word-break: break-word; font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
.blk .tag { font-size: 11px; font-weight: 600; color: var(--muted); }
.blk-think { background: #f9fafb; color: #475467; } .blk-text { background: #fff; border: 1px dashed var(--line); }
.blk-search { background: #d1e9ff; } .blk-python { background: #ebe9fe; }
.blk-result { background: #ecfdf3; border-left: 3px solid #17b26a; } .blk-result.failed { background: #fef3f2; border-left-color: #f04438; }
.blk-fake-result { background: #fffaeb; border-left: 3px dashed #f79009; }
.blk-answer { background: #fef0c7; font-weight: 600; }
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var FIELDS = { run: "r", dataset: "d", correct: "o", calls: "t", change: "chg" };
  var controls = {};
  ["run", "dataset", "correct", "calls", "change", "text"].forEach(function (k) {
    controls[k] = document.getElementById("f-" + k);
  });
  var list = document.getElementById("traj-list");
  var count = document.getElementById("traj-count");
  var more = document.getElementById("traj-more");
  var limit = data.page_size;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function matches(t) {
    for (var k in FIELDS) {
      var c = controls[k];
      if (c && c.value !== "" && String(t[FIELDS[k]]) !== c.value) return false;
    }
    var q = controls.text.value.trim().toLowerCase();
    return !q || (t.q + " " + t.question).toLowerCase().indexOf(q) >= 0;
  }
  function body(t) {
    var div = el("div", "traj-body"), dl = el("dl");
    // the question itself is the summary line above (not repeated here)
    [["gold", t.gold.join(" | ")], ["prediction", t.pred || "(none)"],
     ["correctness", Math.round(1000 * t.c) / 10 + " (" + t.metric + ")"],
     ["finish", t.fin + (t.fmt ? ", format ok" : ", format invalid")]].forEach(function (row) {
      dl.append(el("dt", null, row[0]), el("dd", null, row[1]));
    });
    div.append(dl);
    t.blocks.forEach(function (b) {
      var failed = b[0] === "result" && b[2] !== "ok";
      var blk = el("div", "blk blk-" + b[0] + (failed ? " failed" : ""));
      blk.append(el("span", "tag", b[0] === "fake-result" ? "result written by the model" :
        b[0] + (b[2] && b[2] !== "ok" ? " (" + b[2] + ")" : "")), el("pre", null, b[1]));
      div.append(blk);
    });
    return div;
  }
  function item(t) {
    var run = data.runs[t.r], li = el("li", "traj " + t.o), det = el("details"), sum = el("summary");
    li.dataset.run = t.r; li.dataset.dataset = t.d; li.dataset.calls = t.t; li.dataset.outcome = t.o;
    var sw = el("span", "swatch"); sw.style.background = run.color;
    sum.append(sw, el("span", "run", run.label), el("span", "ds", t.d), el("span", "qid", t.q + (t.s ? " #" + t.s : "")),
      el("span", "badge " + t.o, t.o + " " + Math.round(100 * t.c)), el("span", "badge", t.t + " tool calls"),
      el("span", "badge", t.tok + " tokens"), el("span", "qtext", t.question));
    det.append(sum, body(t));
    li.append(det);
    return li;
  }
  function render() {
    var hits = data.trajectories.filter(matches);
    list.textContent = "";
    hits.slice(0, limit).forEach(function (t) { list.append(item(t)); });
    count.textContent = "showing " + Math.min(limit, hits.length) + " of " + hits.length +
      " matching (" + data.trajectories.length + " embedded)";
    more.hidden = hits.length <= limit;
  }
  function fromHash() {
    var params = new URLSearchParams(location.hash.slice(1));
    for (var k in controls) if (controls[k]) controls[k].value = params.get(k) || "";
    limit = data.page_size;
    render();
  }
  function toHash() {
    var params = new URLSearchParams();
    for (var k in controls) if (controls[k] && controls[k].value) params.set(k, controls[k].value);
    history.replaceState(null, "", "#" + params.toString());
    limit = data.page_size;
    render();
  }
  for (var k in controls) if (controls[k]) {
    controls[k].addEventListener("input", toHash);
    controls[k].addEventListener("change", toHash);
  }
  more.addEventListener("click", function () { limit += data.page_size; render(); });
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
"""
