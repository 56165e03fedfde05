// The page's behaviour: a file of its own, so the page runs under a CSP without 'unsafe-inline'.
// Everything the server or a user supplies reaches the page as text (textContent), never as
// markup: a label or a message cannot inject HTML.
"use strict";
const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function percent(confidence) {
  return `${(confidence * 100).toFixed(1)}%`;
}

function row(item) {
  const bar = element("div", "bar");
  bar.style.width = percent(item.confidence); // CSSOM, which a CSP allows; an inline style is not
  const track = element("div");
  track.append(bar);
  const line = element("div", "row");
  line.append(element("span", "", item.label), track, element("span", "num", percent(item.confidence)));
  return line;
}

function showModel(model) {
  if (model && model.name) {
    const device = model.device ? ` on ${model.device}` : "";
    $("model-name").textContent = `${model.name} v${model.version}${device}`;
  }
}

function show(file) {
  $("preview").src = URL.createObjectURL(file);
  $("preview").classList.add("shown");
  $("error").textContent = "";
  const form = new FormData();
  form.append("image", file);
  const started = performance.now();
  fetch("classify", { method: "POST", body: form })
    .then(async (response) => {
      const body = await response.json();
      if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
      $("result-label").textContent = body.label;
      $("latency").textContent = `${Math.round(performance.now() - started)} ms`;
      $("variant").textContent = body.variant;
      $("top5").replaceChildren(...body.top_k.map(row));
      $("result").hidden = false;
      if (!$("model-name").textContent) showModel(body.model);
      refreshStats();
    })
    .catch((error) => { $("result").hidden = true; $("error").textContent = error.message; });
}

$("file").addEventListener("change", (event) => event.target.files[0] && show(event.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault(); drop.classList.add("over");
}));
["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer.files[0]) show(event.dataTransfer.files[0]);
});

function showStats(items) {
  const pairs = Object.entries(items).flatMap(([k, v]) => [element("dt", "", k), element("dd", "", String(v))]);
  $("stats").replaceChildren(...pairs);
}

let statsTimer = null;

function refreshStats() {
  fetch("stats").then(async (response) => {
    if (!response.ok) {
      // Through the gateway /stats is for operators only: say so once, and stop asking.
      clearInterval(statsTimer);
      $("stats-section").hidden = true;
      return;
    }
    const stats = await response.json();
    const accuracy = stats.accuracy.filter((a) => a.role === "serve")
      .map((a) => `${a.variant}: ${percent(a.top1)} (${a.samples})`).join(", ");
    const drifted = stats.drift.flatMap((d) => d.drifted_features);
    showStats({
      "uptime": `${Math.round(stats.uptime_s)} s`,
      "requests": stats.requests,
      "errors": stats.errors,
      "latency p50 / p95": stats.latency_ms.p50 === null ? "-" :
        `${stats.latency_ms.p50} / ${stats.latency_ms.p95} ms`,
      "mean batch size": stats.batch_sizes.mean ?? "-",
      "accuracy (feedback)": accuracy || "no feedback yet",
      "drift": stats.drift.length ? (drifted.length ? `drifted: ${drifted.join(", ")}` : "none") : "not checked yet",
    });
  }).catch(() => {});
}

fetch("model").then((r) => (r.ok ? r.json() : null)).then(showModel).catch(() => {});
refreshStats();
statsTimer = setInterval(refreshStats, 5000);
