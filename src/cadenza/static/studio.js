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

// this page's id, issued by the server (/api/info): the studio shares its queue fairly
// between pages (--max-queue)
let PAGE = "";

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
  for (const [a, b, label] of opts.chords || []) {  // the chords asked for, written over the roll
    if (label === "N" || a >= end) continue;
    const g = svgEl("g", {}), tip = svgEl("title", {}), t = svgEl("text", { x: x(a) + 2, y: T + 11, class: "chord" });
    tip.textContent = `${label} · ${a.toFixed(2)}–${b.toFixed(2)} s`;
    t.textContent = label;
    g.append(tip, svgEl("line", { x1: x(a), x2: x(a), y1: T, y2: T + 14, class: "chord-line" }), t);
    svg.append(g);
  }
  const split = opts.keep !== undefined ? opts.keep : opts.split;
  if (split > 0) svg.append(svgEl("line", { x1: x(split), x2: x(split), y1: T, y2: H - B, class: "split" }));
  if (opts.span) {
    svg.append(svgEl("rect", { x: x(opts.span[0]), y: T, width: x(opts.span[1]) - x(opts.span[0]),
                               height: H - B - T, class: "span" }));
  }
  if (opts.onSpan) pickSpan(svg, (px) => Math.min(end, Math.max(0, (px - L) / (W - L - R) * end)),
                            x, T, H - B, opts.onSpan);
  return svg;
}

function pickSpan(svg, timeAt, x, top, bottom, done) {
  // drag across a roll to choose a span: its times go to done(start, end)
  svg.classList.add("pickable");
  const toSvg = (ev) => { const p = svg.createSVGPoint(); p.x = ev.clientX; p.y = ev.clientY;
                          return p.matrixTransform(svg.getScreenCTM().inverse()).x; };
  let from = null, box = null;
  svg.addEventListener("pointerdown", (ev) => {
    from = timeAt(toSvg(ev));
    box = svgEl("rect", { x: x(from), y: top, width: 0, height: bottom - top, class: "selecting" });
    svg.append(box);
    svg.setPointerCapture(ev.pointerId);
  });
  svg.addEventListener("pointermove", (ev) => {
    if (from === null) return;
    const t = timeAt(toSvg(ev));
    box.setAttribute("x", x(Math.min(from, t)));
    box.setAttribute("width", Math.abs(x(t) - x(from)));
  });
  svg.addEventListener("pointerup", (ev) => {
    if (from === null) return;
    const t = timeAt(toSvg(ev)), a = Math.min(from, t), b = Math.max(from, t);
    from = null;
    if (b - a >= 0.25) done(Math.round(a * 100) / 100, Math.round(b * 100) / 100);
    else box.remove();
  });
}

// --- models, pieces, defaults --------------------------------------------------------

async function loadInfo() {
  const info = await api("/api/info");
  state.info = info;
  PAGE = info.page;
  controlInputs(info.controls);
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
  // the styles this model knows (trained on `prepare --tags` data); none: "any" only
  const style = $("style"), kept = style.value;
  style.replaceChildren(el("option", { value: "", text: "any" }),
                        ...(m.styles || []).map((n) => el("option", { value: n, text: n })));
  style.value = (m.styles || []).includes(kept) ? kept : "";
  style.disabled = !(m.styles || []).length;
  $("guidance").disabled = style.disabled;
}

// --- the start ---------------------------------------------------------------------------

function setStart(start) {
  state.start = start;
  state.span = null;
  $("infill").disabled = true;
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
  box.replaceChildren(roll(state.start.notes, { keep: +$("keep").value, label: "start piano roll",
                                                span: state.span, onSpan: chooseSpan }));
}

