// moeplan's planner page. It talks only to the /v1 API. Every value from the API is put in
// the page as text (textContent), never as HTML; the token lives in sessionStorage only.
"use strict";

const state = { devices: [], plan: null, request: null, job: null, poll: null, story: null, compare: [], auth: false };
const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "moeplan-token";

// --- small helpers ---------------------------------------------------------------------------
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
function num(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "-";
  const v = Number(value);
  if (Math.abs(v) >= 10 ** digits && Math.abs(v) < 1e7) return String(Math.round(v));
  return v.toPrecision(digits).replace(/\.?0+e/, "e");
}
function count(value) {
  if (value === null || value === undefined) return "-";
  const units = [["T", 1e12], ["B", 1e9], ["M", 1e6], ["K", 1e3]];
  for (const [unit, scale] of units) if (Math.abs(value) >= scale) return (value / scale).toFixed(2) + unit;
  return String(Math.round(value));
}
function bytes(value) {
  if (value === null || value === undefined) return "-";
  const units = [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]];
  for (const [unit, scale] of units) if (Math.abs(value) >= scale) return (value / scale).toFixed(2) + " " + unit;
  return Math.round(value) + " B";
}
function interval(ci, digits = 3) {
  if (!ci) return "no interval (uncalibrated prior)";
  return num(ci[0], digits) + "–" + num(ci[1], digits);
}
function table(node, header, rows) {
  clear(node);
  if (header) {
    const head = el("thead"), tr = el("tr");
    header.forEach((h) => tr.appendChild(el("th", h)));
    head.appendChild(tr); node.appendChild(head);
  }
  const body = el("tbody");
  rows.forEach((row) => {
    const tr = el("tr");
    row.forEach((cell) => tr.appendChild(cell instanceof Node ? wrap(cell) : el("td", cell)));
    body.appendChild(tr);
  });
  node.appendChild(body);
  return body;
}
function wrap(node) { const td = el("td"); td.appendChild(node); return td; }
function shapeCode(entry) {
  const a = entry.arch;
  const base = "L" + a.n_layers + " d" + a.d_model;
  if ((entry.n_experts || a.n_experts) <= 1) return base + " dense";
  return base + " E" + a.n_experts + " k" + a.top_k + " G" + a.granularity + (a.n_shared_experts ? " +" + a.n_shared_experts + "s" : "");
}
function shortUnit(unit) { return String(unit || "unit not given").split(" (")[0]; }
function cardName(reference) {
  const text = String(reference || "");
  const last = text.split("/").pop();
  return last.replace(/\.json$/, "");  // a built-in card by name: never the server's path
}

// --- the API ---------------------------------------------------------------------------------
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let document = null;
  try { document = await response.json(); } catch (error) { document = null; }
  if (!response.ok) {
    const detail = document && document.detail ? String(document.detail) : response.status + " " + response.statusText;
    const failure = new Error(detail);
    failure.status = response.status;
    throw failure;
  }
  return document;
}

// --- views -----------------------------------------------------------------------------------
function showView() {
  const view = (location.hash || "#plan").slice(1);
  document.querySelectorAll(".view").forEach((section) => { section.hidden = section.id !== "view-" + view; });
  document.querySelectorAll("nav a[data-view]").forEach((a) => a.classList.toggle("active", a.dataset.view === view));
  if (view === "card") loadCard();
  if (view === "runs") loadRuns();
  if (view === "devices") loadDevice();
  if (view === "plan" && state.plan) drawFront();
}

// --- the token -------------------------------------------------------------------------------
function setupToken(auth) {
  state.auth = auth;
  const form = $("token-form");
  form.hidden = !auth;
  const known = sessionStorage.getItem(TOKEN_KEY);
  $("token-state").textContent = auth ? (known ? "token set for this tab" : "this server needs a token to plan") : "";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    $("token-state").textContent = value ? "token set for this tab" : "no token";
  });
}

// --- the plan form ---------------------------------------------------------------------------
function fillBackends() {
  const device = state.devices.find((d) => d.name === $("f-device").value);
  const select = clear($("f-backend"));
  if (!device) return;
  Object.keys(device.backends).forEach((name) => {
    const info = device.backends[name];
    const label = name + (name === device.recommended_backend ? " (recommended)" : "") + (info.calibrated ? ", calibrated" : ", priors only");
    const option = el("option", label); option.value = name;
    if (name === device.recommended_backend) option.selected = true;
    select.appendChild(option);
  });
}

