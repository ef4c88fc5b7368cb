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

function route() {
  const m = location.hash.match(/^#\/video\/([^?]+)(?:\?t=([0-9.]+))?/);
  if (m) { showVideo(decodeURIComponent(m[1]), parseFloat(m[2] || "0")); return; }
  $("#player").pause();
  $("#video-view").hidden = true;
  $("#search-view").hidden = false;
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
  window.addEventListener("hashchange", route);
  loadInfo();
  route();
}

setup();