function chooseSpan(a, b) {
  state.span = [a, b];
  $("infill").disabled = false;
  $("span-label").textContent = `${a.toFixed(2)}–${b.toFixed(2)} s: the notes that start there are regenerated`;
  drawStart();
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

// the controls' inputs, one per field the server lists (a new control is a new input)
const CONTROL_HINTS = { key: "e.g. D minor", pitch_range: "e.g. C3-C6", velocity_range: "e.g. 40-90",
                        chords: "e.g. Dm7 G7 | Cmaj7" };

function controlInputs(controls) {
  const box = $("control-fields");
  for (const c of controls) {
    const input = el("input", { name: c.name, type: c.kind, title: c.help,
                                placeholder: CONTROL_HINTS[c.name] || "any" });
    if (c.kind === "number") { input.step = c.step; input.min = 0; }
    box.append(el("label", { title: c.help }, document.createTextNode(c.label + " "), input));
  }
}

function settings() {
  const f = $("settings").elements, out = {};
  const controls = state.info ? state.info.controls : [];
  const numbers = ["seconds", "temperature", "top_p", "top_k", "seed", "num_samples",
                   ...controls.filter((c) => c.kind === "number").map((c) => c.name)];
  for (const name of numbers) {
    if (f[name].value !== "") out[name] = Number(f[name].value);
  }
  // guidance steers toward a style: sent only with one (the server refuses it alone)
  if (f.style.value && f.guidance.value !== "") out.guidance = Number(f.guidance.value);
  const texts = ["style", ...controls.filter((c) => c.kind === "text").map((c) => c.name)];
  for (const name of texts) {
    if (f[name].value.trim() !== "") out[name] = f[name].value.trim();
  }
  for (const c of controls.filter((c) => c.kind === "checkbox")) {
    if (f[c.name].checked) out[c.name] = true;
  }
  if (f.may_end.checked) out.may_end = true;
  return out;
}

async function generate() {
  await runJob({ model: $("model").value, sample: settings(),
                 start: state.start ? state.start.id : null,
                 primer_seconds: state.start ? Number($("keep").value) : 0 });
}

async function regenerateSpan() {
  if (!state.start || !state.span) return;
  const sample = settings();
  delete sample.seconds; delete sample.may_end;
  await runJob({ model: $("model").value, sample, start: state.start.id,
                 span: { start: state.span[0], end: state.span[1] } });
}

async function runJob(body) {
  say("");
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
  if (s.style) parts.push(`style ${s.style}`);
  if (s.style && s.guidance !== undefined && s.guidance !== 1) parts.push(`guidance ${s.guidance}`);
  for (const c of (state.info ? state.info.controls : [])) {
    if (s[c.name]) parts.push(`${c.label.toLowerCase()} ${s[c.name]}`);
  }
  return parts.join(" · ");
}

function takeCard(t, compact, minSeconds) {
  const s = t.settings;
  const title = `Take ${t.number}`;
  const card = el("article", { class: "card take", "data-take": `${t.job}-${t.take}` });
  const head = el("div", { class: "card-head" }, el("strong", { text: title }),
    el("span", { class: "muted", text: t.span
      ? `${t.start}: ${t.span[0].toFixed(2)}–${t.span[1].toFixed(2)} s regenerated · ${t.model}`
      : `${t.primer_seconds.toFixed(1)} s of ${t.start || "silence"} + ${t.new_seconds.toFixed(1)} s new · ${t.model}` }));
  card.append(head);
  const box = el("div", { class: "roll-box" });
  box.append(roll(t.notes, { split: t.primer_seconds, label: `${title} piano roll`, span: t.span,
                            width: compact ? 600 : 1000, minSeconds, chords: t.chords }));
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
    ...(t.tokens_per_second ? [el("span", { text: `${Math.round(t.tokens_per_second)} tokens/s` })] : []),
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
  $("infill").addEventListener("click", regenerateSpan);
  $("close-compare").addEventListener("click", () => {
    for (const c of state.compare) c.box.checked = false;
    state.compare = []; drawCompare();
  });
});

// --- Play: a live duet with the model (live.py on the server) ------------------------------
// The page sends the notes it plays; Cadenza's answer comes back note by note as server-sent
// events and is played here with a small synthesized piano voice (WebAudio, nothing fetched).

const play = {
  id: null, events: null, audio: null, voices: {}, t0: 0,
  notes: [],            // {who: "you"|"cadenza", pitch, start, end} in page seconds
  lastPlayed: null,     // page time of the player's last event (for the page's latency)
  latencies: [],        // ms: the player's last event + the wait -> the first answer note
  waitingFirst: false,
  cadenzaNotes: 0,
  down: new Set(),
};
window.cadenzaPlay = play;  // the browser test reads it

const LOW = 48, HIGH = 83;  // the on-screen keys: C3..B5
const COMPUTER_KEYS = "awsedftgyhujk";  // C4..C5, as on a piano