function optionalNumber(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

function planBody() {
  const body = {
    device: $("f-device").value,
    backend: $("f-backend").value || null,
    precision: $("f-precision").value,
    law_card: $("f-card").value || null,
    min_p_front: optionalNumber("f-min-p"),
    train_tokens: optionalNumber("f-tokens") ?? 1e12,
    max_decode_ms: optionalNumber("f-max-decode"),
    max_active_params: optionalNumber("f-max-active"),
    prompt_tokens: optionalNumber("f-prompt") ?? 512,
    context_tokens: optionalNumber("f-context") ?? 2048,
    exhaustive: $("f-exhaustive").checked,
    trials: optionalNumber("f-trials") ?? 500,
  };
  const budget = optionalNumber("f-budget");
  if (budget !== null) body[$("f-budget-kind").value] = budget;
  const schemes = [...document.querySelectorAll("#f-schemes input:checked")].map((box) => box.value);
  if (schemes.length) body.schemes = schemes;
  return body;
}

function clearErrors() {
  document.querySelectorAll(".error").forEach((node) => { node.textContent = ""; });
}

function showError(detail) {
  // The API's 422 names the field: put the message next to it (else under the form).
  const fields = [...document.querySelectorAll(".error[data-for]")];
  let placed = false;
  for (const node of fields) {
    for (const name of node.dataset.for.split(" ")) {
      if (new RegExp("(^|[^a-z_])" + name + "([^a-z_]|$)").test(detail)) { node.textContent = detail; placed = true; }
    }
  }
  if (!placed) $("form-error").textContent = detail;
}

async function submitPlan(event) {
  if (event) event.preventDefault();
  clearErrors();
  const body = planBody();
  try {
    const job = await api("POST", "v1/plans", body);
    state.request = body;
    state.job = job.id;
    state.submitted = performance.now();
    $("cancel").hidden = false;
    $("submit").disabled = true;
    $("job-state").textContent = "queued";
    pollJob();
  } catch (error) {
    if (error.status === 401) { $("form-error").textContent = error.message + ": enter the API token above"; $("token-form").hidden = false; }
    else showError(error.message);
  }
}

async function pollJob() {
  if (!state.job) return;
  try {
    const job = await api("GET", "v1/plans/" + state.job);
    if (job.status === "finished") {
      finishJob();
      state.plan = job.result;
      state.story = null;
      $("p-filter").value = "0";
      drawFront();
      window.moeplanDrawnAt = performance.now() - state.submitted;
      $("job-state").textContent = "finished in " + ((job.finished_at - job.created_at)).toFixed(1) + " s";
      return;
    }
    if (job.status === "failed" || job.status === "cancelled") {
      finishJob();
      $("job-state").textContent = job.status;
      if (job.error) showError(job.error);
      return;
    }
    let place = "";
    if (job.status === "pending") {
      const queue = await api("GET", "v1/jobs?status=pending,running");
      const index = queue.findIndex((j) => j.id === state.job);
      place = index >= 0 ? ", place " + (index + 1) + " of " + queue.length + " in the queue" : "";
    }
    const elapsed = (Date.now() / 1000 - job.created_at).toFixed(0);
    $("job-state").textContent = job.status + place + " (" + elapsed + " s since submitted)";
  } catch (error) {
    $("job-state").textContent = "cannot read the job: " + error.message;
  }
  state.poll = setTimeout(pollJob, 250);
}

function finishJob() {
  clearTimeout(state.poll);
  state.job = null;
  $("cancel").hidden = true;
  $("submit").disabled = false;
}

async function cancelJob() {
  if (!state.job) return;
  const id = state.job;
  try { await api("DELETE", "v1/jobs/" + id); $("job-state").textContent = "cancelled"; }
  catch (error) { $("job-state").textContent = "cannot cancel: " + error.message; }
  finishJob();
}

function mobileMoE(event) {
  $("f-device").value = "iphone-16-pro";
  fillBackends();
  $("f-precision").value = "int4";
  $("f-budget-kind").value = "max_weight_gb";
  $("f-budget").value = event.currentTarget.dataset.gb;
  document.querySelectorAll("#f-schemes input").forEach((box) => { box.checked = false; });
  submitPlan();
}

// --- the front -------------------------------------------------------------------------------
function budgetText(plan) {
  const parts = [plan.device + " (" + plan.backend + ")"];
  if (plan.max_weight_bytes) parts.push("weights ≤ " + bytes(plan.max_weight_bytes));
  parts.push("peak memory ≤ " + bytes(plan.memory_budget_bytes));
  if (plan.max_decode_ms) parts.push("decode ≤ " + num(plan.max_decode_ms) + " ms/token");
  if (plan.max_active_params) parts.push("active ≤ " + count(plan.max_active_params));
  parts.push((plan.schemes || []).join("/"));
  parts.push("trained on " + num(plan.train_tokens, 2) + " " + plan.tokens_unit);
  parts.push("loss in " + plan.loss_unit + ", card " + cardName(plan.law_card));
  parts.push("prompt " + plan.prompt_tokens + ", context " + plan.context_tokens + " tokens");
  return parts.join(" · ");
}

function visibleEntries() {
  const floor = Number($("p-filter").value);
  return state.plan.pareto.filter((entry) => (entry.p_front ?? 1) >= floor);
}

function drawFront() {
  const plan = state.plan;
  if (!plan) return;
  const decode = $("x-axis").value === "decode";
  $("p-filter-value").textContent = Number($("p-filter").value).toFixed(2);
  $("front-title").textContent = "The front: " + plan.pareto.length + " shapes" + (plan.min_p_front !== undefined ? " with p_front ≥ " + plan.min_p_front : "");
  $("front-budget").textContent = budgetText(plan);
  const entries = visibleEntries();
  $("front-count").textContent = entries.length + " of " + plan.pareto.length + " shown";
  const unit = plan.loss_unit;
  const traces = [false, true].map((moe) => {
    const part = entries.filter((e) => (e.n_routed_experts || e.n_experts) > 1 === moe);
    const x = part.map((e) => (decode ? e.decode_tokens_per_s : e.prefill_ms));
    const xci = part.map((e) => (decode ? e.decode_tokens_per_s_ci90 : e.prefill_ms_ci90));
    const hasX = xci.some((c) => c);
    return {
      type: "scatter", mode: "markers", name: moe ? "MoE (circles)" : "dense (squares)",
      x, y: part.map((e) => e.predicted_loss),
      customdata: part.map((e) => plan.pareto.indexOf(e)),
      text: part.map((e) => e.arch.name + "<br>" + shapeCode(e) + "<br>" + count(e.active_params) + " active of " + count(e.total_params)
        + "<br>loss " + num(e.predicted_loss, 4) + " (90% " + interval(e.predicted_loss_ci90, 4) + ")"
        + "<br>p_front " + num(e.p_front, 2) + "<br>decode " + num(e.decode_tokens_per_s) + " tok/s, prefill " + num(e.prefill_ms) + " ms"
        + "<br>weights " + bytes(e.weight_bytes) + ", peak " + bytes(e.peak_memory_bytes)),
      hovertemplate: "%{text}<extra></extra>",
      error_y: { type: "data", symmetric: false, array: part.map((e) => e.predicted_loss_ci90[1] - e.predicted_loss),
        arrayminus: part.map((e) => e.predicted_loss - e.predicted_loss_ci90[0]), thickness: 1, width: 2, color: "#8899aa" },
      error_x: hasX ? { type: "data", symmetric: false, array: part.map((e, i) => (xci[i] ? xci[i][1] - x[i] : 0)),
        arrayminus: part.map((e, i) => (xci[i] ? x[i] - xci[i][0] : 0)), thickness: 1, width: 2, color: "#aabbcc" } : undefined,
      marker: { symbol: moe ? "circle" : "square", size: 10, color: part.map((e) => e.p_front ?? 1), cmin: 0, cmax: 1,
        colorscale: "Viridis", showscale: moe, colorbar: { title: { text: "p_front" }, thickness: 12 },
        line: { width: 1, color: "#222" } },
    };
  });
  const latencyCalibrated = entries.some((e) => e.decode_tokens_per_s_ci90);
  const layout = {
    margin: { l: 64, r: 16, t: 8, b: 56 }, hovermode: "closest", legend: { orientation: "h", y: -0.22 },
    xaxis: { title: { text: decode ? "decode speed (tokens/s), higher is faster" : "prefill latency (ms for " + plan.prompt_tokens + " prompt tokens)" },
      type: decode ? "linear" : "log" },
    yaxis: { title: { text: "predicted loss (" + shortUnit(unit) + ")" } },
  };
  Plotly.react("front-plot", traces, layout, { responsive: true, displaylogo: false });
  const plot = $("front-plot");
  plot.removeAllListeners && plot.removeAllListeners("plotly_click");
  plot.on("plotly_click", (event) => { if (event.points.length) openStory(plan.pareto[event.points[0].customdata]); });
  $("front-legend").textContent = "Points: median predicted loss with its 90% interval (bars), coloured by p_front, the share of the law's "
    + plan.loss_samples + " samples in which the shape is non-dominated. Latency: " + (latencyCalibrated
      ? "90% interval from the backend's calibration (horizontal bars)."
      : "no interval (uncalibrated prior): the " + plan.backend + " backend of " + plan.device + " rests on priors.")
    + " Hypervolume " + num(plan.hypervolume) + " (objectives scaled to [0, 1] over the " + plan.feasible_shapes
    + " feasible shapes, reference point 1.1 per axis; the exact front's is " + num(plan.exact_hypervolume) + ").";
  frontTable(entries);
}

function frontTable(entries) {
  const header = ["shape", "code", "scheme", "active / total", "loss (" + shortUnit(state.plan.loss_unit) + ")", "90% interval", "p_front",
    "decode tok/s", "prefill ms", "peak memory", ""];
  const rows = entries.map((e) => {
    const open = el("button", "story"); open.type = "button"; open.className = "open-story";
    open.addEventListener("click", () => openStory(e));
    return [e.arch.name, shapeCode(e), e.scheme || e.precision, count(e.active_params) + " / " + count(e.total_params),
      num(e.predicted_loss, 4), interval(e.predicted_loss_ci90, 4), num(e.p_front, 2),
      num(e.decode_tokens_per_s) + (e.decode_tokens_per_s_ci90 ? " (" + interval(e.decode_tokens_per_s_ci90) + ")" : ""),
      num(e.prefill_ms), bytes(e.peak_memory_bytes), open];
  });
  table($("front-table"), header, rows);
}

// --- a shape's story -------------------------------------------------------------------------
function storyBody(entry) {
  const r = state.request || {};
  const body = { arch: entry.arch, device: state.plan.device, backend: state.plan.backend, precision: entry.precision,
    train_tokens: state.plan.train_tokens, samples: state.plan.loss_samples, prompt_tokens: state.plan.prompt_tokens,
    context_tokens: state.plan.context_tokens, quant_method: state.plan.quant_method || "rtn" };
  if (r.law_card) body.law_card = r.law_card;
  if (r.schemes) body.scheme = entry.scheme;
  if (r.seed !== undefined) body.seed = r.seed;
  return body;
}

async function openStory(entry) {
  try {
    const story = await api("POST", "v1/shapes/story", storyBody(entry));
    story.entry = entry;
    state.story = story;
    drawStory(story);
  } catch (error) {
    $("story").hidden = false;
    $("story-title").textContent = "cannot tell this shape's story: " + error.message;
  }
}

function drawStory(story) {
  $("story").hidden = false;
  $("story-title").textContent = "A shape's story: " + story.name;
  const a = story.accounting;
  table($("story-arch"), null, [
    ["layers / width", a.n_layers + " × " + a.d_model],
    ["attention heads (kv)", a.n_heads + " (" + a.n_kv_heads + "), head dim " + a.head_dim],
    ["dense MLP width d_ff", a.d_ff],
    ["expansion E / top-k k / granularity G", a.n_experts + " / " + a.top_k + " / " + a.granularity],
    ["routed experts (physical, E·G)", a.n_routed_experts],
    ["selected per token (physical, k·G)", a.routed_top_k],
    ["expert width", a.expert_d_ff], ["shared experts (width)", a.n_shared_experts + " (" + a.shared_expert_d_ff + ")"],
    ["MoE layers", a.n_moe_layers + " of " + a.n_layers],
    ["parameters total / active", count(a.total_params) + " / " + count(a.active_params)],
    ["embedding / non-embedding", count(a.embedding_params) + " / " + count(a.non_embedding_params)],
    ["FLOPs per token (forward)", count(a.flops_per_token)], ["KV cache per token", bytes(a.kv_cache_bytes_per_token)],
  ]);
  const m = story.memory;
  const parts = Object.entries(m.weights_by_part_bytes).map(([part, value]) => ["weights: " + part, value]);
  const pieces = [...parts, ["KV cache (" + m.context_tokens + " tokens)", m.kv_cache_bytes],
    ["activations (" + m.prompt_tokens + "-token prefill)", m.activation_bytes], ["runtime", m.runtime_bytes]];
  table($("story-memory"), ["part", "bytes"], [...pieces.map(([k, v]) => [k, bytes(v)]), ["peak", bytes(m.peak_memory_bytes)],
    ["usable on the device", bytes(m.usable_memory_bytes)]]);
  Plotly.react("story-memory-plot", pieces.map(([k, v]) => ({ type: "bar", orientation: "h", name: k, y: ["peak memory"], x: [v / 1e9],
    hovertemplate: k + ": %{x:.3f} GB<extra></extra>" })), { barmode: "stack", margin: { l: 90, r: 8, t: 4, b: 40 }, height: 230,
    legend: { orientation: "h", y: -0.5, font: { size: 10 } }, xaxis: { title: { text: "GB (10^9 bytes)" } } }, { displayModeBar: false, responsive: true });
  const lat = story.latency;
  $("story-latency-note").textContent = lat.device + ", " + lat.backend + " backend (" + lat.runtime + "); decode "
    + num(lat.decode.tokens_per_s) + " tokens/s (" + interval(lat.decode.tokens_per_s_ci90) + "), prefill "
    + num(lat.prefill.total_ms) + " ms (" + interval(lat.prefill.ci90_ms) + ") for " + lat.prompt_tokens + " tokens.";
  const termNames = lat.prefill.terms.map((t) => t.term);
  lat.decode.terms.forEach((t) => { if (!termNames.includes(t.term)) termNames.push(t.term); });
  const byTerm = (phase, name) => (lat[phase].terms.find((t) => t.term === name) || { ms: 0 });
  Plotly.react("story-latency-plot", ["prefill", "decode"].map((phase) => ({ type: "bar", name: phase + " (ms)", x: termNames,
    y: termNames.map((n) => byTerm(phase, n).ms) })), { barmode: "group", margin: { l: 56, r: 8, t: 4, b: 90 }, height: 240,
    yaxis: { title: { text: "ms" }, type: "log" }, legend: { orientation: "h", y: 1.15 } }, { displayModeBar: false, responsive: true });
  table($("story-latency"), ["cost term", "prefill ms", "decode ms", "rests on"], termNames.map((name) => {
    const term = lat.prefill.terms.find((t) => t.term === name) || lat.decode.terms.find((t) => t.term === name);
    const states = {};
    term.inputs.forEach((f) => { states[f.state] = (states[f.state] || 0) + 1; });
    const rests = term.state + " (" + Object.entries(states).map(([k, v]) => v + " " + k).join(", ") + ")";
    const cell = el("span", rests, "state state-" + term.state);
    cell.title = term.inputs.map((f) => f.key + " = " + f.value + " [" + f.state + "]: " + f.source).join("\n");
    return [term.label, num(byTerm("prefill", name).ms), num(byTerm("decode", name).ms), cell];
  }));
  const loss = story.loss;
  $("story-loss-note").textContent = "Predicted loss " + num(loss.median, 4) + " " + loss.unit + " (90% " + interval(loss.ci90, 4)
    + ") at " + num(loss.train_tokens, 2) + " " + (loss.tokens_unit || "tokens") + ", card " + loss.law_card
    + (loss.dense_equivalent_params ? "; dense-equivalent size " + count(loss.dense_equivalent_params) + " of " + count(loss.active_params) + " active" : "")
    + ". Each step: the loss with the card's terms up to it less the loss without it (paired samples).";
  table($("story-loss"), ["term", "step (" + shortUnit(loss.unit) + ")", "90% interval", "extrapolation (× past its data)", "evidence"], loss.terms.map((t) => {
    const ratios = Object.entries(t.extrapolation || {}).map(([k, v]) => k + " " + num(v, 3) + "×").join(", ") || "-";
    const evidence = Object.keys(t.evidence || {}).length ? Object.entries(t.evidence).filter(([, v]) => typeof v !== "object")
      .map(([k, v]) => k + ": " + v).join("; ") : "";
    return [t.label || t.term, num(t.step, 4), interval(t.ci90, 3), ratios, (t.source || "") + (evidence ? " — " + evidence : "")];
  }));
  const toml = new Blob([story.downloads.arch_toml], { type: "application/toml" });
  $("dl-toml").href = URL.createObjectURL(toml); $("dl-toml").download = story.name + ".toml";
  const hf = new Blob([JSON.stringify(story.downloads.hf_config, null, 2)], { type: "application/json" });
  $("dl-hf").href = URL.createObjectURL(hf); $("dl-hf").download = story.name + ".config.json";
  $("dl-gguf-status").textContent = "";
}

// The GGUF is written by the server (POST /v1/shapes/gguf) and sent with the bearer token, so it
// is fetched as a blob rather than linked.
async function downloadGGUF(event) {
  event.preventDefault();
  if (!state.story) return;
  const status = $("dl-gguf-status");
  status.textContent = "writing the GGUF…";
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  try {
    const response = await fetch("v1/shapes/gguf", { method: "POST", headers, body: JSON.stringify({ arch: state.story.arch, type: "q4_0" }) });
    if (!response.ok) {
      let detail = response.status + " " + response.statusText;
      try { const problem = await response.json(); if (problem.detail) detail = String(problem.detail); } catch (error) { /* not JSON */ }
      status.textContent = detail;
      return;
    }
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = state.story.name + ".q4_0.gguf";
    link.click();
    status.textContent = "sha256 " + (response.headers.get("X-Moeplan-Sha256") || "?");
  } catch (error) {
    status.textContent = String(error.message || error);
  }
}

// --- two shapes side by side -----------------------------------------------------------------
function addToComparison() {
  if (!state.story) return;
  state.compare = [...state.compare.filter((s) => s.name !== state.story.name), state.story].slice(-2);
  drawComparison();
}

function drawComparison() {
  $("compare").hidden = state.compare.length === 0;
  const rows = [
    ["predicted loss", (s) => num(s.loss.median, 4) + " (" + interval(s.loss.ci90, 4) + ") " + s.loss.unit],
    ["p_front", (s) => num(s.entry.p_front, 2)],
    ["layers × width", (s) => s.accounting.n_layers + " × " + s.accounting.d_model],
    ["E / k / G / shared", (s) => s.accounting.n_experts + " / " + s.accounting.top_k + " / " + s.accounting.granularity + " / " + s.accounting.n_shared_experts],
    ["routed experts (physical) / selected", (s) => s.accounting.n_routed_experts + " / " + s.accounting.routed_top_k],
    ["parameters total / active", (s) => count(s.accounting.total_params) + " / " + count(s.accounting.active_params)],
    ["weights", (s) => bytes(s.memory.weight_bytes)], ["KV cache", (s) => bytes(s.memory.kv_cache_bytes)],
    ["peak memory", (s) => bytes(s.memory.peak_memory_bytes)],
    ["decode tokens/s", (s) => num(s.latency.decode.tokens_per_s) + " (" + interval(s.latency.decode.tokens_per_s_ci90) + ")"],
    ["prefill ms", (s) => num(s.latency.prefill.total_ms) + " (" + interval(s.latency.prefill.ci90_ms) + ")"],
  ];
  const terms = [...new Set(state.compare.flatMap((s) => s.loss.terms.map((t) => t.term)))];
  terms.forEach((term) => rows.push(["loss step: " + term, (s) => {
    const t = s.loss.terms.find((x) => x.term === term); return t ? num(t.step, 4) : "-";
  }]));
  table($("compare-table"), ["", ...state.compare.map((s) => s.name)], rows.map(([label, f]) => [label, ...state.compare.map(f)]));
}

// --- the law card ----------------------------------------------------------------------------
async function loadCard() {
  const name = $("card-select").value || "default";
  try {
    const card = await api("GET", "v1/cards/" + encodeURIComponent(name));
    $("card-title").textContent = "Law card " + card.name + ": loss in " + card.loss_unit.per + (card.loss_unit.tokenizer ? " (" + card.loss_unit.tokenizer + ")" : "");
    $("card-notes").textContent = card.notes || "";
    const plots = clear($("card-plots"));
    card.curves.forEach((curve, index) => {
      const div = el("div", null, "plot small"); div.id = "card-curve-" + index; plots.appendChild(div);
      const shapes = curve.data_range ? [{ type: "rect", xref: "x", yref: "paper", x0: curve.data_range[0], x1: curve.data_range[1], y0: 0, y1: 1,
        fillcolor: "#d9ead3", opacity: 0.5, line: { width: 0 } }] : [];
      const at = Object.entries(curve.at).map(([k, v]) => k + " = " + num(v, 2)).join(", ");
      Plotly.newPlot(div, [
        { x: curve.x, y: curve.ci90[1], mode: "lines", line: { width: 0 }, showlegend: false, hoverinfo: "skip" },
        { x: curve.x, y: curve.ci90[0], mode: "lines", fill: "tonexty", fillcolor: "rgba(31,119,180,0.2)", line: { width: 0 }, name: "90% band" },
        { x: curve.x, y: curve.median, mode: "lines+markers", name: "median", line: { color: "#1f77b4" } },
      ], { title: { text: curve.term + " (at " + at + "; green: its data)", font: { size: 12 } }, height: 260, margin: { l: 60, r: 8, t: 30, b: 44 },
        xaxis: { title: { text: curve.x_label }, type: curve.x_log ? "log" : "linear" }, yaxis: { title: { text: curve.y_label } }, shapes,
        legend: { orientation: "h", y: -0.3 } }, { displayModeBar: false, responsive: true });
    });
    const terms = clear($("card-terms"));
    Object.entries(card.terms).forEach(([kind, term]) => {
      terms.appendChild(el("h3", kind + ": " + term.source));
      if (term.range) terms.appendChild(el("p", "fitted on: " + Object.entries(term.range).map(([k, v]) => k + " " + num(v[0]) + "–" + num(v[1])).join(", "), "note"));
      const rows = [];
      Object.entries(term.forms).forEach(([form, body]) => Object.entries(body.params).forEach(([param, value]) => {
        rows.push([form + (Object.keys(term.forms).length > 1 ? " (weight " + num(body.weight, 2) + ")" : ""), param, num(value, 5), interval(body.ci90[param], 4)]);
      }));
      table(terms.appendChild(el("table")), ["form", "parameter", "value", "90% interval"], rows);
      if (term.backtest) terms.appendChild(el("p", "backtest: " + JSON.stringify(term.backtest), "note"));
      if (term.notes) terms.appendChild(el("p", "note: " + term.notes, "note"));
    });
  } catch (error) { $("card-title").textContent = "cannot load the card: " + error.message; }
}

// --- the run store ---------------------------------------------------------------------------
async function loadRuns() {
  try {
    const runs = await api("GET", "v1/runs");
    const rows = runs.map((r) => {
      const open = el("button", "open"); open.type = "button"; open.addEventListener("click", () => openRun(r.id));
      return [r.id, r.sweep, r.status, count(r.active_params) + " / " + count(r.total_params), r.n_experts, r.top_k, count(r.tokens),
        r.final_val_loss === null ? "-" : num(r.final_val_loss, 4), open];
    });
    table($("runs-table"), ["id", "sweep", "status", "active / total", "E", "k", "tokens", "final val loss (nats/byte)", ""], rows);
  } catch (error) { table($("runs-table"), ["error"], [[error.message]]); }
}

async function openRun(id) {
  const run = await api("GET", "v1/runs/" + encodeURIComponent(id));
  $("run-detail").hidden = false;
  $("run-title").textContent = "Run " + run.id + " (" + run.status + ")";
  const points = run.metrics || [];
  Plotly.react("run-curve", [
    { x: points.map((p) => p.tokens), y: points.map((p) => p.train_loss), name: "train", mode: "lines" },
    { x: points.filter((p) => p.val_loss !== null).map((p) => p.tokens), y: points.filter((p) => p.val_loss !== null).map((p) => p.val_loss), name: "validation", mode: "lines+markers" },
  ], { height: 260, margin: { l: 60, r: 8, t: 8, b: 44 }, xaxis: { title: { text: "training tokens" } }, yaxis: { title: { text: "loss (nats/byte)" } } },
  { displayModeBar: false, responsive: true });
  const routing = run.routing || [];
  if (!routing.length) { table($("run-routing"), ["expert utilisation"], [["dense run, or no routing recorded"]]); return; }
  const last = Math.max(...routing.map((r) => r.step));
  const final = routing.filter((r) => r.step === last);
  const experts = final[0].shares.length;
  table($("run-routing"), ["layer", ...final[0].shares.map((_, i) => "e" + i), "entropy", "max/mean", "dead"],
    final.map((r) => [r.layer, ...r.shares.map((s) => s.toFixed(3)), num(r.entropy), num(r.max_over_mean), (100 * r.dead_fraction).toFixed(0) + "%"]));
  $("run-routing").querySelector("tbody").appendChild(el("tr")).appendChild(el("td", "each expert's share of tokens at step " + last + " (uniform = " + (1 / experts).toFixed(3) + ")"));
}

// --- device profiles -------------------------------------------------------------------------
async function loadDevice() {
  const name = $("device-select").value;
  if (!name) return;
  const detail = clear($("device-detail"));
  try {
    const device = await api("GET", "v1/devices/" + encodeURIComponent(name));
    detail.appendChild(el("p", device.description + " · usable " + bytes(device.usable_bytes) + " of " + bytes(device.dram_bytes)
      + " · bandwidth " + num(device.bandwidth_bytes_per_s / 1e9) + " GB/s", "note"));
    const shared = Object.entries(device.shared).map(([k, f]) => [k, num(f.value, 4), f.state, f.basis, f.source]);
    table(detail.appendChild(el("table")), ["device-wide number", "value", "state", "basis", "source"], shared);
    Object.entries(device.backends_detail).forEach(([backend, info]) => {
      detail.appendChild(el("h3", backend + (backend === device.recommended_backend ? " (recommended)" : "") + ": " + info.runtime));
      table(detail.appendChild(el("table")), ["number", "value", "state", "basis", "source"],
        Object.entries(info.facts).map(([k, f]) => [k, num(f.value, 4), el("span", f.state, "state state-" + f.state), f.basis, f.source]));
      const c = info.calibration;
      detail.appendChild(el("p", c ? "calibration: fitted " + c.terms.join(", ") + " on " + c.rows.length + " rows (" + c.replicates + " bootstrap replicates). " + c.note
        : "no calibration: this backend's latency rests on priors (no interval)", "note"));
      if (c) table(detail.appendChild(el("table")), ["measurement rows cited"], c.rows.map((r) => [r]));
    });
  } catch (error) { detail.appendChild(el("p", "cannot load the device: " + error.message, "error")); }
}

// --- start -----------------------------------------------------------------------------------
async function start() {
  const [health, devices, cards, schemes] = await Promise.all([api("GET", "v1/health"), api("GET", "v1/devices"),
    api("GET", "v1/cards"), api("GET", "v1/schemes")]);
  setupToken(health.auth);
  state.devices = devices;
  const select = $("f-device"), deviceSelect = $("device-select");
  devices.forEach((d) => { const o = el("option", d.name); o.value = d.name; select.appendChild(o); deviceSelect.appendChild(el("option", d.name)); });
  select.value = devices.some((d) => d.name === "iphone-16-pro") ? "iphone-16-pro" : devices[0].name;
  fillBackends();
  cards.forEach((c) => { $("f-card").appendChild(el("option", c)); $("card-select").appendChild(el("option", c)); });
  $("f-card").value = cards.includes("default") ? "default" : cards[0];
  $("card-select").value = $("f-card").value;
  schemes.forEach((s) => {
    const label = el("label"), box = el("input"); box.type = "checkbox"; box.value = s;
    label.appendChild(box); label.appendChild(document.createTextNode(" " + s)); $("f-schemes").appendChild(label);
  });
  select.addEventListener("change", fillBackends);
  $("plan-form").addEventListener("submit", submitPlan);
  $("cancel").addEventListener("click", cancelJob);
  document.querySelectorAll(".mobilemoe").forEach((b) => b.addEventListener("click", mobileMoE));
  $("x-axis").addEventListener("change", drawFront);
  $("p-filter").addEventListener("input", drawFront);
  $("compare-add").addEventListener("click", addToComparison);
  $("dl-gguf").addEventListener("click", downloadGGUF);
  $("compare-clear").addEventListener("click", () => { state.compare = []; drawComparison(); });
  $("card-select").addEventListener("change", loadCard);
  $("device-select").addEventListener("change", loadDevice);
  window.addEventListener("hashchange", showView);
  showView();
}

window.moeplanState = state;  // read by the browser test
start().catch((error) => { $("form-error").textContent = "cannot reach the API: " + error.message; });
