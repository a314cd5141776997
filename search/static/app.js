// The vtr search page: asks /api/search, shows each hit's thumbnail at its matching moment, its score,
// captions and (for CAMoE) the gate's weights, and plays the chosen video from that moment.
// Data from the index (ids, captions, paths) only ever goes into the page as text, never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const form = $("#search-form"), qBox = $("#q"), kBox = $("#k"), qbBox = $("#qbnorm");
const statusLine = $("#status"), results = $("#results"), infoLine = $("#info");
const panel = $("#player-panel"), player = $("#player"), now = $("#now");
const template = $("#hit-template"), queryGate = $("#query-gate");
let latest = 0;         // id of the newest request: answers to older ones are dropped
let pendingSeek = null; // the seek waiting for the player's metadata

function fmtTime(s) {
  if (s === null || s === undefined || !isFinite(s)) return "";
  const tenths = Math.round(s * 10) / 10;  // 59.96 s is 1:00.0, not 0:60.0
  const m = Math.floor(tenths / 60), sec = tenths - 60 * m;
  return `${m}:${sec < 10 ? "0" : ""}${sec.toFixed(1)}`;
}

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const d = body.detail;
    const msg = typeof d === "string" ? d : Array.isArray(d) ? d.map((e) => e.msg).join("; ") : r.statusText;
    throw new Error(msg || `HTTP ${r.status}`);
  }
  return body;
}

async function loadInfo() {
  try {
    const info = await getJSON("/api/info");
    const ix = info.index || {};
    const parts = [];
    if (ix.n_videos !== undefined) parts.push(`${ix.n_videos} videos`);
    if (ix.model) parts.push(ix.run === null ? `${ix.model} (zero-shot)` : `model ${ix.model}`);
    if (ix.engine) parts.push(`engine ${ix.engine}`);
    if (ix.clip) parts.push(`CLIP ${ix.clip}${ix.clip_random ? " (random weights: scores mean nothing)" : ""}`);
    if (!info.serves_videos) parts.push("no video folder: thumbnails and player are off");
    infoLine.textContent = parts.join(" · ") || "index loaded";
    if (info.max_k) kBox.max = info.max_k;
    if (ix.qbnorm === false) {  // the index has no query bank
      qbBox.disabled = true;
      qbBox.parentElement.title = "This index has no QB-Norm query bank";
    }
  } catch (e) {
    infoLine.textContent = `cannot read the index: ${e.message}`;
  }
}