function pageNow() { return performance.now() / 1000; }

function voiceOn(pitch, velocity, who) {
  if (!play.audio) return;
  voiceOff(pitch, who);
  const ctx = play.audio, t = ctx.currentTime;
  const f = 440 * Math.pow(2, (pitch - 69) / 12);
  const gain = ctx.createGain();
  const level = 0.05 + 0.25 * (velocity / 127);
  gain.gain.setValueAtTime(0, t);
  gain.gain.linearRampToValueAtTime(level, t + 0.005);
  gain.gain.exponentialRampToValueAtTime(level * 0.3, t + 1.2);  // a piano's decay
  gain.connect(ctx.destination);
  const oscs = [["triangle", 1, 1], ["sine", 2, 0.3], ["sine", 3, 0.1]].map(([type, h, g]) => {
    const o = ctx.createOscillator(), og = ctx.createGain();
    o.type = type; o.frequency.value = f * h; og.gain.value = g;
    o.connect(og); og.connect(gain); o.start(t);
    return o;
  });
  play.voices[`${who}${pitch}`] = { gain, oscs };
}

function voiceOff(pitch, who) {
  const v = play.voices[`${who}${pitch}`];
  if (!v || !play.audio) return;
  const t = play.audio.currentTime;
  v.gain.gain.cancelScheduledValues(t);
  v.gain.gain.setValueAtTime(v.gain.gain.value, t);
  v.gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.15);
  for (const o of v.oscs) o.stop(t + 0.2);
  delete play.voices[`${who}${pitch}`];
}

function keyEl(pitch) { return document.querySelector(`#keyboard .key[data-pitch="${pitch}"]`); }

function noteOn(pitch, velocity = 80) {
  if (!play.id || play.down.has(pitch)) return;
  play.down.add(pitch);
  play.lastPlayed = pageNow();
  play.notes.push({ who: "you", pitch, start: pageNow() - play.t0, end: null });
  voiceOn(pitch, velocity, "you");
  const k = keyEl(pitch); if (k) k.classList.add("down");
  sendNotes([[1, pitch, velocity]]);
}

function noteOff(pitch) {
  if (!play.id || !play.down.has(pitch)) return;
  play.down.delete(pitch);
  play.lastPlayed = pageNow();
  play.waitingFirst = true;
  const n = [...play.notes].reverse().find((x) => x.who === "you" && x.pitch === pitch && x.end === null);
  if (n) n.end = pageNow() - play.t0;
  voiceOff(pitch, "you");
  const k = keyEl(pitch); if (k) k.classList.remove("down");
  sendNotes([[0, pitch, 0]]);
}

function sendNotes(notes) {
  postJSON(`/api/duet/${play.id}/notes`, { notes }).catch((e) => say(e.message));
}

function heard(e) {
  const m = JSON.parse(e.data);
  if (m.type === "note") {
    if (m.text) { say(m.text, "info"); return; }
    const now = pageNow() - play.t0, k = keyEl(m.pitch);
    if (m.on) {
      if (play.waitingFirst && play.lastPlayed !== null) {
        play.latencies.push((pageNow() - play.lastPlayed - Number($("play-wait").value)) * 1000);
        play.waitingFirst = false;
      }
      play.cadenzaNotes += 1;
      play.notes.push({ who: "cadenza", pitch: m.pitch, start: now, end: null });
      voiceOn(m.pitch, m.velocity, "cadenza");
      if (k) k.classList.add("answer");
    } else {
      const n = [...play.notes].reverse().find((x) => x.who === "cadenza" && x.pitch === m.pitch && x.end === null);
      if (n) n.end = now;
      voiceOff(m.pitch, "cadenza");
      if (k) k.classList.remove("answer");
    }
  } else if (m.type === "answer") {
    $("play-state").textContent = `answered: ${m.notes} notes${m.cut_in ? " (you cut in)" : ""}, ` +
      `first note ${Math.round(m.latency_ms)} ms after your pause`;
  } else if (m.type === "ended") {
    endPlay(m.midi);
  }
}

