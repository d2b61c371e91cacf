"""The page of `audit/report.py`: inline CSS and script, no URL of any kind.

Placeholders: {{TITLE}}, {{SUMMARY}} (HTML), {{COUNT}} and {{DATA}} (JSON with <, > and &
escaped). The script renders one page of requests at a time from the JSON, builds every node
with textContent (token text is never parsed as HTML), and fills the hover box (#tip, and the
token's title) when the pointer enters a token.
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:12px 20px}
header h1{font-size:17px;margin:0}
main{padding:14px 20px}
.facts{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:12px}
.fact{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 14px}
.fact b{display:block;font-size:20px}.fact span{color:#5b6475;font-size:12px}
.tables{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
table{border-collapse:collapse;background:#fff;border:1px solid #dde1e7;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #eef0f3;text-align:left}
th{background:#eef0f3}
#bar{display:flex;gap:10px;align-items:center;margin:16px 0 10px;flex-wrap:wrap}
#bar button{padding:3px 10px}
.req{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:0 0 10px;padding:8px 12px}
.req h2{font-size:13px;margin:0 0 6px;font-weight:600}
.req h2 .meta{color:#5b6475;font-weight:400;margin-left:8px}
.badge{display:inline-block;border-radius:3px;padding:0 6px;margin-left:6px;font-size:12px}
.badge.block{background:#c62828;color:#fff}.badge.err{background:#6a1b9a;color:#fff}
.row{font:13px/1.9 ui-monospace,monospace;white-space:pre-wrap;word-break:break-word;
 border-left:3px solid #dde1e7;padding-left:8px;margin:4px 0}
.row.blocked{border-left-color:#c62828}
.lab{color:#5b6475;font:11px system-ui,sans-serif;margin-right:6px}
.prompt{color:#4a5365}.sep{color:#9aa3b2}
.tok{border-radius:2px;cursor:default}
.tok.trig{outline:1px solid #8a1c1c;font-weight:700}
.tok.sup{text-decoration:underline wavy #b26a00;background:#ffe9a8}
.tok.blk{background:#c62828!important;color:#fff}
.tok.stopped{color:#c62828;font-style:italic}
#tip{position:fixed;display:none;max-width:460px;background:#1d2330;color:#fff;padding:8px 10px;
 border-radius:5px;font:12px/1.45 ui-monospace,monospace;white-space:pre-wrap;z-index:9;
 pointer-events:none;box-shadow:0 2px 8px rgba(0,0,0,.3)}
.legend span{margin-right:10px}
</style></head>
<body>
<header><h1>{{TITLE}}</h1></header>
<main>
<section id="summary">{{SUMMARY}}</section>
<div id="bar">
 <span id="count" data-count="{{COUNT}}">{{COUNT}} requests</span>
 <label>show <select id="show"><option value="all">all</option>
  <option value="triggered">with triggers</option><option value="blocked">blocked</option>
 </select></label>
 <label>request <input id="find" size="24" placeholder="id contains"></label>
 <button id="prev" type="button">prev</button><span id="page"></span>
 <button id="next" type="button">next</button>
 <span class="legend"><span class="tok trig">trigger</span><span class="tok blk">block</span>
 <span class="tok sup">suppress</span></span>
</div>
<div id="requests"></div>
</main>
<div id="tip" role="tooltip"></div>
<script type="application/json" id="fg-data">{{DATA}}</script>
<script>
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("fg-data").textContent);
  var all = D.requests, shown = all, page = 0, size = D.page_size;
  all.forEach(function (req, q) { req.q = q; });
  var list = document.getElementById("requests"), tip = document.getElementById("tip");
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function fmt(x) { return (Math.round(x * 1000) / 1000).toString(); }
  function some(list, test) { return (list || []).some(test); }
  function isAction(name) { return function (t) { return t[1] === name; }; }
  function heat(req, row, i) {
    var best = 0, m = row.m[row.only ? row.only[i] : i] || [];
    m.forEach(function (t) { best = Math.max(best, t[3] > 0 ? t[2] / t[3] : 1); });
    if (row.sc && row.sc[i]) row.sc[i].forEach(function (s, j) {
      var th = req.tp[j].th;
      best = Math.max(best, th > 0 ? s / th : (s > th ? 1 : 0));
    });
    return Math.max(0, Math.min(best, 1.5)) / 1.5;
  }
  function feature(f) { return f[0] + (f[1] ? " " + f[1] : "") + " = " + fmt(f[2]); }
  function details(req, row, i) {
    var idx = row.only ? row.only[i] : i, out = [];
    var where = idx < row.p ? " (prompt)" : " (reply)";
    out.push("token " + idx + " " + JSON.stringify(row.t[i]) + where);
    (row.m[idx] || []).forEach(function (t) {
      out.push("TRIGGERED " + t[0] + " (" + t[1] + "): score " + fmt(t[2]) + " > " + fmt(t[3]));
      t[4].forEach(function (f) { out.push("  feature " + feature(f)); });
    });
    if (row.sc && row.sc[i]) {
      row.sc[i].forEach(function (s, j) {
        out.push(req.tp[j].n + ": score " + fmt(s) + " (threshold " + fmt(req.tp[j].th) + ")");
      });
      row.fa[i].forEach(function (a, j) {
        var f = req.tf[j];
        if (a !== 0) out.push("  " + f[0] + ":" + feature([f[1], f[2], a]));
      });
    }
    if (row.tk && row.tk[i]) {
      var top = row.tk[i].map(function (p) { return p[0] + "=" + fmt(p[1]); });
      out.push("top features: " + top.join(" "));
    }
    return out.join("\\n");
  }
  function renderRow(req, row, r) {
    var div = el("div", "row" + (row.b ? " blocked" : ""));
    var prompt = el("span", "prompt"), reply = el("span", "reply");
    div.appendChild(el("span", "lab", "row " + r));
    div.appendChild(prompt);
    if (!row.only) div.appendChild(el("span", "sep", " \\u25B8 "));
    div.appendChild(reply);
    row.t.forEach(function (tok, i) {
      var idx = row.only ? row.only[i] : i, m = row.m[idx] || [];
      var s = el("span", "tok", tok), h = heat(req, row, i);
      s.dataset.q = req.q; s.dataset.r = r; s.dataset.i = i;
      if (h > 0.02) s.style.background = "rgba(229,57,53," + (0.6 * h).toFixed(3) + ")";
      if (m.length) s.classList.add("trig");
      if (some(m, isAction("suppress"))) s.classList.add("sup");
      if (some(m, isAction("block"))) s.classList.add("blk");
      (idx < row.p ? prompt : reply).appendChild(s);
      if (row.only && i + 1 < row.t.length) reply.appendChild(document.createTextNode(" \\u2026 "));
    });
    if (row.b) div.appendChild(el("span", "tok stopped", "  [blocked by " + row.b + ": withheld]"));
    return div;
  }
  function triggered(row) { return Object.keys(row.m).length > 0; }
  function renderRequest(req) {
    var sec = el("section", "req"), h = el("h2", null, req.id), n = 0, blocked = [];
    sec.dataset.id = req.id;
    req.rows.forEach(function (row, r) {
      n += Object.keys(row.m).length;
      if (row.b) blocked.push(r);
    });
    var meta = req.time + "  " + req.rows.length + " row(s), " + n + " triggering token(s)";
    h.appendChild(el("span", "meta", meta));
    if (blocked.length) {
      h.appendChild(el("span", "badge block", "blocked: row " + blocked.join(", ")));
    }
    if (req.errors.length) h.appendChild(el("span", "badge err", "guard error"));
    sec.appendChild(h);
    req.rows.forEach(function (row, r) { sec.appendChild(renderRow(req, row, r)); });
    return sec;
  }
  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / size));
    page = Math.max(0, Math.min(page, pages - 1));
    var frag = document.createDocumentFragment();
    shown.slice(page * size, (page + 1) * size).forEach(function (req) {
      frag.appendChild(renderRequest(req));
    });
    list.replaceChildren(frag);
    var label = "page " + (page + 1) + " of " + pages + " (" + shown.length + " shown)";
    document.getElementById("page").textContent = label;
    document.getElementById("prev").disabled = page === 0;
    document.getElementById("next").disabled = page >= pages - 1;
  }
  function refilter() {
    var how = document.getElementById("show").value;
    var needle = document.getElementById("find").value;
    shown = all.filter(function (req) {
      if (needle && req.id.indexOf(needle) < 0) return false;
      if (how === "blocked") return req.rows.some(function (row) { return row.b; });
      if (how === "triggered") return req.rows.some(triggered);
      return true;
    });
    page = 0;
    render();
  }
  document.getElementById("prev").addEventListener("click", function () { page -= 1; render(); });
  document.getElementById("next").addEventListener("click", function () { page += 1; render(); });
  document.getElementById("show").addEventListener("change", refilter);
  document.getElementById("find").addEventListener("input", refilter);
  list.addEventListener("mouseover", function (e) {
    var t = e.target.closest ? e.target.closest(".tok") : null;
    if (!t || t.dataset.q === undefined) { tip.style.display = "none"; return; }
    var req = all[+t.dataset.q], text = details(req, req.rows[+t.dataset.r], +t.dataset.i);
    t.title = text;
    tip.textContent = text;
    var box = t.getBoundingClientRect();
    tip.style.left = Math.min(box.left, window.innerWidth - 470) + "px";
    tip.style.top = (box.bottom + 6) + "px";
    tip.style.display = "block";
  });
  list.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  render();
})();
</script>
</body></html>
"""
