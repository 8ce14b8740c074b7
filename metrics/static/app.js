// Ringbus live UI: history from /api/v1/timeseries, then one Server-Sent
// Event per second from /api/v1/stream. Charts are drawn on <canvas> by
// the small LineChart below (no external library, no network access).
"use strict";

const HISTORY_SECONDS = 900;
const PALETTE = [
  "#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed",
  "#0891b2", "#db2777", "#4b5563", "#65a30d", "#9333ea",
];

// -- number formatting --------------------------------------------------------

function fmtSI(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "-";
  const abs = Math.abs(value);
  const units = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [scale, suffix] of units) {
    if (abs >= scale) return trim(value / scale) + suffix;
  }
  return trim(value);
}

function fmtBytes(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let scaled = value;
  let unit = 0;
  while (Math.abs(scaled) >= 1024 && unit < units.length - 1) {
    scaled /= 1024;
    unit += 1;
  }
  return trim(scaled) + " " + units[unit];
}

function fmtMs(value) {
  if (value === null || value === undefined) return "-";
  if (value >= 1000) return trim(value / 1000) + " s";
  if (value > 0 && value < 1) return trim(value * 1000) + " \u00b5s";
  return trim(value) + " ms";
}

function fmtPercent(value) {
  if (value === null || value === undefined) return "-";
  return trim(value) + "%";
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function fmtInt(value) {
  if (value === null || value === undefined) return "-";
  return Math.round(value).toLocaleString("en-US");
}

// Three significant digits at most, no trailing zeros.
function trim(value) {
  if (value === 0) return "0";
  const abs = Math.abs(value);
  const decimals = abs >= 100 ? 0 : abs >= 10 ? 1 : abs >= 1 ? 2 : abs >= 0.01 ? 3 : 4;
  return String(Number(value.toFixed(decimals)));
}

// -- the line chart -------------------------------------------------------------

class LineChart {
  // spec: {title, unit, format, series: [{key, label}] or labelled: "cpu_percent"}
  constructor(element, spec) {
    this.element = element;
    this.spec = spec;
    this.draws = 0;
    element.innerHTML = "";
    const head = document.createElement("div");
    head.className = "head";
    head.innerHTML = `<span class="title"></span><span class="unit"></span>`;
    head.querySelector(".title").textContent = spec.title;
    head.querySelector(".unit").textContent = spec.unit || "";
    this.legend = document.createElement("div");
    this.legend.className = "legend";
    this.canvas = document.createElement("canvas");
    this.canvas.setAttribute("role", "img");
    this.canvas.setAttribute("aria-label", spec.title);
    element.append(head, this.legend, this.canvas);
    this.legendItems = new Map();
    new ResizeObserver(() => this.render()).observe(this.canvas);
  }

  // lines: [{key, label, values}] aligned with times (unix seconds).
  update(times, lines, windowSeconds) {
    this.times = times;
    this.lines = lines;
    this.windowSeconds = windowSeconds;
    this.updateLegend();
    this.render();
  }

  updateLegend() {
    const seen = new Set();
    this.lines.forEach((line, index) => {
      seen.add(line.key);
      let item = this.legendItems.get(line.key);
      if (!item) {
        item = document.createElement("span");
        item.className = "item";
        item.dataset.series = line.key;
        item.innerHTML = `<span class="swatch"></span><span class="label"></span><span class="value"></span>`;
        this.legend.append(item);
        this.legendItems.set(line.key, item);
      }
      item.querySelector(".swatch").style.background = PALETTE[index % PALETTE.length];
      item.querySelector(".label").textContent = line.label;
      const last = lastValue(line.values);
      item.querySelector(".value").textContent = this.spec.format(last);
      item.dataset.value = last === null ? "" : String(last);
    });
    for (const [key, item] of this.legendItems) {
      if (!seen.has(key)) {
        item.remove();
        this.legendItems.delete(key);
      }
    }
  }

  render() {
    if (!this.lines) return;
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const times = this.times;
    const end = times.length ? times[times.length - 1] : Date.now() / 1000;
    const start = end - this.windowSeconds;
    let max = 0;
    for (const line of this.lines) {
      for (let i = 0; i < times.length; i++) {
        const v = line.values[i];
        if (v !== null && times[i] >= start && v > max) max = v;
      }
    }
    const ticks = niceTicks(max || this.spec.emptyMax || 1, this.spec.binary, this.spec.integer);
    const top = ticks[ticks.length - 1];

    ctx.font = "11px system-ui, sans-serif";
    const labels = ticks.map((t) => this.spec.format(t));
    const left = Math.ceil(Math.max(...labels.map((l) => ctx.measureText(l).width))) + 10;
    const right = 8;
    const plotTop = 6;
    const bottom = 18;
    const plotW = width - left - right;
    const plotH = height - plotTop - bottom;
    const x = (t) => left + ((t - start) / this.windowSeconds) * plotW;
    const y = (v) => plotTop + plotH - (v / top) * plotH;

    // Grid and y labels.
    ctx.strokeStyle = "#eef1f5";
    ctx.fillStyle = "#6a7385";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ticks.forEach((tick, i) => {
      const py = Math.round(y(tick)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, py);
      ctx.lineTo(width - right, py);
      ctx.stroke();
      ctx.fillText(labels[i], left - 6, py);
    });

    // Time labels at a step that fits the window.
    const step = this.windowSeconds <= 60 ? 15 : this.windowSeconds <= 300 ? 60 : 180;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let t = Math.ceil(start / step) * step; t <= end; t += step) {
      const px = x(t);
      if (px < left + 15 || px > width - right - 15) continue;
      ctx.fillText(clock(t), px, plotTop + plotH + 4);
      ctx.beginPath();
      ctx.moveTo(Math.round(px) + 0.5, plotTop);
      ctx.lineTo(Math.round(px) + 0.5, plotTop + plotH);
      ctx.stroke();
    }

    // Lines; a null value breaks the line.
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, plotTop - 2, plotW, plotH + 4);
    ctx.clip();
    this.lines.forEach((line, index) => {
      ctx.strokeStyle = PALETTE[index % PALETTE.length];
      ctx.lineWidth = 1.6;
      ctx.lineJoin = "round";
      ctx.beginPath();
      let drawing = false;
      for (let i = 0; i < times.length; i++) {
        const v = line.values[i];
        if (v === null || times[i] < start - 1) {
          drawing = false;
          continue;
        }
        const px = x(times[i]);
        const py = y(v);
        if (drawing) ctx.lineTo(px, py);
        else ctx.moveTo(px, py);
        drawing = true;
      }
      ctx.stroke();
    });
    ctx.restore();

    ctx.strokeStyle = "#cfd5de";
    ctx.beginPath();
    ctx.moveTo(left, plotTop + plotH + 0.5);
    ctx.lineTo(width - right, plotTop + plotH + 0.5);
    ctx.stroke();

    this.draws += 1;
    this.element.dataset.draws = String(this.draws);
    this.element.dataset.points = String(times.length);
    this.element.dataset.lastTime = String(end);
  }
}