function drawPlayRoll() {
  const c = $("play-roll"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  if (play.t0) {
    const now = pageNow() - play.t0, span = 10, left = Math.max(0, now - span);
    const y = (p) => c.height - ((p - LOW + 1) / (HIGH - LOW + 3)) * c.height;
    for (const n of play.notes) {
      const end = n.end === null ? now : n.end;
      if (end < left) continue;
      g.fillStyle = n.who === "you" ? "#3b6ea8" : "#e8862a";
      const x0 = ((n.start - left) / span) * c.width, x1 = ((end - left) / span) * c.width;
      g.fillRect(x0, y(n.pitch), Math.max(2, x1 - x0), 4);
    }
  }
  requestAnimationFrame(drawPlayRoll);
}

async function startPlay() {
  say("");
  try {
    play.audio = play.audio || new (window.AudioContext || window.webkitAudioContext)();
  } catch (e) { play.audio = null; }
  const body = { model: $("model").value, sample: settingsForDuet(),
                 wait: Number($("play-wait").value), answer: Number($("play-answer").value) };
  try {
    const r = await postJSON("/api/duet", body);
    play.id = r.id; play.t0 = pageNow(); play.notes = []; play.latencies = [];
    play.cadenzaNotes = 0; play.waitingFirst = false; play.lastPlayed = null;
    play.events = new EventSource(`/api/duet/${r.id}/events`);
    play.events.onmessage = heard;
    $("play-start").hidden = true; $("play-stop").hidden = false; $("play-save").hidden = true;
    $("play-state").textContent = "listening: play, then pause";
  } catch (e) { say(e.message); }
}

function settingsForDuet() {
  const s = settings();  // the same controls as Generate; a duet answers one take at a time
  delete s.seconds; delete s.num_samples; delete s.may_end;
  return s;
}

async function stopPlay() {
  if (!play.id) return;
  try {
    const r = await postJSON(`/api/duet/${play.id}/stop`, {});
    endPlay(r.midi);
  } catch (e) { say(e.message); }
}

function endPlay(midi) {
  if (play.events) { play.events.close(); play.events = null; }
  for (const p of [...play.down]) noteOff(p);
  play.id = null;
  $("play-start").hidden = false; $("play-stop").hidden = true;
  if (midi) { $("play-save").href = midi; $("play-save").hidden = false; }
  $("play-state").textContent = "stopped";
}

function buildKeyboard() {
  const kb = $("keyboard");
  const whiteW = 100 / [...Array(HIGH - LOW + 1).keys()].filter((i) => ![1, 3, 6, 8, 10].includes((LOW + i) % 12)).length;
  let x = 0;
  for (let p = LOW; p <= HIGH; p++) {
    const black = [1, 3, 6, 8, 10].includes(p % 12);
    const k = el("div", { class: `key ${black ? "black" : "white"}`, "data-pitch": String(p),
                         title: noteName(p) });
    k.style.left = `${black ? x - whiteW * 0.3 : x}%`;
    k.style.width = `${black ? whiteW * 0.6 : whiteW}%`;
    if (!black) x += whiteW;
    k.addEventListener("pointerdown", (ev) => { ev.preventDefault(); noteOn(p); });
    k.addEventListener("pointerup", () => noteOff(p));
    k.addEventListener("pointerleave", () => noteOff(p));
    kb.append(k);
  }
  document.addEventListener("keydown", (ev) => {
    const i = COMPUTER_KEYS.indexOf(ev.key.toLowerCase());
    if (i >= 0 && !ev.repeat && !["INPUT", "SELECT"].includes(document.activeElement.tagName)) noteOn(60 + i);
  });
  document.addEventListener("keyup", (ev) => {
    const i = COMPUTER_KEYS.indexOf(ev.key.toLowerCase());
    if (i >= 0) noteOff(60 + i);
  });
  if (navigator.requestMIDIAccess) {  // a MIDI keyboard, where the browser offers Web MIDI
    navigator.requestMIDIAccess().then((access) => {
      for (const input of access.inputs.values()) {
        input.onmidimessage = (m) => {
          const [st, p, v] = m.data, kind = st & 0xf0;
          if (kind === 0x90 && v > 0) noteOn(p, v);
          else if (kind === 0x80 || (kind === 0x90 && v === 0)) noteOff(p);
        };
      }
    }).catch(() => {});
  }
}

window.addEventListener("DOMContentLoaded", () => {
  buildKeyboard();
  $("play-start").addEventListener("click", startPlay);
  $("play-stop").addEventListener("click", stopPlay);
  requestAnimationFrame(drawPlayRoll);
});
