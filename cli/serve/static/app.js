// vstore search page: plain JavaScript, no build step, no network beyond this server.
"use strict";
const $ = (sel) => document.querySelector(sel);
const state = { last: null, lastQuery: null, info: null };

function fmtTime(t) {
  if (t === null || t === undefined) return "-";
  const m = Math.floor(t / 60), s = t - 60 * m;
  return `${m}:${s.toFixed(2).padStart(5, "0")}`;
}

async function api(path, options) {
  const r = await fetch(path, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = { error: `HTTP ${r.status}` }; }
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

function setStatus(text, isError) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", !!isError);
}

async function loadInfo() {
  try {
    const info = await api("/api/info");
    state.info = info;
    $("#store-name").textContent = info.name;
    $("#store-stats").textContent = `${info.videos} videos · ${info.frames} frames · ${(info.encoder || "?").replace(/^(clip:).*\//, "$1")} · ` +
      `generation ${info.served_generation}` + (info.index && info.index.state !== "fresh" ? " · index stale" : "");
    const box = $("#labels");
    box.textContent = "";
    for (const name of info.label_names) {
      const chip = document.createElement("label");
      chip.className = "chip";
      const cb = document.createElement("input");
      cb.type = "checkbox"; cb.value = name; cb.className = "label-filter";
      chip.append(cb, document.createTextNode(name));
      box.append(chip);
    }
    if (!info.label_names.length) box.textContent = "none";
    if (!info.text_queries) $("#q").placeholder = "This store has no text encoder: search by image or 'more like this'";
  } catch (e) { setStatus(e.message, true); }
}

function params() {
  const p = { k: parseInt($("#k").value || "20", 10), per_video: $("#per-video").checked, level: $("#level").value };
  const labels = [...document.querySelectorAll(".label-filter:checked")].map((c) => c.value);
  if (labels.length) p.labels = labels;
  if ($("#split").value) p.split = $("#split").value;
  return p;
}

async function search(query) {
  state.lastQuery = query;
  const p = params();
  let options;
  if (query.image) {
    const form = new FormData();
    form.append("image", query.image, query.image.name || "image");
    for (const [key, v] of Object.entries(p)) {
      if (Array.isArray(v)) v.forEach((x) => form.append(key, x)); else form.append(key, String(v));
    }
    options = { method: "POST", body: form };
  } else {
    options = { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ...query, ...p }) };
  }
  setStatus("searching…");
  try {
    const res = await api("/api/search", options);
    state.last = res;
    $("#download").disabled = false;
    render(res);
    setStatus(`${res.hits.length} hit(s) for ${res.query} in ${res.took_ms.toFixed(1)} ms (generation ${res.generation})`);
  } catch (e) {
    setStatus(e.message, true);
  }
}

function render(res) {
  const grid = $("#results");
  grid.textContent = "";
  for (const h of res.hits) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.video = h.video_id;
    card.dataset.timestamp = h.timestamp === null ? "" : String(h.timestamp);
    card.dataset.frame = h.frame_index === null ? "" : String(h.frame_index);
    const img = document.createElement("img");
    img.loading = "lazy"; img.alt = `${h.video_id} frame ${h.frame_index}`;
    if (h.thumbnail_url) img.src = h.thumbnail_url;
    const meta = document.createElement("div");
    meta.className = "meta";
    const vid = document.createElement("div"); vid.className = "vid"; vid.textContent = `${h.rank}. ${h.video_id}`;
    vid.title = h.video_id;
    const row = document.createElement("div"); row.className = "row";
    const t = document.createElement("span"); t.textContent = h.timestamp === null ? "whole video" : `@ ${fmtTime(h.timestamp)}`;
    const s = document.createElement("span"); s.textContent = h.score.toFixed(4);
    row.append(t, s);
    meta.append(vid, row);
    if (h.label) { const l = document.createElement("span"); l.className = "label"; l.textContent = h.label; meta.append(l); }
    if (h.frame_index !== null) {
      const more = document.createElement("button");
      more.type = "button"; more.className = "more"; more.textContent = "more like this";
      more.addEventListener("click", (ev) => {
        ev.stopPropagation();
        $("#q").value = "";
        search({ video: h.video_id, frame: h.frame_index });
      });
      meta.append(more);
    }
    card.append(img, meta);
    card.addEventListener("click", () => {
      location.hash = `#/video/${encodeURIComponent(h.video_id)}?t=${h.timestamp === null ? 0 : h.timestamp}`;
    });
    grid.append(card);
  }
  if (!res.hits.length) grid.textContent = "No hits: no frame passes the filters.";
}