// 0 and 3-5 round steps up to at least ``max``; ``binary`` steps in
// powers of 1024 (KiB, MiB) so byte axes read 16 MiB, 32 MiB, ...;
// ``integer`` steps by whole numbers (counts of things).
function niceTicks(max, binary = false, integer = false) {
  let scale = 1;
  if (binary) {
    while (max / scale >= 1024) scale *= 1024;
  }
  const scaled = max / scale;
  const rough = scaled / 4;
  const power = Math.pow(10, Math.floor(Math.log10(rough)));
  let unit = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => rough <= s);
  if (integer) unit = Math.max(1, Math.ceil(unit));
  const ticks = [];
  for (let v = 0; v <= scaled + unit * 0.999; v += unit) {
    ticks.push(Number((v * scale).toPrecision(12)));
  }
  if (ticks.length < 2) ticks.push(unit * scale);
  return ticks;
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0 && i >= values.length - 3; i--) {
    if (values[i] !== null) return values[i];
  }
  return null;
}

function clock(unixSeconds) {
  const d = new Date(unixSeconds * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()]
    .map((n) => String(n).padStart(2, "0"))
    .join(":");
}

// -- history, kept in the page ----------------------------------------------------

const history = { time: [], series: {} };

function loadHistory(document_) {
  history.time = document_.time.slice();
  history.series = {};
  for (const [name, values] of Object.entries(document_.series)) {
    history.series[name] = Array.isArray(values)
      ? values.slice()
      : Object.fromEntries(Object.entries(values).map(([k, v]) => [k, v.slice()]));
  }
}

