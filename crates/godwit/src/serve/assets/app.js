// godwit's dashboard script: swaps in the live sections the server renders, sends the buttons'
// actions to the API (with the page's CSRF token), and draws the throughput chart.
"use strict";

const csrf = () => (document.querySelector('meta[name="csrf"]') || {}).content || "";

function toast(text, ok) {
  let box = document.getElementById("toast");
  if (!box) {
    box = document.createElement("div");
    box.id = "toast";
    document.body.appendChild(box);
  }
  const note = document.createElement("div");
  note.className = "notice " + (ok ? "ok" : "error");
  note.textContent = text;
  box.appendChild(note);
  setTimeout(() => note.remove(), ok ? 4000 : 9000);
}

async function call(method, url, body) {
  const headers = { "X-CSRF-Token": csrf() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    throw new Error((data && data.message) || response.status + " " + response.statusText);
  }
  return data;
}

function said(action, data) {
  if (!data) return "Done.";
  if (typeof data.requeued === "number") return data.requeued + " objects back in the queue.";
  if (data.partitions && typeof data.passed === "boolean") {
    return data.partitions.map(p => "Partition " + p.partition + ": validation " +
      (p.passed ? "passed" : "failed (" + p.differences.slice(0, 3).join("; ") + ")")).join(" ");
  }
  if (data.state === "cut_over") return "Partition " + data.partition + " is cut over.";
  if (data.status) return "Migration " + data.status + ".";
  return "Done.";
}

// Buttons and switches that act: data-action="METHOD URL", optionally data-confirm.
document.addEventListener("click", async (event) => {
  const target = event.target.closest("[data-action]");
  if (!target || target.disabled) return;
  event.preventDefault();
  if (target.dataset.confirm && !window.confirm(target.dataset.confirm)) return;
  const [method, url] = target.dataset.action.split(" ");
  target.disabled = true;
  try {
    const data = await call(method, url);
    toast(said(target.dataset.action, data), true);
  } catch (error) {
    toast(error.message, false);
  } finally {
    target.disabled = false;
  }
});

// The new migration form, sent as JSON.
function startForm() {
  const form = document.getElementById("new-migration");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = document.getElementById("form-error");
    error.hidden = true;
    const body = {};
    for (const [name, value] of new FormData(form).entries()) {
      const text = String(value).trim();
      if (!text) continue;
      if (name === "include" || name === "exclude") {
        body[name] = text.split("\n").map(s => s.trim()).filter(Boolean);
      } else if (name === "concurrency") {
        body[name] = Number(text);
      } else {
        body[name] = text;
      }
    }
    const button = document.getElementById("start");
    button.disabled = true;
    try {
      const created = await call("POST", "/api/migrations", body);
      window.location = "/migrations/" + created.id;
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
      button.disabled = false;
    }
  });
}

// The throughput chart: bytes per second as an area (left axis), objects per second as a line
// (right axis), over the samples the server kept.
const chart = { samples: [], canvas: null };

function units(bytes) {
  const names = ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s"];
  let i = 0;
  while (bytes >= 1024 && i < names.length - 1) { bytes /= 1024; i++; }
  return (bytes >= 100 ? bytes.toFixed(0) : bytes >= 10 ? bytes.toFixed(1) : bytes.toFixed(2)) + " " + names[i];
}