function gateBars(gate) {
  const box = document.createElement("div");
  const label = document.createElement("div");
  label.className = "gate-label";
  label.textContent = "the query leaned on";
  box.appendChild(label);
  const entries = Object.entries(gate);
  const top = Math.max(...entries.map(([, w]) => w));
  for (const [stream, w] of entries) {
    const row = document.createElement("div");
    row.className = "gate-row" + (w === top ? " lead" : "");
    const name = document.createElement("span");
    name.className = "stream";
    name.textContent = stream;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${Math.max(0, Math.min(1, w)) * 100}%`;
    bar.appendChild(fill);
    const val = document.createElement("span");
    val.className = "w";
    val.textContent = w.toFixed(2);
    row.append(name, bar, val);
    box.appendChild(row);
  }
  return [...box.children];
}

function renderHit(hit, showGate) {
  const li = template.content.firstElementChild.cloneNode(true);
  li.dataset.videoId = hit.video_id;
  li.dataset.moment = hit.moment ?? "";
  const thumbBtn = li.querySelector(".thumb"), img = li.querySelector("img");
  if (hit.thumb) {
    img.src = hit.thumb;
    img.alt = `${hit.video_id} at ${fmtTime(hit.moment)}`;
    img.addEventListener("error", () => thumbBtn.classList.add("broken"), { once: true });
  } else {
    thumbBtn.classList.add("broken");
    thumbBtn.disabled = !hit.video;
  }
  li.querySelector(".moment").textContent = fmtTime(hit.moment);
  li.querySelector(".rank").textContent = `#${hit.rank}`;
  li.querySelector(".vid").textContent = hit.video_id;
  li.querySelector(".vid").title = hit.path;
  li.querySelector(".score").textContent = hit.score.toFixed(3);
  const caps = li.querySelector(".captions");
  for (const c of hit.captions) {
    const item = document.createElement("li");
    item.textContent = c;
    caps.appendChild(item);
  }
  if (hit.captions.length > 3) {  // the rest behind a toggle
    caps.classList.add("folded");
    const more = document.createElement("button");
    more.type = "button";
    more.className = "more";
    more.textContent = `+${hit.captions.length - 3} more`;
    more.addEventListener("click", () => {
      const folded = caps.classList.toggle("folded");
      more.textContent = folded ? `+${hit.captions.length - 3} more` : "less";
    });
    caps.after(more);
  }
  const gate = li.querySelector(".gate");
  if (showGate && hit.gate && Object.keys(hit.gate).length) gate.append(...gateBars(hit.gate));
  else gate.remove();
  if (hit.video) thumbBtn.addEventListener("click", () => play(hit, li, true));
  return li;
}

function play(hit, li, autoplay) {
  if (!hit.video) return;
  for (const el of results.querySelectorAll(".hit.playing")) el.classList.remove("playing");
  li.classList.add("playing");
  panel.hidden = false;
  const t = hit.moment ?? 0;
  const src = `${hit.video}#t=${t.toFixed(3)}`;
  const seek = () => {
    // The media fragment already starts there; setting currentTime as well covers browsers without it.
    if (Math.abs(player.currentTime - t) > 0.05) player.currentTime = t;
    if (autoplay) player.play().catch(() => {});
  };
  if (player.dataset.video === hit.video && player.readyState >= 1) {
    seek();
  } else {
    // a video chosen before this one's metadata arrived must not seek this one
    if (pendingSeek) player.removeEventListener("loadedmetadata", pendingSeek);
    pendingSeek = seek;
    player.dataset.video = hit.video;
    player.addEventListener("loadedmetadata", seek, { once: true });
    player.src = src;
  }
  now.replaceChildren();
  const title = document.createElement("div");
  title.className = "now-title";
  title.textContent = `${hit.video_id} · from ${fmtTime(t)} · score ${hit.score.toFixed(3)}`;
  const path = document.createElement("div");
  path.className = "now-path";
  path.textContent = hit.path;
  now.append(title, path);
}

async function search(push = true) {
  const q = qBox.value.trim();
  if (!q) return;
  const k = Math.max(1, Math.min(Number(kBox.max) || 200, parseInt(kBox.value, 10) || 10));
  const qb = qbBox.checked && !qbBox.disabled;
  const params = new URLSearchParams({ q, k: String(k), qbnorm: qb ? "1" : "0" });
  if (push) history.replaceState(null, "", `?${params}`);
  const mine = ++latest;
  setStatus("searching…");
  form.classList.add("busy");
  try {
    const res = await getJSON(`/api/search?${params}`);
    if (mine !== latest) return;
    // CAMoE's gate depends on the query alone: when every hit has the same, it is shown once.
    const g0 = res.hits.length ? res.hits[0].gate : null;
    const same = (h) => h.gate && Object.keys(g0).every((s) => Math.abs(h.gate[s] - g0[s]) < 1e-6);
    const shared = g0 && res.hits.every(same);
    queryGate.replaceChildren(...(shared ? gateBars(g0) : []));
    queryGate.hidden = !shared;
    results.replaceChildren(...res.hits.map((h) => renderHit(h, !shared)));
    const n = res.hits.length;
    const ms = (res.seconds * 1000).toFixed(0);
    setStatus(`${n} video${n === 1 ? "" : "s"} for “${res.query}”${res.qbnorm ? " (QB-Norm)" : ""} in ${ms} ms`);
    if (n && res.hits[0].video) play(res.hits[0], results.firstElementChild, false);
    else { panel.hidden = true; player.removeAttribute("src"); delete player.dataset.video; player.load(); }
  } catch (e) {
    if (mine === latest) setStatus(`search failed: ${e.message}`, true);
  } finally {
    if (mine === latest) form.classList.remove("busy");
  }
}

player.addEventListener("error", () => {
  // e.g. an .avi or .mkv: browsers play MP4 (H.264), WebM and Ogg; the thumbnails still show the moment
  if (!player.dataset.video) return;
  const note = document.createElement("div");
  note.className = "now-error";
  note.textContent = "This browser cannot play this file's format; its thumbnail shows the matching moment.";
  now.appendChild(note);
});
form.addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
qbBox.addEventListener("change", () => { if (qBox.value.trim()) search(); });

// A shared link (?q=...&k=...&qbnorm=1) runs its search on load.
const params = new URLSearchParams(location.search);
if (params.get("k")) kBox.value = params.get("k");
if (params.get("qbnorm") === "1") qbBox.checked = true;
loadInfo().then(() => {
  if (params.get("q")) { qBox.value = params.get("q"); search(false); }
});