function appendPoint(point) {
  const last = history.time[history.time.length - 1];
  if (last !== undefined && point.time <= last) return;
  const length = history.time.length;
  history.time.push(point.time);
  for (const [name, value] of Object.entries(point)) {
    if (name === "time") continue;
    if (value !== null && typeof value === "object") {
      const byLabel = (history.series[name] ||= {});
      for (const [label, v] of Object.entries(value)) {
        const values = (byLabel[label] ||= new Array(length).fill(null));
        values.push(v);
      }
    } else {
      (history.series[name] ||= new Array(length).fill(null)).push(value);
    }
  }
  const excess = history.time.length - HISTORY_SECONDS;
  if (excess > 0) {
    history.time.splice(0, excess);
    for (const values of Object.values(history.series)) {
      if (Array.isArray(values)) values.splice(0, excess);
      else for (const v of Object.values(values)) v.splice(0, excess);
    }
  }
}

// -- charts -------------------------------------------------------------------------

const CHARTS = [
  {
    id: "chart-records", title: "Records", unit: "per second", format: fmtSI,
    series: [["records_in_per_s", "in (produced)"], ["records_out_per_s", "out (fetched)"]],
  },
  {
    id: "chart-bytes", title: "Bytes", unit: "per second", format: fmtBytes, binary: true,
    series: [["bytes_in_per_s", "in"], ["bytes_out_per_s", "out"]],
  },
  {
    id: "chart-latency", title: "Request latency", unit: "all APIs", format: fmtMs,
    series: [["latency_p50_ms", "p50"], ["latency_p99_ms", "p99"]],
  },
  {
    id: "chart-lag", title: "Consumer lag", unit: "records, all groups", format: fmtSI,
    series: [["lag_records", "total lag"]], integer: true,
  },
  {
    id: "chart-cpu", title: "CPU", unit: "% of one core, per process", format: fmtPercent,
    labelled: "cpu_percent", emptyMax: 10,
  },
  {
    id: "chart-memory", title: "Memory", unit: "resident, per process", format: fmtBytes,
    binary: true,
    labelled: "rss_bytes",
  },
  {
    id: "chart-ring", title: "Produce ring fill", unit: "% of capacity", format: fmtPercent,
    labelled: "ring_fill_percent", emptyMax: 1,
  },
  {
    id: "chart-requests", title: "Requests", unit: "per second", format: fmtSI,
    series: [["requests_per_s", "answered"], ["request_errors_per_s", "with errors"]],
  },
  {
    id: "chart-connections", title: "Connections", unit: "open now", format: fmtSI,
    series: [["connections", "client connections"], ["parked_fetches", "parked fetches"]],
    emptyMax: 4, integer: true,
  },
];

let windowSeconds = 300;
const charts = [];

function linesFor(spec) {
  if (spec.labelled) {
    const byLabel = history.series[spec.labelled] || {};
    return Object.entries(byLabel)
      .filter(([, values]) => values.some((v) => v !== null))
      .map(([label, values]) => ({ key: label, label, values }));
  }
  return spec.series.map(([key, label]) => ({
    key, label, values: history.series[key] || [],
  }));
}

function drawCharts() {
  for (const chart of charts) {
    chart.update(history.time, linesFor(chart.spec), windowSeconds);
  }
}

// -- tables and header -------------------------------------------------------------

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function pill(text, kind) {
  const td = document.createElement("td");
  const span = document.createElement("span");
  span.className = "pill " + kind;
  span.textContent = text;
  td.append(span);
  return td;
}

function fillTable(id, rows, empty, columns) {
  const body = document.querySelector(`#${id} tbody`);
  const fresh = rows.map((row) => {
    const tr = document.createElement("tr");
    tr.append(...columns(row));
    return tr;
  });
  if (!fresh.length) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(empty);
    td.colSpan = document.querySelectorAll(`#${id} thead th`).length;
    tr.append(td);
    fresh.push(tr);
  }
  body.replaceChildren(...fresh);
}

