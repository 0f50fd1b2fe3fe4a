// Cadenza Studio: the page's side. It talks to the studio server's JSON API (studio.py)
// and draws every piano roll as SVG from the notes: [start s, end s, pitch, velocity, primer].
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, start: null, compare: [] };  // compare: the ticked takes
const SVG = "http://www.w3.org/2000/svg";

function noteName(p) { return state.info ? state.info.note_names[p] : String(p); }

function say(text, kind) {
  const m = $("message");
  m.textContent = text || "";
  m.className = kind || "";
  m.hidden = !text;
}

// this page's id: the studio shares its queue fairly between pages (--max-queue)
const PAGE = Math.random().toString(36).slice(2) + Date.now().toString(36);

async function api(path, options) {
  options = options || {};
  if (options.method === "POST") options.headers = { ...(options.headers || {}), "Cadenza-Page": PAGE };
  const r = await fetch(path, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

function postJSON(path, obj) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                     body: JSON.stringify(obj) });
}

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k) e.append(k);
  return e;
}

function svgEl(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

// A piano roll: time in seconds across, pitch up, every C labelled with its note name.
// opts.split: a dashed line (where the primer ends); opts.keep: notes starting later are grey.
function roll(notes, opts) {
  opts = opts || {};
  const W = opts.width || 1000, H = 230, L = 38, B = 20, T = 6, R = 24;
  let end = Math.max(1, opts.minSeconds || 0);
  let lo = 127, hi = 0;
  for (const n of notes) { end = Math.max(end, n[1]); lo = Math.min(lo, n[2]); hi = Math.max(hi, n[2]); }
  if (!notes.length) { lo = 48; hi = 84; }
  lo -= 2; hi += 2;
  if (hi - lo < 24) { const c = (hi + lo) / 2; lo = Math.floor(c - 12); hi = lo + 24; }
  const x = (t) => L + (t / end) * (W - L - R);
  const rowH = (H - B - T) / (hi - lo + 1);
  const y = (p) => T + (hi - p) * rowH;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, class: "roll", role: "img" });
  svg.setAttribute("aria-label", opts.label || "piano roll");
  for (let p = lo; p <= hi; p++) {
    if (p % 12 !== 0) continue;
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(p) + rowH, y2: y(p) + rowH, class: "c-line" }));
    const t = svgEl("text", { x: 2, y: y(p) + rowH });
    t.textContent = noteName(p);
    svg.append(t);
  }
  const steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300];
  const step = steps.find((s) => end / s <= 12) || 600;
  for (let s = 0; s <= end + 1e-9; s += step) {
    svg.append(svgEl("line", { x1: x(s), x2: x(s), y1: T, y2: H - B, class: "grid-line" }));
    const t = svgEl("text", { x: x(s) + 2, y: H - 5 });
    t.textContent = `${+s.toFixed(1)} s`;
    svg.append(t);
  }
  for (const [s, e, p, v, primer] of notes) {
    const dropped = opts.keep !== undefined && opts.keep > 0 && s >= opts.keep;
    const cls = dropped ? "dropped" : (primer ? "primer" : "cont");
    const r = svgEl("rect", { x: x(s), y: y(p) + rowH * 0.1, width: Math.max(1.5, x(e) - x(s)),
                              height: Math.max(1, rowH * 0.8), class: `note ${cls}` });
    const tip = svgEl("title", {});
    tip.textContent = `${noteName(p)} · ${s.toFixed(2)}–${e.toFixed(2)} s · velocity ${v}`;
    r.append(tip);
    svg.append(r);
  }
  const split = opts.keep !== undefined ? opts.keep : opts.split;
  if (split > 0) svg.append(svgEl("line", { x1: x(split), x2: x(split), y1: T, y2: H - B, class: "split" }));
  return svg;
}

// --- models, pieces, defaults --------------------------------------------------------

async function loadInfo() {
  const info = await api("/api/info");
  state.info = info;
  const sel = $("model");
  for (const m of info.models) {
    sel.append(el("option", { value: m.id, text: m.name }));
  }
  sel.addEventListener("change", showModel);
  showModel();
  for (const p of info.pieces) $("piece").append(el("option", { value: p.id, text: p.name }));
  const form = $("settings");
  for (const [name, d] of Object.entries(info.defaults)) {
    const input = form.elements[name];
    if (!input) continue;
    if (input.type === "checkbox") input.checked = d.default === true;
    else input.value = d.default === null ? "" : d.default;
    input.title = d.help;
  }
  form.elements.num_samples.max = info.limits.max_takes;
  form.elements.seconds.max = info.limits.max_seconds;
  $("upload-limit").textContent = `(MIDI up to ${info.limits.max_upload_mb} MB)`;
  if (info.audio_missing) say(`No audio in this studio: ${info.audio_missing}. MIDI and piano rolls still work.`, "info");
}