// A round top for the bytes axis, in the unit its labels use.
function niceBytes(value) {
  let scale = 1;
  while (value / scale >= 1024 && scale < Math.pow(1024, 4)) scale *= 1024;
  return niceMax(value / scale) * scale;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

function draw() {
  const canvas = chart.canvas;
  if (!canvas) return;
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const left = 78, right = 70, top = 12, bottom = 28;
  const w = width - left - right, h = height - top - bottom;
  const s = chart.samples;
  const points = [];
  for (let i = 1; i < s.length; i++) {
    const dt = (s[i].at - s[i - 1].at) / 1000;
    if (dt <= 0) continue;
    points.push({
      at: s[i].at,
      bytes: Math.max(0, s[i].done_bytes - s[i - 1].done_bytes) / dt,
      objects: Math.max(0, s[i].done_objects - s[i - 1].done_objects) / dt,
    });
  }
  g.font = "12px system-ui, sans-serif";
  g.fillStyle = "#6a7585";
  if (points.length < 2) {
    g.fillText("Measuring… the chart fills in as objects finish.", left, top + h / 2);
    return;
  }
  const t0 = points[0].at, t1 = points[points.length - 1].at;
  const span = Math.max(1, t1 - t0);
  const maxBytes = niceBytes(Math.max(...points.map(p => p.bytes)));
  const maxObjects = niceMax(Math.max(...points.map(p => p.objects)));
  const x = t => left + (t - t0) / span * w;
  const yb = v => top + h - v / maxBytes * h;
  const yo = v => top + h - v / maxObjects * h;
  // Grid and axes.
  g.strokeStyle = "#e3e7ee"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + h * i / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(left + w, y); g.stroke();
    g.fillStyle = "#2456d6"; g.textAlign = "right";
    g.fillText(units(maxBytes * (4 - i) / 4), left - 8, y + 4);
    g.fillStyle = "#22a06b"; g.textAlign = "left";
    g.fillText((maxObjects * (4 - i) / 4).toFixed(maxObjects >= 40 ? 0 : 1) + " obj/s", left + w + 8, y + 4);
  }
  g.fillStyle = "#6a7585"; g.textAlign = "center";
  for (let i = 0; i <= 4; i++) {
    const t = t0 + span * i / 4;
    g.fillText(new Date(t).toLocaleTimeString(), x(t), top + h + 18);
  }
  // Bytes per second: a filled area.
  g.beginPath(); g.moveTo(x(points[0].at), yb(0));
  for (const p of points) g.lineTo(x(p.at), yb(p.bytes));
  g.lineTo(x(t1), yb(0)); g.closePath();
  g.fillStyle = "rgba(36, 86, 214, 0.16)"; g.fill();
  g.beginPath();
  points.forEach((p, i) => (i ? g.lineTo(x(p.at), yb(p.bytes)) : g.moveTo(x(p.at), yb(p.bytes))));
  g.strokeStyle = "#2456d6"; g.lineWidth = 2; g.stroke();
  // Objects per second: a line.
  g.beginPath();
  points.forEach((p, i) => (i ? g.lineTo(x(p.at), yo(p.objects)) : g.moveTo(x(p.at), yo(p.objects))));
  g.strokeStyle = "#22a06b"; g.lineWidth = 1.5; g.setLineDash([5, 3]); g.stroke(); g.setLineDash([]);
}

async function startChart() {
  chart.canvas = document.getElementById("chart");
  if (!chart.canvas) return;
  try {
    const response = await fetch("/api/migrations/" + chart.canvas.dataset.id + "/throughput",
      { credentials: "same-origin" });
    if (response.ok) chart.samples = await response.json();
  } catch (_) { /* the live stream fills it in */ }
  draw();
  window.addEventListener("resize", draw);
}

function addSample(sample) {
  if (!sample) return;
  const last = chart.samples[chart.samples.length - 1];
  if (last && last.at >= sample.at) return;
  chart.samples.push(sample);
  if (chart.samples.length > 1800) chart.samples.shift();
  draw();
}

// Live sections: the server renders them; each `update` event replaces those that changed.
function startLive() {
  const live = document.querySelector("[data-live]");
  if (!live) return;
  const state = document.createElement("span");
  state.id = "live-state";
  state.className = "sub";
  state.textContent = "connecting…";
  const heading = document.querySelector(".heading");
  if (heading) heading.firstElementChild.appendChild(state);
  const source = new EventSource(live.dataset.live);
  source.addEventListener("open", () => { state.textContent = "● live"; state.style.color = "#22a06b"; });
  source.addEventListener("error", () => { state.textContent = "reconnecting…"; state.style.color = "#d6453d"; });
  source.addEventListener("update", (event) => {
    const data = JSON.parse(event.data);
    for (const [id, html] of Object.entries(data)) {
      if (typeof html !== "string") continue;
      const element = document.getElementById(id);
      if (element && element.dataset.html !== html) {
        element.innerHTML = html;
        element.dataset.html = html;
      }
    }
    addSample(data.sample);
    state.textContent = "● live · " + new Date().toLocaleTimeString();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  startForm();
  startChart();
  startLive();
});