async function showVideo(id, t) {
  $("#search-view").hidden = true;
  $("#map-view").hidden = true;
  $("#video-view").hidden = false;
  $("#video-title").textContent = id;
  const player = $("#player");
  try {
    const v = await api(`/api/videos/${encodeURIComponent(id)}`);
    $("#video-meta").textContent = [v.label || "unlabelled", `${v.n_frames} sampled of ${v.total_frames} frames`,
      v.duration ? `${v.duration.toFixed(1)} s` : null, v.source_available ? v.source : "source video gone (key frame only)"]
      .filter(Boolean).join(" · ");
    const seek = () => { player.currentTime = t; player.play().catch(() => {}); };
    if (v.source_available) {
      player.hidden = false;
      if (player.dataset.src !== v.video_url) {
        player.dataset.src = v.video_url;
        player.addEventListener("loadedmetadata", seek, { once: true });
        player.src = v.video_url;
      } else { seek(); }
    } else { player.hidden = true; player.removeAttribute("src"); delete player.dataset.src; }
    const strip = $("#strip");
    strip.textContent = "";
    for (const f of v.frames) {
      const fig = document.createElement("figure");
      fig.dataset.timestamp = String(f.timestamp);
      if (Math.abs(f.timestamp - t) < 1e-6) fig.classList.add("current");
      const img = document.createElement("img");
      img.loading = "lazy"; img.src = f.thumbnail_url; img.alt = `frame ${f.index}`;
      const cap = document.createElement("figcaption");
      cap.textContent = `#${f.index} @ ${fmtTime(f.timestamp)}`;
      fig.append(img, cap);
      fig.addEventListener("click", () => {
        document.querySelectorAll(".strip figure").forEach((x) => x.classList.remove("current"));
        fig.classList.add("current");
        if (v.source_available) { player.currentTime = f.timestamp; }
      });
      strip.append(fig);
    }
  } catch (e) {
    $("#video-meta").textContent = e.message;
  }
}

// -- the map of the videos (GET /api/map: the coordinates `vstore map` writes) ---------------------
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const UNLABELLED = "#b4b4b4";
const mapState = { data: null, px: [], radius: 4, hover: -1 };

function labelColours(names) {
  const out = {};
  names.forEach((n, i) => {
    out[n] = names.length <= PALETTE.length ? PALETTE[i] : `hsl(${Math.round((360 * i) / names.length)}, 65%, 46%)`;
  });
  return out;
}