const GROUP_STATES = { Stable: "ok", Empty: "", PreparingRebalance: "warn", CompletingRebalance: "warn", Dead: "bad" };

function showEvent(data) {
  const broker = data.broker;
  document.getElementById("version").textContent = "v" + broker.version;
  document.getElementById("stat-uptime").textContent = fmtDuration(broker.uptime_s);
  document.getElementById("stat-topics").textContent = fmtInt(broker.topics);
  document.getElementById("stat-partitions").textContent = fmtInt(broker.partitions);
  document.getElementById("stat-groups").textContent = fmtInt(broker.consumer_groups);
  document.getElementById("stat-connections").textContent = fmtInt(broker.connections_active);
  document.getElementById("stat-size").textContent = fmtBytes(broker.size_bytes);
  document.getElementById("stat-records").textContent = fmtSI(broker.totals.produce_records);
  document.getElementById("stat-requests").textContent = fmtSI(data.point.requests_per_s);
  document.getElementById("stat-errors").textContent = fmtSI(data.point.request_errors_per_s);

  document.getElementById("topics-count").textContent =
    data.topics_total > data.topics.length ? `(${data.topics.length} of ${data.topics_total})` : `(${data.topics_total})`;
  fillTable("topics", data.topics, "no topics yet", (t) => [
    cell(t.name),
    cell(fmtInt(t.partition_count), "num"),
    cell(fmtInt(t.records), "num"),
    cell(fmtInt(t.high_watermark), "num"),
    cell(fmtBytes(t.size_bytes), "num"),
  ]);

  document.getElementById("groups-count").textContent = `(${data.groups_total})`;
  fillTable("groups", data.groups, "no consumer groups yet", (g) => [
    cell(g.group_id),
    pill(g.state, GROUP_STATES[g.state] ?? ""),
    cell(fmtInt(g.member_count), "num"),
    cell(fmtInt(g.lag), "num"),
    cell(g.topics.join(", ")),
  ]);
  const error = document.getElementById("groups-error");
  error.hidden = !data.groups_error;
  error.textContent = data.groups_error ? "Groups may be stale: " + data.groups_error : "";

  fillTable("processes", data.processes, "no processes", (p) => [
    cell(p.name),
    cell(String(p.pid), "num"),
    cell(fmtPercent(p.cpu_percent), "num"),
    cell(fmtBytes(p.resident_bytes), "num"),
    cell(fmtInt(p.restarts), "num"),
    cell(fmtDuration(p.uptime_s), "num"),
    cell(p.heartbeat_age_s === null ? "-" : fmtMs(p.heartbeat_age_s * 1000), "num"),
    p.running ? pill("running", "ok") : pill("down", "bad"),
  ]);
}

// -- wiring -----------------------------------------------------------------------------

let lastEventAt = 0;

function setStatus(state, text) {
  const status = document.getElementById("status");
  status.dataset.state = state;
  status.textContent = text;
}

async function start() {
  for (const spec of CHARTS) {
    charts.push(new LineChart(document.getElementById(spec.id), spec));
  }
  for (const button of document.querySelectorAll(".window button")) {
    button.addEventListener("click", () => {
      windowSeconds = Number(button.dataset.seconds);
      document.querySelectorAll(".window button").forEach((b) => b.classList.toggle("active", b === button));
      drawCharts();
    });
  }

  try {
    const response = await fetch(`/api/v1/timeseries?seconds=${HISTORY_SECONDS}`);
    if (response.ok) loadHistory(await response.json());
  } catch (error) {
    setStatus("stale", "history unavailable");
  }
  drawCharts();

  const stream = new EventSource("/api/v1/stream");
  stream.addEventListener("sample", (message) => {
    const data = JSON.parse(message.data);
    lastEventAt = Date.now();
    appendPoint(data.point);
    showEvent(data);
    drawCharts();
    setStatus("live", "live");
  });
  stream.addEventListener("error", () => setStatus("stale", "reconnecting"));
  setInterval(() => {
    if (lastEventAt && Date.now() - lastEventAt > 5000) setStatus("stale", "no data for " + fmtDuration((Date.now() - lastEventAt) / 1000));
  }, 1000);
}

document.addEventListener("DOMContentLoaded", start);
