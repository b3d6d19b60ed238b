// SkyDeck's charts, drawn with the vendored uPlot: an experiment's metrics across its attempts,
// followed live, and a sweep's children compared by one metric against each varied flag.
(function () {
  "use strict";
  if (window.skydeckMetrics) return;

  const PALETTE = ["#2457c5", "#d1495b", "#2a9d8f", "#e09f3e", "#7b5ea7", "#3d8bfd", "#8c564b", "#17becf", "#6a994e", "#c05299"];
  const LIVE_MS = 5000;   // while a job runs
  const IDLE_MS = 30000;  // otherwise: a new run still shows up
  const HEIGHT = 220;
  const MAX_CHARTS = 24;

  function cssVar(name, fallback) {
    const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }
  function canPoll() { return window.skydeckCanPoll ? window.skydeckCanPoll() : !document.hidden; }
  function ratio() { return uPlot.pxRatio || window.devicePixelRatio || 1; }

  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "—";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return Number(v.toPrecision(4)).toExponential();
    return String(+v.toPrecision(5));
  }

  function node(tag, attrs, text) {
    const el = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function axes(xValues) {
    const stroke = cssVar("--muted", "#5c6878");
    const grid = { stroke: cssVar("--border", "#d9dee5"), width: 1 };
    const x = { stroke: stroke, grid: grid, ticks: grid };
    if (xValues) Object.assign(x, xValues);
    return [x, { stroke: stroke, grid: grid, ticks: grid, size: 64, values: function (u, vals) { return vals.map(fmt); } }];
  }

  // Dashed vertical lines where an attempt starts, labelled with its number.
  function attemptMarkers(starts) {
    return {
      hooks: {
        draw: [function (u) {
          if (!starts.length) return;
          const ctx = u.ctx, px = ratio(), left = u.bbox.left, right = left + u.bbox.width;
          ctx.save();
          ctx.strokeStyle = ctx.fillStyle = cssVar("--muted", "#5c6878");
          ctx.setLineDash([4 * px, 4 * px]);
          ctx.lineWidth = px;
          ctx.font = (11 * px) + "px system-ui, sans-serif";
          starts.forEach(function (s) {
            const x = Math.round(u.valToPos(s.x, "x", true));
            if (x < left || x > right) return;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            ctx.fillText(s.label, x + 3 * px, u.bbox.top + 12 * px);
          });
          ctx.restore();
        }],
      },
    };
  }

  // --- an experiment: one chart per metric, one line per attempt -----------------------------

  function ExperimentCharts(root) {
    this.root = root;
    this.url = root.dataset.metricsUrl;
    this.status = root.querySelector("[data-metrics-status]");
    this.box = root.querySelector("[data-metrics-charts]");
    this.logBox = root.querySelector("[data-metrics-log]");
    this.cursor = 0;
    this.series = new Map();   // "job|name" -> {job, attempt, name, points: Map(step -> value), meta}
    this.charts = new Map();   // name -> {figure, caption, plot, u, shape}
    this.data = null;
    this.timer = null;
    const self = this;
    if (this.logBox) this.logBox.addEventListener("change", function () { self.render(true); });
    if (window.ResizeObserver) {
      this.resizer = new ResizeObserver(function () { self.resize(); });
      this.resizer.observe(this.box);
    }
    this.load();
  }

  ExperimentCharts.prototype.schedule = function (ms) {
    const self = this;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () { self.load(); }, ms);
  };

  ExperimentCharts.prototype.say = function (text) { if (this.status) this.status.textContent = text; };

  ExperimentCharts.prototype.load = async function () {
    if (!this.root.isConnected) return;
    if (!canPoll()) { this.schedule(LIVE_MS); return; }
    let data;
    try {
      const res = await fetch(this.url + "?since=" + this.cursor, {
        headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
      });
      const type = res.headers.get("Content-Type") || "";
      if (!res.ok || type.indexOf("application/json") < 0) {
        throw new Error(res.ok ? "the session has ended: reload the page" : "HTTP " + res.status);
      }
      data = await res.json();
    } catch (err) {
      this.say("Could not read the metrics (" + err.message + "); trying again.");
      this.schedule(IDLE_MS);
      return;
    }
    if (this.merge(data)) {
      // The server thinned old points: read everything again rather than keep what it dropped.
      this.cursor = 0;
      this.series.clear();
      this.schedule(0);
      return;
    }
    this.data = data;
    this.render(false);
    this.schedule(data.live ? LIVE_MS : IDLE_MS);
  };

  // Returns true when what is held locally no longer matches the server (thinned since).
  ExperimentCharts.prototype.merge = function (data) {
    let stale = false;
    const self = this;
    data.series.forEach(function (s) {
      const key = s.job + "|" + s.name;
      let mine = self.series.get(key);
      if (!mine) {
        mine = { job: s.job, attempt: s.attempt, name: s.name, points: new Map(), meta: s };
        self.series.set(key, mine);
      }
      if (mine.meta.thinned !== s.thinned && self.cursor > 0) stale = true;
      mine.meta = s;
      for (let i = 0; i < s.steps.length; i++) mine.points.set(s.steps[i], s.values[i]);
    });
    if (!stale) this.cursor = Math.max(this.cursor, data.cursor);
    return stale;
  };

  ExperimentCharts.prototype.render = function (rebuild) {
    const data = this.data;
    if (!data) return;
    const names = data.names.slice(0, MAX_CHARTS);
    if (!names.length) {
      this.say(data.live
        ? "No metrics yet: lines like SKYDECK {\"step\": 1, \"loss\": 0.5} or step=1 loss=0.5 appear here as the job prints them."
        : "No metrics: this experiment's jobs printed no metric lines (SKYDECK {\"step\": 1, \"loss\": 0.5}, or step=1 loss=0.5).");
    } else {
      let text = data.live ? "Live: updated every few seconds while the job runs." : "";
      if (data.names.length > MAX_CHARTS) text += " Showing " + MAX_CHARTS + " of " + data.names.length + " metrics.";
      this.say(text.trim());
    }
    if (data.problems && data.problems.length) {
      this.say(data.problems.map(function (p) { return "Attempt #" + p.attempt + ": " + p.message; }).join(" ") +
        (this.status.textContent ? " " + this.status.textContent : ""));
    }
    const self = this;
    const wanted = new Set(names);
    this.charts.forEach(function (chart, name) {
      if (!wanted.has(name)) { chart.u && chart.u.destroy(); chart.figure.remove(); self.charts.delete(name); }
    });
    names.forEach(function (name) { self.chart(name, rebuild); });
  };

  ExperimentCharts.prototype.chart = function (name, rebuild) {
    const parts = [];
    this.series.forEach(function (s) { if (s.name === name && s.points.size) parts.push(s); });
    parts.sort(function (a, b) { return a.attempt - b.attempt; });
    let chart = this.charts.get(name);
    if (!chart) {
      const figure = node("figure", { class: "metric-chart", "data-metric": name });
      const caption = node("figcaption");
      const plot = node("div", { class: "metric-plot" });
      figure.append(caption, plot);
      this.box.append(figure);
      chart = { figure: figure, caption: caption, plot: plot, u: null, shape: "" };
      this.charts.set(name, chart);
    }
    // The union of every attempt's steps; each attempt a line with gaps where it has no value.
    const steps = new Set();
    parts.forEach(function (s) { s.points.forEach(function (_, step) { steps.add(step); }); });
    const xs = Array.from(steps).sort(function (a, b) { return a - b; });
    let low = Infinity;
    const ys = parts.map(function (s) {
      return xs.map(function (x) {
        const v = s.points.get(x);
        if (v === undefined) return null;
        if (v < low) low = v;
        return v;
      });
    });
    const log = !!(this.logBox && this.logBox.checked) && low > 0;
    const starts = parts.slice(1).map(function (s) {
      let first = Infinity;
      s.points.forEach(function (_, step) { if (step < first) first = step; });
      return { x: first, label: "#" + s.attempt };
    });
    this.caption(chart, name, parts);
    const shape = parts.map(function (s) { return s.attempt; }).join(",") + (log ? "|log" : "");
    if (chart.u && chart.shape === shape && !rebuild) {
      chart.starts.length = 0;
      Array.prototype.push.apply(chart.starts, starts);
      chart.u.setData([xs].concat(ys));
      return;
    }
    if (chart.u) chart.u.destroy();
    chart.starts = starts;
    const few = xs.length <= 60;
    const opts = {
      width: Math.max(200, chart.plot.clientWidth || chart.figure.clientWidth || 400),
      height: HEIGHT,
      legend: { show: true, live: true },
      cursor: { sync: { key: "skydeck-metrics" }, drag: { x: true, y: false } },
      scales: { x: { time: false }, y: { distr: log ? 3 : 1 } },
      axes: axes(),
      series: [{ label: "step", value: function (u, v) { return v === null || v === undefined ? "—" : String(v); } }].concat(
        parts.map(function (s, i) {
          return {
            label: "#" + s.attempt,
            stroke: PALETTE[i % PALETTE.length],
            width: 1.5,
            spanGaps: true,
            points: { show: few, size: 5 },
            value: function (u, v) { return fmt(v); },
          };
        })),
      plugins: [attemptMarkers(chart.starts)],
    };
    chart.u = new uPlot(opts, [xs].concat(ys), chart.plot);
    chart.shape = shape;
  };

  ExperimentCharts.prototype.caption = function (chart, name, parts) {
    const last = parts[parts.length - 1];
    chart.caption.textContent = "";
    chart.caption.append(node("strong", {}, name));
    if (!last) return;
    const meta = last.meta;
    let text = "latest " + fmt(meta.last_value) + " at step " + meta.last_step + " (#" + last.attempt + ")";
    const thinned = parts.filter(function (s) { return s.meta.thinned > 0; });
    if (thinned.length) {
      text += " · older points thinned to keep at most " + this.data.limit.toLocaleString() + " per attempt";
    }
    chart.caption.append(node("span", { class: "muted small" }, text));
  };

  ExperimentCharts.prototype.resize = function () {
    this.charts.forEach(function (chart) {
      if (!chart.u) return;
      const width = Math.max(200, chart.plot.clientWidth || 0);
      if (width && Math.abs(width - chart.u.width) > 2) chart.u.setSize({ width: width, height: HEIGHT });
    });
  };

  // --- a sweep: the metric against each varied flag ------------------------------------------

  let sweepPlots = [];

  function destroySweepPlots() {
    sweepPlots.forEach(function (u) { u.destroy(); });
    sweepPlots = [];
  }

  function sweepPlot(box, data, axis) {
    const others = data.axes.map(function (a) { return a.path; }).filter(function (p) { return p !== axis.path; });
    const cats = axis.kind === "category" ? axis.categories : null;
    function xOf(value) {
      if (value === null || value === undefined) return null;
      return cats ? cats.indexOf(String(value)) : value;
    }
    const better = data.goal === "min" ? function (a, b) { return a < b; } : function (a, b) { return a > b; };
    const children = data.children.filter(function (c) { return c.value !== null && xOf(c.flags[axis.path]) !== null; });
    // One line per combination of the other flags when there are few; else the best at each value.
    const groups = new Map();
    children.forEach(function (c) {
      const key = others.map(function (p) { return p + "=" + c.flags[p]; }).join(", ");
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(c);
    });
    let lines;
    if (groups.size <= 6) {
      lines = Array.from(groups.keys()).sort().map(function (key) { return { label: key || data.metric, members: groups.get(key) }; });
    } else {
      lines = [{ label: (data.goal === "min" ? "lowest" : "highest") + " at each " + axis.path, members: children }];
    }
    const xs = Array.from(new Set(children.map(function (c) { return xOf(c.flags[axis.path]); }))).sort(function (a, b) { return a - b; });
    const ys = lines.map(function (line) {
      return xs.map(function (x) {
        let found = null;
        line.members.forEach(function (c) {
          if (xOf(c.flags[axis.path]) === x && (found === null || better(c.value, found))) found = c.value;
        });
        return found;
      });
    });
    const bestChild = data.children.find(function (c) { return c.name === data.best; });
    const bestX = bestChild ? xOf(bestChild.flags[axis.path]) : null;
    const bestY = xs.map(function (x) { return x === bestX && bestChild ? bestChild.value : null; });

    const figure = node("figure", { class: "metric-chart", "data-flag": axis.path });
    const caption = node("figcaption");
    caption.append(node("strong", {}, data.metric + " by " + axis.path));
    if (bestChild) caption.append(node("span", { class: "muted small" }, "best: " + bestChild.name + " (" + fmt(bestChild.value) + ")"));
    const plot = node("div", { class: "metric-plot" });
    figure.append(caption, plot);
    box.append(figure);
    if (!xs.length) { plot.append(node("p", { class: "muted small" }, "No values to plot yet.")); return; }

    const log = axis.kind === "number" && axis.log;
    const x = { time: false };
    let xAxis = { label: axis.path };
    if (cats) {
      x.range = function () { return [-0.5, cats.length - 0.5]; };
      xAxis = {
        label: axis.path,
        splits: function () { return cats.map(function (_, i) { return i; }); },
        values: function (u, splits) { return splits.map(function (i) { return cats[i] === undefined ? "" : cats[i]; }); },
      };
    } else if (log) {
      x.distr = 3;
      // A label at each power of ten, none between.
      xAxis.values = function (u, splits) {
        return splits.map(function (v) {
          const e = Math.log10(v);
          return Math.abs(e - Math.round(e)) < 1e-9 ? fmt(v) : "";
        });
      };
    } else if (xs.length === 1) {
      x.range = function () { return [xs[0] - 1, xs[0] + 1]; };
    }
    const accent = cssVar("--ok", "#11632b");
    const series = [{ label: axis.path, value: function (u, v) { return v === null || v === undefined ? "—" : (cats ? cats[v] : fmt(v)); } }]
      .concat(lines.map(function (line, i) {
        return {
          label: line.label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true,
          points: { show: true, size: 7 }, value: function (u, v) { return fmt(v); },
        };
      }))
      .concat([{
        label: "best", stroke: accent, width: 0, paths: function () { return null; },
        points: { show: true, size: 14, width: 2, stroke: accent, fill: "transparent" },
        value: function (u, v) { return fmt(v); },
      }]);
    const u = new uPlot({
      width: Math.max(200, plot.clientWidth || figure.clientWidth || 400),
      height: HEIGHT,
      legend: { show: true, live: true },
      scales: { x: x, y: { distr: 1 } },
      axes: axes(xAxis),
      series: series,
    }, [xs].concat(ys, [bestY]), plot);
    sweepPlots.push(u);
  }

  function SweepPlots(box) {
    const script = box.querySelector("#sweep-metric-data");
    if (!script) return;
    const data = JSON.parse(script.textContent);
    if (!data.metric) return;
    data.axes.forEach(function (axis) { sweepPlot(box, data, axis); });
  }

  // --- wiring ----------------------------------------------------------------------------------

  function scan(root) {
    if (!window.uPlot || !root || !root.querySelectorAll) return;
    const found = [];
    if (root.matches && root.matches("[data-metrics-url], [data-sweep-plots]")) found.push(root);
    root.querySelectorAll("[data-metrics-url], [data-sweep-plots]").forEach(function (el) { found.push(el); });
    found.forEach(function (el) {
      if (el.dataset.chartsReady) return;
      el.dataset.chartsReady = "1";
      if (el.hasAttribute("data-metrics-url")) new ExperimentCharts(el);
      else SweepPlots(el);
    });
  }

  document.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail.target && e.detail.target.id === "sweep-metrics" && e.detail.shouldSwap !== false) destroySweepPlots();
  });
  document.addEventListener("htmx:load", function (e) { scan(e.detail.elt); });
  window.addEventListener("resize", function () {
    sweepPlots.forEach(function (u) {
      const width = Math.max(200, u.root.parentNode.clientWidth || 0);
      if (width && Math.abs(width - u.width) > 2) u.setSize({ width: width, height: HEIGHT });
    });
  });
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", function () { scan(document); });
  else scan(document);

  window.skydeckMetrics = { scan: scan, format: fmt };
})();