function showModel() {
  const m = state.info.models.find((x) => x.id === $("model").value);
  if (!m) return;
  const params = m.parameters ? `${(m.parameters / 1e6).toFixed(1)}M parameters` : "";
  const nll = m.val_nll != null ? `validation NLL ${m.val_nll.toFixed(3)} nats/token` : "";
  $("model-info").textContent = [m.tokenizer + " tokens", params, nll].filter(Boolean).join(" · ");
}

// --- the start ---------------------------------------------------------------------------

function setStart(start) {
  state.start = start;
  $("start").hidden = !start;
  if (!start) return;
  $("start-name").textContent = start.name;
  $("start-length").textContent = `${start.seconds.toFixed(1)} s, ${start.notes.length} notes`;
  // a short piece (or a take to continue) is kept whole; of a long one, the first 10 s
  const whole = Math.ceil(start.seconds * 2) / 2;
  const keep = start.from_take || whole <= 20 ? whole : 10;
  for (const id of ["keep", "keep-range"]) { $(id).max = whole; $(id).value = keep; }
  const audio = $("start-audio");
  audio.hidden = !start.audio;
  if (start.audio) audio.src = start.audio; else audio.removeAttribute("src");
  drawStart();
}

function drawStart() {
  if (!state.start) return;
  const box = $("start-roll");
  box.replaceChildren(roll(state.start.notes, { keep: +$("keep").value, label: "start piano roll" }));
}

async function upload(file) {
  say("");
  try {
    const q = new URLSearchParams({ name: file.name });
    setStart(await api(`/api/starts?${q}`, { method: "POST", body: file,
                                             headers: { "Content-Type": "application/octet-stream" } }));
  } catch (e) { say(e.message); }
}

// --- generating --------------------------------------------------------------------------

function settings() {
  const f = $("settings").elements, out = {};
  for (const name of ["seconds", "temperature", "top_p", "top_k", "seed", "num_samples",
                      "max_polyphony", "density", "max_repeats"]) {
    if (f[name].value !== "") out[name] = Number(f[name].value);
  }
  for (const name of ["key", "pitch_range", "velocity_range"]) {
    if (f[name].value.trim() !== "") out[name] = f[name].value.trim();
  }
  if (f.may_end.checked) out.may_end = true;
  return out;
}

async function generate() {
  say("");
  const body = { model: $("model").value, sample: settings(),
                 start: state.start ? state.start.id : null,
                 primer_seconds: state.start ? Number($("keep").value) : 0 };
  $("generate").disabled = true;
  $("progress").hidden = false;
  $("progress").value = 0;
  try {
    let job = await postJSON("/api/jobs", body);
    $("cancel").hidden = false;
    $("cancel").onclick = () => postJSON(`/api/jobs/${job.id}/cancel`, {}).catch((e) => say(e.message));
    while (!["done", "failed", "cancelled"].includes(job.state)) {
      showJob(job);
      await new Promise((r) => setTimeout(r, 300));
      job = await api(`/api/jobs/${job.id}`);
    }
    if (job.state === "failed") throw new Error(job.error);
    if (job.state === "cancelled") { $("job-state").textContent = "cancelled"; return; }
    $("job-state").textContent = `${job.takes.length} take${job.takes.length > 1 ? "s" : ""} ready`;
    for (const t of job.takes) t.number = ++takeCount;
    for (const t of [...job.takes].reverse()) addTake(t);  // newest job first, its takes in order
  } catch (e) {
    say(e.message);
    $("job-state").textContent = "";
  } finally {
    $("generate").disabled = false;
    $("progress").hidden = true;
    $("cancel").hidden = true;
  }
}

function showJob(job) {
  $("progress").value = job.progress;
  $("job-state").textContent = job.state === "queued"
    ? `waiting for ${job.ahead} earlier request${job.ahead === 1 ? "" : "s"}…`
    : job.state === "writing" ? "writing MIDI, audio and piano rolls…"
    : `generating… ${Math.round(job.progress * 100)}%`;
}

let takeCount = 0;

function controlsText(s) {
  const parts = [];
  if (s.key) parts.push(`key ${s.key}`);
  if (s.pitch_range) parts.push(`pitches ${s.pitch_range}`);
  if (s.velocity_range) parts.push(`velocities ${s.velocity_range}`);
  if (s.max_polyphony) parts.push(`at most ${s.max_polyphony} at once`);
  if (s.density) parts.push(`aiming at ${s.density} notes/s`);
  if (s.max_repeats) parts.push(`at most ${s.max_repeats} repeats`);
  return parts.join(" · ");
}

