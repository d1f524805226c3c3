--- sluice.admin.page_js: the status page's script (GET /ui/page.js), as a
-- string. It polls the admin API (/health, /status, /history,
-- /circuit-breaker-status, /limiters, /logs) and draws the page with DOM
-- calls only: every text shown (a collector's last error, a log line) goes
-- in as a text node or an attribute value, never as markup, and charts are
-- SVG elements built from numbers. No library, no build step; it runs in
-- any current browser, offline. sluice.admin.page serves it.
--
-- What the page exposes for tests: body[data-updates] counts the
-- completed refreshes; collector rows are tr[data-collector][data-status]
-- (class "failing" when failed or circuit_open); a breaker's timeline is
-- svg.timeline[data-breaker] with a line.transition[data-from][data-to]
-- per transition; a backfill job is progress.backfill[data-job] (value:
-- windows_done, max: windows_total); a limiter's chart is
-- svg.limiter-chart[data-limiter] with circle.throttle per sample with
-- 429s and rect.ban per banned sample.
return [==[
"use strict";
(function () {
  var SVG = "http://www.w3.org/2000/svg";
  var KEY = "sluice-admin-token";
  var params = new URLSearchParams(location.search);
  var REFRESH = Math.max(1, Number(params.get("refresh")) || 5) * 1000;
  var token = sessionStorage.getItem(KEY) || "";
  var updates = 0;
  var armed = null; // the live configuration's id while a rollback awaits its confirmation
  var busy = false;

  function $(id) { return document.getElementById(id); }

  // el(tag, attrs, children): attributes by setAttribute, children as nodes
  // or text nodes (never parsed as markup)
  function make(doc, ns, tag, attrs, kids) {
    var n = ns ? doc.createElementNS(ns, tag) : doc.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v !== undefined && v !== null && v !== false) n.setAttribute(k, String(v));
      });
    }
    (kids || []).forEach(function (c) {
      if (c === undefined || c === null || c === false) return;
      n.appendChild(typeof c === "object" ? c : doc.createTextNode(String(c)));
    });
    return n;
  }
  function el(tag, attrs, kids) { return make(document, null, tag, attrs, kids); }
  function sv(tag, attrs, kids) { return make(document, SVG, tag, attrs, kids); }
  function fill(node, kids) {
    node.replaceChildren.apply(node, kids.filter(function (k) { return k; }));
  }

  function headers(extra) {
    var h = Object.assign({ Accept: "application/json" }, extra || {});
    if (token) h.Authorization = "Bearer " + token;
    return h;
  }

  async function get(path) {
    try {
      var res = await fetch(path, { headers: headers(), cache: "no-store", credentials: "omit" });
      var body = null;
      try { body = await res.json(); } catch (e) { body = null; }
      return { status: res.status, body: body };
    } catch (e) {
      return { status: 0, body: null, error: String(e) };
    }
  }

  // --- formatting ----------------------------------------------------------
  function epoch(iso) { var t = Date.parse(iso); return isNaN(t) ? null : t / 1000; }
  function span(s) {
    s = Math.abs(s);
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 129600) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }
  function ago(iso) {
    var t = epoch(iso);
    if (t === null) return el("span", { class: "dim" }, ["never"]);
    return el("time", { datetime: iso, title: iso }, [span(Date.now() / 1000 - t) + " ago"]);
  }
  function until(iso) {
    var t = epoch(iso);
    if (t === null) return el("span", { class: "dim" }, ["\u2014"]);
    var d = t - Date.now() / 1000;
    return el("time", { datetime: iso, title: iso }, [d > 0 ? "in " + span(d) : "now"]);
  }
  function num(x, digits) {
    if (typeof x !== "number" || !isFinite(x)) return "\u2014";
    if (digits !== undefined) return x.toFixed(digits);
    if (x >= 1e6) return (x / 1e6).toFixed(2) + "M";
    if (x >= 1e4) return (x / 1e3).toFixed(1) + "k";
    return String(Math.round(x * 100) / 100);
  }
  function clock(t) { return new Date(t * 1000).toISOString().slice(11, 19); }
  function plural(n, what) { return n + " " + what + (n === 1 ? "" : "s"); }
  function sorted(obj) { return Object.keys(obj || {}).sort(); }

  function empty(node, cols, text) {
    fill(node, [el("tr", null, [el("td", { colspan: cols, class: "dim" }, [text])])]);
  }

  // --- sections ------------------------------------------------------------
  var BAD = { failed: true, circuit_open: true };

  function collectors(status, hist) {
    var body = $("collectors-body");
    var cs = status && status.collectors || {};
    var names = sorted(cs);
    if (!names.length) return empty(body, 7, status ? "no collectors" : "needs the admin token");
    var hc = hist && hist.collectors || {};
    fill(body, names.map(function (name) {
      var c = cs[name];
      var rate = c.total_requests > 0 ? 100 * c.failed_requests / c.total_requests : 0;
      var h = hc[name];
      var err = c.last_error || (c.status !== "healthy" && c.status_reason) || "";
      return el("tr", { "data-collector": name, "data-status": c.status,
        class: "st-" + c.status + (BAD[c.status] ? " failing" : "") }, [
        el("th", { scope: "row" }, [name]),
        el("td", null, [el("span", { class: "badge st-" + c.status }, [c.status.replace("_", " ")])]),
        el("td", null, [ago(c.last_success)]),
        el("td", { class: "num" }, [num(c.data_points_collected), h ? spark(h.rows, "rows") : null]),
        el("td", { class: "num" + (rate > 0 ? " warn" : "") }, [num(rate, 1) + " %"]),
        el("td", null, [c.enabled === false ? el("span", { class: "dim" }, ["disabled"]) : until(c.next_run)]),
        el("td", { class: "error-text" }, [err])
      ]);
    }));
  }

  // A small inline chart of a series (numbers, false where absent).
  function spark(values, what) {
    var w = 80, hgt = 18, n = values.length;
    if (n < 2) return null;
    var max = Math.max.apply(null, values.map(function (v) { return v || 0; })) || 1;
    var pts = values.map(function (v, i) {
      return (i * w / (n - 1)).toFixed(1) + "," + (hgt - 1 - (v || 0) * (hgt - 2) / max).toFixed(1);
    }).join(" ");
    return sv("svg", { class: "spark", viewBox: "0 0 " + w + " " + hgt, width: w, height: hgt,
      role: "img", "aria-label": what + " over the last hour" }, [sv("polyline", { points: pts })]);
  }

  var W = 600;
  function xOf(t, from, to) { return Math.max(0, Math.min(W, (t - from) * W / (to - from))); }

  function timeline(name, b, hist) {
    var to = hist.now, from = to - hist.span, H = 22;
    var first = hist.times.length ? hist.times[0] : to;
    var tr = b.transitions || [];
    var s = sv("svg", { class: "timeline", "data-breaker": name, viewBox: "0 0 " + W + " " + H,
      preserveAspectRatio: "none", role: "img", "aria-label": "state of breaker " + name + " over the last hour" });
    // known from the first sample (or the first transition) on
    var start = Math.max(from, Math.min(first, tr.length ? tr[0].at : first));
    var state = tr.length ? tr[0].from : b.state;
    var t0 = start;
    var segs = [];
    tr.forEach(function (x) { segs.push([t0, x.at, state]); t0 = x.at; state = x.to; });
    segs.push([t0, to, b.state || state]);
    segs.forEach(function (g) {
      var x0 = xOf(g[0], from, to), x1 = xOf(g[1], from, to);
      if (x1 <= x0) return;
      s.appendChild(sv("rect", { class: "seg st-" + g[2], x: x0, y: 4, width: Math.max(x1 - x0, 1), height: H - 8 },
        [sv("title", null, [g[2] + " from " + clock(g[0])])]));
    });
    tr.forEach(function (x) {
      var px = xOf(x.at, from, to);
      s.appendChild(sv("line", { class: "transition to-" + x.to, "data-from": x.from, "data-to": x.to, "data-at": x.at,
        x1: px, x2: px, y1: 0, y2: H },
        [sv("title", null, [clock(x.at) + " " + x.from + " \u2192 " + x.to + (x.reason ? ": " + x.reason : "")])]));
    });
    return s;
  }

  function breakers(live, hist) {
    var body = $("breakers-body");
    var hb = hist && hist.breakers || {};
    var names = sorted(Object.assign({}, live || {}, hb));
    if (!names.length) return empty(body, 4, "no breakers");
    fill(body, names.map(function (name) {
      var b = (live || {})[name] || {}, h = hb[name] || { transitions: [], state: b.state };
      var state = b.state || h.state || "unknown";
      return el("tr", { "data-breaker": name, class: "st-" + state }, [
        el("th", { scope: "row" }, [name]),
        el("td", null, [el("span", { class: "badge st-" + state }, [state])]),
        el("td", { class: "num" }, [num(b.failure_count)]),
        el("td", { class: "chart" }, [hist ? timeline(name, h, hist) : null,
          el("span", { class: "dim small" },
            [plural((h.transitions || []).length, "transition") + " in the last hour"])])
      ]);
    }));
  }

  function chart(name, l, hist) {
    var H = 80, to = hist.now, from = to - hist.span, times = hist.times;
    var keys = ["sent", "rate", "quota", "declared"];
    var max = 0;
    keys.forEach(function (k) {
      (l[k] || []).forEach(function (v) { if (typeof v === "number" && v > max) max = v; });
    });
    max = max > 0 ? max * 1.1 : 1;
    function y(v) { return (H - 2 - v * (H - 14) / max).toFixed(1); }
    var s = sv("svg", { class: "limiter-chart", "data-limiter": name, viewBox: "0 0 " + W + " " + H,
      preserveAspectRatio: "none", role: "img",
      "aria-label": "limiter " + name + ": rate against quota over the last hour" });
    (l.banned || []).forEach(function (b, i) {
      if (b !== true) return;
      var x0 = xOf(i > 0 ? times[i - 1] : times[i] - hist.interval, from, to), x1 = xOf(times[i], from, to);
      s.appendChild(sv("rect", { class: "ban", x: x0, y: 0, width: Math.max(x1 - x0, 2), height: H },
        [sv("title", null, ["banned at " + clock(times[i])])]));
    });
    keys.forEach(function (k) {
      var pts = [];
      (l[k] || []).forEach(function (v, i) {
        if (typeof v === "number" && (v > 0 || k === "sent")) pts.push(xOf(times[i], from, to).toFixed(1) + "," + y(v));
      });
      if (pts.length > 1) s.appendChild(sv("polyline", { class: "line " + k, points: pts.join(" ") }));
    });
    (l.throttled || []).forEach(function (n, i) {
      if (typeof n === "number" && n > 0) {
        s.appendChild(sv("circle", { class: "throttle", "data-count": n, cx: xOf(times[i], from, to), cy: 6, r: 4 },
          [sv("title", null, [n + " \u00d7 429 before " + clock(times[i])])]));
      }
    });
    s.appendChild(sv("text", { x: 4, y: 11, class: "axis" }, [num(max / 1.1) + " req/s"]));
    return s;
  }

  function last(list) {
    for (var i = (list || []).length - 1; i >= 0; i--) if (typeof list[i] === "number") return list[i];
    return undefined;
  }

  function limiters(live, hist) {
    var body = $("limiters-body");
    var hl = hist && hist.limiters || {};
    var names = sorted(Object.assign({}, live || {}, hl));
    if (!names.length) return empty(body, 4, "no limiters");
    fill(body, names.map(function (name) {
      var st = (live || {})[name] || {}, h = hl[name] || {};
      var quota = last(h.quota), declared = st.default_rate;
      return el("tr", { "data-limiter": name }, [
        el("th", { scope: "row" }, [name]),
        el("td", { class: "num" }, [num(st.current_global_rate) + " req/s"]),
        el("td", { class: "num" }, [quota > 0 ? num(quota) + " learned" : num(declared) + " declared"]),
        el("td", { class: "chart" }, [hist ? chart(name, h, hist) : null,
          el("span", { class: "dim small" }, [num(st.total_violations) + " \u00d7 429 in all; " +
            "sent (blue), allowed (green), learned quota (red), declared (grey)"])])
      ]);
    }));
  }

  function backfills(status) {
    var body = $("backfills-body");
    var jobs = status && status.backfills || {};
    var ids = sorted(jobs);
    $("backfills").hidden = !ids.length;
    if (!ids.length) return;
    fill(body, ids.map(function (id) {
      var j = jobs[id];
      return el("tr", { "data-job": id, class: "st-" + j.state }, [
        el("th", { scope: "row" }, [j.collector]),
        el("td", null, [j.state]),
        el("td", null, [el("progress", { class: "backfill", "data-job": id, value: j.windows_done || 0,
          max: j.windows_total || 1 }),
          " " + (j.windows_done || 0) + " / " + (j.windows_total || 0) + " windows" +
          (j.windows_failed ? ", " + j.windows_failed + " failed" : "")]),
        el("td", { class: "num" }, [num(j.rows)]),
        el("td", null, [j.state === "running" ? (typeof j.eta === "number" ? span(j.eta) : "?") : "\u2014"])
      ]);
    }));
  }

  function sinks(status, hist) {
    var body = $("sinks-body");
    var ss = status && status.sinks || {};
    var names = sorted(ss);
    $("sinks").hidden = !names.length;
    if (!names.length) return;
    var hs = hist && hist.sinks || {};
    fill(body, names.map(function (name) {
      var s = ss[name], h = hs[name];
      return el("tr", { "data-sink": name, class: s.full ? "failing" : "" }, [
        el("th", { scope: "row" }, [name]),
        el("td", null, [s.kind]),
        el("td", null, [el("progress", { class: "depth", value: s.depth || 0, max: s.max_rows || 1 }),
          " " + num(s.depth) + " / " + num(s.max_rows), h ? spark(h.depth, "depth") : null]),
        el("td", null, [s.breaker]),
        el("td", { class: "error-text" }, [s.last_error || ""])
      ]);
    }));
  }

  var SKIP = { ts: true, level: true, msg: true, traceback: true };
  function logs(entries) {
    var list = $("logs-list");
    if (!Array.isArray(entries)) {
      fill(list, [el("li", { class: "dim" }, ["needs the admin token"])]);
      return;
    }
    if (!entries.length) return fill(list, [el("li", { class: "dim" }, ["no warnings or errors"])]);
    fill(list, entries.slice().reverse().map(function (e) {
      // (a traceback is for the log file; long values are cut)
      var extra = Object.keys(e).filter(function (k) { return !SKIP[k]; }).map(function (k) {
        var v = e[k];
        v = typeof v === "object" ? JSON.stringify(v) : String(v);
        return k + "=" + (v.length > 300 ? v.slice(0, 300) + "\u2026" : v);
      });
      return el("li", { class: "log-" + e.level }, [el("time", null, [e.ts || ""]), " ",
        el("span", { class: "badge log-" + e.level }, [e.level]), " ", el("span", { class: "msg" }, [e.msg || ""]),
        extra.length ? el("span", { class: "fields" }, [" " + extra.join(" ")]) : null]);
    }));
  }

  function summary(health, status) {
    var hb = health && health.body || {};
    var st = hb.status || "unreachable";
    var cfg = status && status.configuration;
    fill($("summary"), [
      el("span", { class: "badge st-" + st, id: "health" }, [st]),
      el("span", null, [(status && status.service || hb.service || "sluice") + " " + (hb.version || "")]),
      el("span", { class: "dim" }, ["up " + (typeof hb.uptime_seconds === "number" ? span(hb.uptime_seconds) : "?")]),
      (hb.reasons || []).length ? el("span", { class: "warn" }, [hb.reasons.join("; ")]) : null
    ]);
    var c = $("config");
    if (!cfg) { fill(c, [el("span", { class: "dim" }, [status ? "configuration history not kept" : ""])]); return; }
    fill(c, [el("span", { id: "config-live", "data-id": cfg.id },
      ["configuration #" + cfg.id + " (" + cfg.how + ", by " + cfg.by + ") "]),
      ago(cfg.applied_at), el("code", { title: cfg.sha256 }, [" sha256 " + String(cfg.sha256).slice(0, 12)])]);
    $("rollback").hidden = false;
    $("rollback").textContent = armed === cfg.id ? "Confirm: roll back configuration #" + cfg.id : "Roll back";
  }

  function notice(text, bad) {
    var n = $("notice");
    n.textContent = text || "";
    n.className = bad ? "notice bad" : "notice";
    n.hidden = !text;
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      var r = await Promise.all([get("/health"), get("/status"), get("/history"), get("/circuit-breaker-status"),
        get("/limiters"), get("/logs?level=warning&limit=50")]);
      var health = r[0], status = r[1].status === 200 ? r[1].body : null;
      var hist = r[2].status === 200 ? r[2].body : null;
      $("token-form").hidden = r[1].status !== 401;
      if (r[0].status === 0) notice("sluice is not answering: " + (r[0].error || ""), true);
      else if (r[1].status === 401) notice("/status and /logs need the admin token", true);
      else if (r[1].status !== 200) notice("/status answered " + r[1].status, true);
      else if ($("notice").className !== "notice") notice("");
      summary(health, status);
      collectors(status, hist);
      breakers(r[3].status === 200 ? r[3].body : null, hist);
      limiters(r[4].status === 200 ? r[4].body : null, hist);
      backfills(status);
      sinks(status, hist);
      logs(r[5].status === 200 ? r[5].body : null);
      $("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
      updates += 1;
      document.body.setAttribute("data-updates", String(updates));
    } finally {
      busy = false;
    }
  }

  async function rollback() {
    var live = $("config-live");
    var id = live ? Number(live.getAttribute("data-id")) : null;
    if (armed !== id) { armed = id; $("rollback").textContent = "Confirm: roll back configuration #" + id; return; }
    armed = null;
    var res;
    try {
      res = await fetch("/reload", { method: "POST", credentials: "omit", cache: "no-store",
        headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify({ rollback: true }) });
    } catch (e) { notice("rollback failed: " + e, true); return; }
    var body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (res.ok) notice("rolled back: configuration #" + body.configuration.id + " is live");
    else notice("rollback refused (" + res.status + "): " + (body && body.error || ""), true);
    await refresh();
  }

  $("rollback").addEventListener("click", function () { rollback(); });
  $("token-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    token = $("token").value;
    sessionStorage.setItem(KEY, token);
    $("token").value = "";
    refresh();
  });
  refresh();
  setInterval(refresh, REFRESH);
})();
]==]