function drawMap() {
  const data = mapState.data;
  if (!data) return;
  const canvas = $("#map-canvas");
  const W = canvas.parentElement.clientWidth || 1000, H = Math.max(320, Math.min(Math.round(W * 0.62), window.innerHeight - 190));  // fits the window
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
  canvas.style.height = `${H}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  const pts = data.points, margin = 18;
  const xmax = pts.reduce((m, p) => Math.max(m, p.x), 1e-9), ymax = pts.reduce((m, p) => Math.max(m, p.y), 1e-9);
  const scale = Math.min((W - 2 * margin) / xmax, (H - 2 * margin) / ymax);
  const ox = (W - xmax * scale) / 2, oy = (H - ymax * scale) / 2;
  mapState.px = pts.map((p) => [ox + p.x * scale, H - oy - p.y * scale]);  // y up, as the PNG
  const r = mapState.radius = Math.max(2.5, Math.min(7, 240 / Math.sqrt(pts.length)));
  const colours = labelColours(data.label_names);
  const order = pts.map((p, i) => i).sort((a, b) => (pts[a].label ? 1 : 0) - (pts[b].label ? 1 : 0));  // unlabelled below
  for (const i of order) {
    const [x, y] = mapState.px[i], p = pts[i];
    ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fillStyle = p.label ? (colours[p.label] || UNLABELLED) : UNLABELLED;
    ctx.globalAlpha = p.label ? 0.9 : 0.6; ctx.fill(); ctx.globalAlpha = 1;
    if (p.split === "test") { ctx.beginPath(); ctx.arc(x, y, r + 2.5, 0, 2 * Math.PI); ctx.strokeStyle = "#000"; ctx.lineWidth = 1; ctx.stroke(); }
  }
  canvas.dataset.points = String(pts.length);
  const legend = $("#map-legend");
  legend.textContent = "";
  const counts = {};
  for (const p of pts) counts[p.label || ""] = (counts[p.label || ""] || 0) + 1;
  const item = (colour, text, ring) => {
    const span = document.createElement("span");
    const dot = document.createElement("i");
    dot.style.background = ring ? "transparent" : colour;
    if (ring) dot.style.border = "1px solid #000";
    span.append(dot, document.createTextNode(text));
    legend.append(span);
  };
  for (const n of data.label_names) if (counts[n]) item(colours[n], `${n} (${counts[n]})`);
  if (counts[""]) item(UNLABELLED, `unlabelled (${counts[""]})`);
  const tests = pts.filter((p) => p.split === "test").length;
  if (tests) item(null, `test video (${tests})`, true);
}

function nearestPoint(x, y) {
  let best = -1, bestD = Math.max(8, mapState.radius + 3) ** 2;
  mapState.px.forEach(([px, py], i) => {
    const d = (px - x) ** 2 + (py - y) ** 2;
    if (d <= bestD) { best = i; bestD = d; }
  });
  return best;
}

function hoverMap(ev) {
  const canvas = $("#map-canvas"), rect = canvas.getBoundingClientRect();
  const x = ev.clientX - rect.left, y = ev.clientY - rect.top;
  const i = nearestPoint(x, y);
  const tip = $("#map-tip");
  mapState.hover = i;
  canvas.style.cursor = i >= 0 ? "pointer" : "crosshair";
  if (i < 0) { tip.hidden = true; return; }
  const p = mapState.data.points[i];
  const img = $("#map-tip-img");
  if (p.thumbnail_url) { if (img.getAttribute("src") !== p.thumbnail_url) img.src = p.thumbnail_url; img.hidden = false; }
  else { img.removeAttribute("src"); img.hidden = true; }
  img.alt = `${p.video_id} thumbnail`;
  $("#map-tip-text").textContent = [p.video_id, p.label || "unlabelled", p.split].filter(Boolean).join(" · ");
  tip.hidden = false;
  const left = x + 224 > rect.width ? x - 224 : x + 14;
  tip.style.left = `${Math.max(0, left)}px`; tip.style.top = `${Math.max(0, y + 14)}px`;
}

async function showMap() {
  try {
    if (!mapState.data || (state.info && mapState.data.generation !== state.info.served_generation)) {
      $("#map-title").textContent = "Computing the map…";
      mapState.data = await api("/api/map");
    }
    const d = mapState.data;
    $("#map-title").textContent = `Mean frame embeddings of ${d.title} · generation ${d.generation} · hover for a thumbnail, click to open`;
    drawMap();
  } catch (e) {
    $("#map-title").textContent = e.message;
  }
}

// exposed for tests and the console: where point i is drawn (CSS pixels from the canvas's top left)
window.vstoreMap = { pixel: (i) => mapState.px[i], point: (i) => mapState.data.points[i], count: () => mapState.px.length };

function route() {
  const m = location.hash.match(/^#\/video\/([^?]+)(?:\?t=([0-9.]+))?/);
  if (m) { showVideo(decodeURIComponent(m[1]), parseFloat(m[2] || "0")); return; }
  $("#player").pause();
  $("#video-view").hidden = true;
  const onMap = location.hash === "#/map";
  $("#map-view").hidden = !onMap;
  $("#search-view").hidden = onMap;
  if (onMap) showMap();
}

function setup() {
  $("#search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("#q").value.trim();
    if (text) search({ text });
    else if (state.lastQuery) search(state.lastQuery);
  });
  for (const id of ["#per-video", "#level", "#split", "#k"]) {
    $(id).addEventListener("change", () => { if (state.lastQuery) search(state.lastQuery); });
  }
  $("#labels").addEventListener("change", () => { if (state.lastQuery) search(state.lastQuery); });
  const drop = $("#drop");
  const useFile = (file) => {
    if (!file) return;
    $("#drop-text").textContent = `image: ${file.name}`;
    $("#q").value = "";
    search({ image: file });
  };
  $("#image").addEventListener("change", (ev) => useFile(ev.target.files[0]));
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); useFile(ev.dataTransfer.files[0]); });
  $("#download").addEventListener("click", () => {
    if (!state.last) return;
    const blob = new Blob([JSON.stringify(state.last, null, 2)], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob); a.download = "vstore-hits.json";
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  });
  const canvas = $("#map-canvas");
  canvas.addEventListener("mousemove", hoverMap);
  canvas.addEventListener("mouseleave", () => { $("#map-tip").hidden = true; mapState.hover = -1; });
  canvas.addEventListener("click", (ev) => {
    hoverMap(ev);
    if (mapState.hover >= 0) location.hash = `#/video/${encodeURIComponent(mapState.data.points[mapState.hover].video_id)}?t=0`;
  });
  window.addEventListener("resize", () => { if (!$("#map-view").hidden) drawMap(); });
  window.addEventListener("hashchange", route);
  loadInfo();
  route();
}

setup();