function takeCard(t, compact, minSeconds) {
  const s = t.settings;
  const title = `Take ${t.number}`;
  const card = el("article", { class: "card take", "data-take": `${t.job}-${t.take}` });
  const head = el("div", { class: "card-head" }, el("strong", { text: title }),
    el("span", { class: "muted", text: `${t.primer_seconds.toFixed(1)} s of ${t.start || "silence"} + ${t.new_seconds.toFixed(1)} s new · ${t.model}` }));
  card.append(head);
  const box = el("div", { class: "roll-box" });
  box.append(roll(t.notes, { split: t.primer_seconds, label: `${title} piano roll`,
                            width: compact ? 600 : 1000, minSeconds }));
  card.append(box);
  const row = el("div", { class: "row" });
  if (t.wav) row.append(el("audio", { controls: "", preload: "metadata", src: t.wav }));
  else row.append(el("span", { class: "muted", text: "no audio (FluidSynth not available); the MIDI has it all" }));
  card.append(row);
  if (compact) return card;
  const mem = t.memorization
    ? `memorization: longest run copied from the training data ${t.memorization.longest_copied_notes} notes, ` +
      `${(100 * Object.entries(t.memorization).find(([k]) => k.startsWith("copied_"))[1]).toFixed(1)}% of its 8-note n-grams`
    : "memorization: not measured (the model's training data is not on this computer)";
  card.append(el("div", { class: "meta" },
    el("span", { text: `seed ${s.seed}, take ${t.take + 1} of ${s.num_samples}` }),
    el("span", { text: `temperature ${s.temperature} · top-p ${s.top_p} · top-k ${s.top_k}` }),
    el("span", { text: `${Math.round(t.tokens_per_second)} tokens/s` }),
    el("span", { class: "stopped", text: `stopped: ${t.stopped_why}` }),
    ...(controlsText(s) ? [el("span", { text: controlsText(s) })] : []),
    el("span", { class: "memorization", text: mem })));
  const links = el("div", { class: "row links" },
    el("a", { href: t.midi, download: `take-${t.number}.mid`, class: "midi-link", text: "MIDI" }),
    t.wav ? el("a", { href: t.wav, download: `take-${t.number}.wav`, text: "WAV" }) : null,
    el("a", { href: t.png, download: `take-${t.number}.png`, text: "PNG" }));
  const cont = el("button", { type: "button", class: "continue", text: "Continue this take" });
  cont.addEventListener("click", () => continueTake(t));
  const cmp = el("input", { type: "checkbox", class: "compare-box" });
  cmp.addEventListener("change", () => toggleCompare(t, cmp));
  links.append(cont, el("label", {}, cmp, document.createTextNode(" compare")));
  card.append(links);
  const det = el("details", {}, el("summary", { text: "the same take from the command line" }),
    el("code", { text: t.command }));
  card.append(det);
  return card;
}

function addTake(t) {
  $("no-takes").hidden = true;
  $("takes").prepend(takeCard(t, false));
}

async function continueTake(t) {
  say("");
  try {
    const start = await postJSON("/api/starts/from-take", { job: t.job, take: t.take });
    start.from_take = true;
    setStart(start);
    $("start-section").scrollIntoView({ behavior: "smooth" });
  } catch (e) { say(e.message); }
}

function toggleCompare(t, box) {
  if (box.checked) {
    state.compare.push({ t, box });
    while (state.compare.length > 2) { const old = state.compare.shift(); old.box.checked = false; }
  } else {
    state.compare = state.compare.filter((c) => c.t !== t);
  }
  drawCompare();
}

function drawCompare() {
  const show = state.compare.length === 2;
  $("compare-section").hidden = !show;
  if (!show) return;
  // one time axis for both, so that the same second sits at the same place
  const end = Math.max(...state.compare.flatMap((c) => c.t.notes.map((n) => n[1])));
  $("compare").replaceChildren(...state.compare.map((c) => takeCard(c.t, true, end)));
}

// --- wiring ------------------------------------------------------------------------------

window.addEventListener("DOMContentLoaded", async () => {
  try { await loadInfo(); } catch (e) { say(`The studio server did not answer: ${e.message}`); }
  $("upload").addEventListener("change", (ev) => {
    if (ev.target.files.length) upload(ev.target.files[0]);
    ev.target.value = "";
  });
  $("use-piece").addEventListener("click", async () => {
    say("");
    try { setStart(await postJSON("/api/starts/builtin", { piece: $("piece").value })); }
    catch (e) { say(e.message); }
  });
  $("from-nothing").addEventListener("click", () => setStart(null));
  $("keep").addEventListener("input", () => { $("keep-range").value = $("keep").value; drawStart(); });
  $("keep-range").addEventListener("input", () => { $("keep").value = $("keep-range").value; drawStart(); });
  $("generate").addEventListener("click", generate);
  $("close-compare").addEventListener("click", () => {
    for (const c of state.compare) c.box.checked = false;
    state.compare = []; drawCompare();
  });
});
