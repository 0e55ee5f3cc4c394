// rendernode dashboard: one page, four views (#/queue, #/farm, #/job/UUID, #/messages),
// one event stream.  Plain DOM, no framework, no build step.  Every string from the
// farm goes into the page as text, never as HTML.
"use strict";

const S = {
  me: null, farm: null, queue: [], summary: null, messages: [], job: null, jobId: null,
  filter: { state: "", owner: "", text: "" }, selected: new Set(), unread: 0, view: "queue",
};
const STATES = ["queued", "rendering", "done", "failed", "stopped", "created", "nomachine"];

// -- helpers ----------------------------------------------------------------------------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v;  // CSSOM: allowed by the page's CSP, style attributes are not
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const $ = (sel) => document.querySelector(sel);

function dur(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}
const when = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–");
const gib = (b) => (b ? (b / 2 ** 30).toFixed(1) + " GiB" : "–");
const short = (u) => (u ? String(u).slice(0, 8) : "");

function machineName(uuid) {
  const m = S.farm && S.farm.machines.find((x) => x.uuid === uuid);
  return m ? m.name : short(uuid);
}

function named(text) {  // machine UUIDs in log lines, as names
  if (!S.farm) return text;
  for (const m of S.farm.machines) if (text.includes(m.uuid)) text = text.split(m.uuid).join(m.name);
  return text;
}

function toast(text, ok) {
  const t = $("#toast");
  t.textContent = text;
  t.className = "toast" + (ok ? " ok" : "");
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
}

async function get(url) {
  const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) { signedOut(); throw new Error("signed out"); }
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

async function post(url, body) {
  const r = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}),
  });
  const data = await r.json().catch(() => ({}));
  if (r.status === 401) { signedOut(); throw new Error("signed out"); }
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function signedOut() {
  if (S.es) S.es.close();
  S.es = null;
  const live = $("#live");
  live.textContent = "signed out";
  live.className = "live off";
  $("#main").replaceChildren(h("div", { class: "panel empty" },
    "Your session has ended. Run ", h("code", {}, "rendernode dashboard --open"),
    " on this machine for a new login link."));
}

// -- rendering, at most once per animation frame ----------------------------------------

let pending = false;
function render() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; draw(); });
}

function draw() {
  drawSummary();
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === (S.view === "job" ? "queue" : S.view)) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const unread = $("#unread");
  unread.hidden = !S.unread;
  unread.textContent = S.unread;
  const main = $("#main");
  const keep = document.activeElement && document.activeElement.id;
  if (S.view === "farm") main.replaceChildren(farmView());
  else if (S.view === "messages") main.replaceChildren(messagesView());
  else if (S.view === "job") main.replaceChildren(jobView());
  else main.replaceChildren(queueView());
  if (keep) {
    const el = document.getElementById(keep);
    if (el) { el.focus(); if (el.type === "search" || el.type === "text") el.setSelectionRange(el.value.length, el.value.length); }
  }
}

function drawSummary() {
  const s = (S.farm && S.farm.summary) || S.summary;
  if (!s) return;
  const server = S.farm && S.farm.server ? machineName(S.farm.server) : "none";
  const item = (v, label) => h("div", {}, h("b", {}, v), h("span", {}, label));
  $("#summary").replaceChildren(
    item(`${s.machines_online} / ${s.machines}`, "machines online"),
    item(s.rendering, "rendering"), item(s.frames_per_min, "frames / min"),
    item(s.queue, "jobs in queue"), item(server, "server"));
}

function bar(row) {
  const total = Math.max(1, row.total);
  const seg = (cls, n) => (n ? h("i", { class: cls, style: `width:${(100 * n) / total}%` }) : null);
  return h("div", { class: "bar", role: "img",
    "aria-label": `${row.done} done, ${row.rendering} rendering, ${row.failed} failed, ${row.queued} queued` },
  seg("done", row.done), seg("rendering", row.rendering), seg("failed", row.failed));
}

function elapsed(row) {
  const end = row.finished || Date.now() / 1000;
  return dur(end - row.created);
}

function eta(row) {
  if (row.state === "done" || row.per_frame === null) return "–";
  const left = row.queued + row.rendering;
  return left ? dur((left * row.per_frame) / Math.max(1, row.busy)) : "–";
}

// -- queue --------------------------------------------------------------------------------

function visibleJobs() {
  const f = S.filter;
  const text = f.text.toLowerCase();
  return S.queue.filter((j) => (!f.state || j.state === f.state) && (!f.owner || j.user === f.owner)
    && (!text || String(j.name).toLowerCase().includes(text) || j.uuid.startsWith(text)));
}

async function act(action, jobs) {
  if (!jobs.length) return;
  if (action === "delete" && !confirm(`Delete ${jobs.length} job(s)?`)) return;
  try {
    const r = await post(`/api/jobs/${action}`, { jobs });
    const bad = r.results.filter((x) => !x.ok);
    if (bad.length) toast(bad.map((x) => x.error).join("\n"));
    else toast(`${action}: ${jobs.length} job(s)`, true);
    if (action === "delete") for (const j of jobs) S.selected.delete(j);
  } catch (e) { toast(e.message); }
}

async function move(job, other, where) {
  try {
    await post("/api/jobs/move", { job, [where]: other });
  } catch (e) { toast(e.message); }
}

function queueView() {
  const owners = [...new Set(S.queue.map((j) => j.user))].sort();
  const jobs = visibleJobs();
  const sel = [...S.selected].filter((u) => S.queue.some((j) => j.uuid === u));
  const tools = h("div", { class: "toolbar" },
    h("label", {}, "State ", h("select", { id: "f-state", onchange: (e) => { S.filter.state = e.target.value; render(); } },
      h("option", { value: "" }, "all"), STATES.map((s) => h("option", { value: s, selected: S.filter.state === s }, s)))),
    h("label", {}, "Owner ", h("select", { id: "f-owner", onchange: (e) => { S.filter.owner = e.target.value; render(); } },
      h("option", { value: "" }, "all"), owners.map((o) => h("option", { value: o, selected: S.filter.owner === o }, o)))),
    h("input", { id: "f-text", type: "search", placeholder: "Search names", "aria-label": "Search job names",
      value: S.filter.text, oninput: (e) => { S.filter.text = e.target.value; render(); } }),
    h("span", { class: "grow" }),
    h("span", { class: "muted" }, `${sel.length} selected`),
    ["start", "stop", "retry", "delete"].map((a) => h("button", {
      id: `act-${a}`, type: "button", class: a === "delete" ? "danger" : "", disabled: !sel.length,
      onclick: () => act(a, sel) }, a === "retry" ? "Retry failed" : a[0].toUpperCase() + a.slice(1))));
  if (!S.queue.length) return h("div", {}, h("h1", {}, "Queue"), tools, h("div", { class: "panel empty" }, "No jobs. Submit one with rendernode submit."));
  const all = jobs.length && jobs.every((j) => S.selected.has(j.uuid));
  const rows = jobs.map((j, i) => queueRow(j, i, jobs));
  return h("div", {}, h("h1", {}, "Queue"), tools, h("table", { id: "queue" },
    h("thead", {}, h("tr", {},
      h("th", {}, h("input", { type: "checkbox", "aria-label": "Select all shown jobs", checked: all,
        onchange: (e) => { for (const j of jobs) { if (e.target.checked) S.selected.add(j.uuid); else S.selected.delete(j.uuid); } render(); } })),
      ["Job", "Owner", "Renderer", "State", "Progress", "Frames", "Elapsed", "ETA", "Move"].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows)));
}

function queueRow(j, i, jobs) {
  const before = jobs[i - 1], after = jobs[i + 1];
  const tr = h("tr", { "data-job": j.uuid, draggable: "true", class: S.selected.has(j.uuid) ? "selected" : "" },
    h("td", {}, h("input", { type: "checkbox", "aria-label": `Select ${j.name}`, checked: S.selected.has(j.uuid),
      onchange: (e) => { if (e.target.checked) S.selected.add(j.uuid); else S.selected.delete(j.uuid); render(); } })),
    h("td", {}, h("a", { href: `#/job/${j.uuid}`, class: "job-link" }, j.name)),
    h("td", {}, j.user), h("td", {}, j.renderer),
    h("td", {}, h("span", { class: `state state-${j.state}` }, j.state)),
    h("td", {}, bar(j)), h("td", {}, `${j.done} / ${j.total}` + (j.unit === "tiles" ? " tiles" : "")),
    h("td", {}, elapsed(j)), h("td", {}, eta(j)),
    h("td", {},
      h("button", { type: "button", class: "icon", "aria-label": `Move ${j.name} up`, disabled: !before,
        onclick: () => move(j.uuid, before.uuid, "before") }, "▲"),
      h("button", { type: "button", class: "icon", "aria-label": `Move ${j.name} down`, disabled: !after,
        onclick: () => move(j.uuid, after.uuid, "after") }, "▼")));
  tr.addEventListener("dragstart", (e) => { e.dataTransfer.setData("text/plain", j.uuid); tr.classList.add("dragging"); });
  tr.addEventListener("dragend", () => tr.classList.remove("dragging"));
  tr.addEventListener("dragover", (e) => {
    e.preventDefault();
    const r = tr.getBoundingClientRect();
    const top = e.clientY < r.top + r.height / 2;
    tr.classList.toggle("drop-before", top);
    tr.classList.toggle("drop-after", !top);
  });
  tr.addEventListener("dragleave", () => tr.classList.remove("drop-before", "drop-after"));
  tr.addEventListener("drop", (e) => {
    e.preventDefault();
    const top = tr.classList.contains("drop-before");
    tr.classList.remove("drop-before", "drop-after");
    const moved = e.dataTransfer.getData("text/plain");
    if (moved && moved !== j.uuid) move(moved, j.uuid, top ? "before" : "after");
  });
  return tr;
}

// -- one job ------------------------------------------------------------------------------

function progressOf(task) {
  if (!S.farm || !["rendering", "assigned"].includes(task.state)) return null;
  for (const m of S.farm.machines) {
    const r = m.rendering;
    if (r && r.job === S.jobId && r.task === task.task) return r.progress;
  }
  return null;
}

function frameCells(task) {
  return task.frames.map((frame, k) => {
    const preview = task.previews[k] || "";
    const p = progressOf(task);
    const label = `Frame ${frame}: ${task.state}` + (task.machines.length ? `, on ${task.machines.map(machineName).join(", ")}` : "");
    return h("button", { type: "button", class: `cell s-${task.state}`, "data-frame": frame, "data-task": task.task,
      "aria-label": label, title: `${label}; ${task.attempts} attempt(s); ${task.render_time.toFixed(2)} s`,
      onclick: () => openFrame(task.task, frame, preview) },
    p !== null ? h("span", { class: "prog", style: `width:${Math.round(p * 100)}%` }) : null,
    preview ? h("img", { class: "thumb", src: `/api/preview/${preview}`, alt: "", loading: "lazy" })
      : h("span", { class: "thumb" }),
    h("span", { class: "cap" }, h("b", {}, frame),
      h("span", {}, task.state === "done" ? task.render_time.toFixed(1) + " s" : task.state)));
  });
}

// A tiled job: one cell per frame, its tiles laid out as in the frame (each the tile's
// preview once it is rendered, coloured by its state until then).
function tiledCells(d) {
  const t = d.tiling;
  const frames = new Map();
  for (const task of d.tasks) {
    const frame = task.frames[0];
    if (!frames.has(frame)) frames.set(frame, []);
    task.tiles.forEach((tile, k) => frames.get(frame).push({ ...tile, task, preview: task.previews[k] || "" }));
  }
  const edges = (n, size) => Array.from({ length: n }, (_, i) => Math.floor(((i + 1) * size) / n) - Math.floor((i * size) / n));
  const cols = edges(t.cols, t.width).map((w) => `${w}fr`).join(" ");
  const rows = edges(t.rows, t.height).map((w) => `${w}fr`).join(" ");
  return [...frames.entries()].map(([frame, tiles]) => {
    const done = tiles.filter((x) => x.task.state === "done").length;
    const failed = tiles.some((x) => x.task.state === "failed");
    const busy = tiles.some((x) => ["rendering", "assigned", "delivering"].includes(x.task.state));
    const state = done === tiles.length ? "done" : failed ? "failed" : busy ? "rendering" : "queued";
    const label = `Frame ${frame}: ${done} of ${tiles.length} tiles done`;
    return h("button", { type: "button", class: `cell s-${state}` + (frames.size <= 6 ? " wide" : ""), "data-frame": frame, "data-task": tiles[0].task.task,
      "aria-label": label, title: label, onclick: () => openFrame(tiles[0].task.task, frame, "") },
    h("span", { class: "tiles", style: `grid-template-columns:${cols};grid-template-rows:${rows};aspect-ratio:${t.width}/${t.height}` },
      tiles.map((x) => h("span", {
        class: `tile s-${x.task.state}`, "data-tile": x.tile,
        title: `tile ${x.tile} (${x.region.join(",")}): ${x.task.state}` + (x.task.machines.length ? ` on ${x.task.machines.map(machineName).join(", ")}` : ""),
        style: x.preview ? `background-image:url("/api/preview/${x.preview}")` : null }))),
    h("span", { class: "cap" }, h("b", {}, frame), h("span", {}, `${done}/${tiles.length} tiles`)));
  });
}

function jobView() {
  const d = S.job;
  if (!d) return h("div", { class: "panel empty" }, S.jobGone ? "This job was deleted." : "Loading…");
  const j = d.job;
  const actions = d.may_change ? ["start", "stop", "retry", "delete"].map((a) => h("button", {
    id: `job-${a}`, type: "button", class: a === "delete" ? "danger" : "",
    onclick: () => act(a, [j.uuid]) }, a === "retry" ? "Retry failed" : a[0].toUpperCase() + a.slice(1))) : [];
  const set = d.settings;
  const fields = [["Owner", j.user], ["Renderer", j.renderer], ["Frames", j.frames], ["Scene", set.scene],
    ["Output", set.output || "(beside the scene)"], ["Chunk", set.chunk], ["Priority", j.priority],
    ["Tiles", d.tiling ? `${d.tiling.cols}x${d.tiling.rows} of ${d.tiling.width}x${d.tiling.height}` + (d.tiling.overscan ? `, overscan ${d.tiling.overscan} px` : "") : "–"],
    ["Flags", (set.flags || []).join(", ") || "–"], ["Machines", (set.machines || []).join(", ") || "any"],
    ["Submitted", `${new Date(j.created * 1000).toLocaleString()} on ${machineName(j.origin)}`],
    ["Result", set.result], ["Elapsed", elapsed(j)], ["ETA", eta(j)]];
  const cells = d.tiling ? tiledCells(d) : d.tasks.flatMap(frameCells);
  const legend = h("div", { class: "legend", "aria-hidden": "true" },
    [["done", "--done"], ["rendering", "--rendering"], ["delivering", "--delivering"], ["failed", "--failed"], ["queued", "--queued"]]
      .map(([n, c]) => h("span", {}, h("i", { style: `background:var(${c})` }), n)));
  const log = h("pre", { class: "log", id: "job-log", tabindex: "0", "aria-label": "Job log" },
    d.log.map((l) => `${when(l.time)}  ${named(l.line)}\n`).join(""));
  setTimeout(() => { log.scrollTop = log.scrollHeight; }, 0);
  return h("div", {},
    h("div", { class: "toolbar" }, h("a", { href: "#/queue" }, "← Queue"), h("h1", { class: "grow" }, j.name),
      h("span", { class: `state state-${j.state}` }, j.state), ...actions),
    h("div", { class: "toolbar" }, h("div", { class: "grow" }, bar(j)), h("span", { class: "muted" },
      `${j.done} done · ${j.rendering} rendering · ${j.failed} failed · ${j.queued} queued of ${j.total}` + (j.unit === "tiles" ? " tiles" : ""))),
    h("div", { class: "columns" },
      h("section", { "aria-label": "Frames" }, h("div", { class: "toolbar" }, h("h2", { class: "grow" }, "Frames"), legend),
        h("div", { class: "grid", id: "frames" }, cells)),
      h("section", {}, h("h2", {}, "Settings"), h("dl", { class: "settings panel" },
        fields.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v === null || v === undefined ? "–" : String(v))])),
      h("h2", {}, "Log"), log,
      h("h2", {}, "Results here"), d.results.length ? h("table", {}, h("tbody", {}, d.results.map((r) =>
        h("tr", {}, h("td", {}, r.frame), h("td", {}, r.kind), h("td", {}, r.path))))) :
        h("p", { class: "muted" }, `Frames are kept by the submitting machine (${machineName(j.origin)}).`))));
}

async function openFrame(tid, frame, preview) {
  const dlg = $("#frame");
  $("#frame-title").textContent = `${S.job ? S.job.job.name : ""} — frame ${frame}`;
  const body = $("#frame-body");
  body.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  if (!dlg.open) dlg.showModal();
  let detail = null;
  try { detail = await get(`/api/job/${S.jobId}/task/${tid}`); } catch (e) { body.replaceChildren(h("p", {}, e.message)); return; }
  const img = h("img", { src: `/api/frame/${S.jobId}/${frame}`, alt: `Frame ${frame}` });
  const note = h("p", { class: "muted" });
  img.addEventListener("error", () => {
    if (preview && !img.src.includes("/api/preview/")) {
      img.src = `/api/preview/${preview}`;
      note.textContent = "The full-size frame is on the submitting machine; this is its preview.";
    } else { img.remove(); note.textContent = "No image of this frame yet."; }
  });
  body.replaceChildren(img, note, h("dl", { class: "settings" },
    [["State", detail.state], ["Machines", detail.machines.map(machineName).join(", ") || "–"],
      ["Render time", detail.render_time.toFixed(2) + " s"], ["Attempts", detail.attempts],
      ["Failures", detail.failures], ["Error", detail.error || "–"]]
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
  h("h3", {}, "Log"), h("pre", { class: "log" }, detail.log.map((l) => `${when(l.time)}  ${l.line}\n`).join("") || "(nothing logged)"));
}

// -- farm and messages ----------------------------------------------------------------------

const GOOD = new Set(["VERIFIED", "VERIFIEDME", "ONLINE", "SHARED", "VERIFICATIONESTABLISHED"]);

function farmView() {
  if (!S.farm) return h("div", { class: "panel empty" }, "Loading…");
  const rows = S.farm.machines.map((m) => {
    const r = m.rendering;
    return h("tr", { "data-machine": m.uuid },
      h("td", {}, h("b", {}, m.name), m.local ? h("span", { class: "muted" }, " (this node)") : null,
        h("div", { class: "muted" }, m.address)),
      h("td", {}, m.bits.map((b) => h("span", { class: "badge " + (GOOD.has(b) ? "good" : b === "VERIFYING" ? "info" : "bad") }, b)),
        m.waking ? h("span", { class: "badge info" }, "WAKING") : null),
      h("td", {}, m.online ? "online" : "offline"),
      h("td", { class: "role" }, m.role === "server" ? h("b", {}, "server") : "worker"),
      h("td", {}, r ? [h("a", { href: `#/job/${r.job}` }, r.name || short(r.job)), ` frame ${(r.frames || []).join(",")} `,
        h("progress", { max: 1, value: r.progress, "aria-label": "progress" })] : "–"),
      h("td", {}, Object.entries(m.capabilities || {}).map(([k, v]) => h("span", { class: "badge" }, `${k} ${v}`))),
      h("td", {}, m.load === null ? "–" : `${m.load} / ${m.cpus} cores`),
      h("td", {}, m.mem_total ? `${gib(m.mem_total - m.mem_available)} of ${gib(m.mem_total)}` : "–"),
      h("td", {}, m.online ? "now" : when(m.last_seen)),
      h("td", {}, h("button", { type: "button", onclick: () => machineLog(m) }, "Log")));
  });
  return h("div", {}, h("h1", {}, "Farm"), h("table", { id: "machines" },
    h("thead", {}, h("tr", {}, ["Machine", "Bits", "Online", "Role", "Rendering", "Renderers", "Load", "Memory", "Last seen", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows)), h("div", { id: "machine-log" }));
}

async function machineLog(m) {
  try {
    const lines = await get(`/api/machine/${encodeURIComponent(m.uuid)}/log`);
    const pre = h("pre", { class: "log", tabindex: "0" }, lines.map((l) => `${when(l.time)}  ${l.line}\n`).join("") || "(empty)");
    $("#machine-log").replaceChildren(h("h2", {}, `Log of ${m.name}`), pre);
    pre.focus();
  } catch (e) { toast(e.message); }
}

function messagesView() {
  S.unread = 0;
  const text = h("input", { id: "msg-text", type: "text", placeholder: "Message to the farm", "aria-label": "Message", required: true, maxlength: 4000 });
  const to = h("input", { id: "msg-to", type: "text", placeholder: "to (user, empty = everyone)", "aria-label": "Private to user" });
  const form = h("form", { class: "toolbar", onsubmit: async (e) => {
    e.preventDefault();
    try { await post("/api/messages", { text: text.value, to: to.value }); text.value = ""; } catch (err) { toast(err.message); }
  } }, text, to, h("button", { type: "submit", class: "primary" }, "Send"));
  const list = [...S.messages].sort((a, b) => b.time - a.time).map((m) => h("li", {},
    h("b", {}, m.sender), m.private ? h("span", { class: "badge info" }, `to ${m.to}`) : null,
    h("span", { class: "muted" }, ` ${when(m.time)}`), h("div", {}, m.text)));
  return h("div", {}, h("h1", {}, "Messages"), form,
    list.length ? h("ul", { class: "messages" }, list) : h("div", { class: "panel empty" }, "No messages yet."));
}

// -- data and events ------------------------------------------------------------------------

function sortQueue() {
  S.queue.sort((a, b) => (a.position < b.position ? -1 : a.position > b.position ? 1 : a.uuid < b.uuid ? -1 : 1));
}

async function loadJob() {
  if (S.view !== "job") return;
  const id = S.jobId;
  try {
    const d = await get(`/api/job/${id}`);
    if (S.jobId === id) { S.job = d; S.jobGone = false; }
  } catch (e) { if (S.jobId === id) { S.job = null; S.jobGone = true; } }
  render();
}

async function loadAll() {
  const [me, farm, queue, messages] = await Promise.all([get("/api/me"), get("/api/farm"), get("/api/queue"), get("/api/messages")]);
  S.me = me; S.farm = farm; S.queue = queue.jobs; S.summary = queue.summary; S.messages = messages;
  sortQueue();
  $("#who").textContent = `${me.user}${me.admin ? " (admin)" : ""} on ${me.name}`;
  await loadJob();
  render();
}

const handlers = {
  job(d) {
    const i = S.queue.findIndex((j) => j.uuid === d.job.uuid);
    if (i >= 0) S.queue[i] = d.job; else S.queue.push(d.job);
    sortQueue();
    if (S.job && S.jobId === d.job.uuid) S.job.job = d.job;
  },
  gone(d) {
    S.queue = S.queue.filter((j) => j.uuid !== d.job);
    S.selected.delete(d.job);
    if (S.jobId === d.job) { S.job = null; S.jobGone = true; }
  },
  tasks(d) {
    if (!S.job || S.jobId !== d.job) return;
    if (d.all) { S.job.tasks = d.tasks; return; }
    for (const t of d.tasks) S.job.tasks[t.task] = t;
  },
  log(d) {
    if (!S.job || S.jobId !== d.job) return;
    if (d.replaced) S.job.log = [];
    S.job.log.push(...d.lines);
  },
  farm(d) { S.farm = d; },
  message(d) {
    if (!S.messages.some((m) => m.id === d.id)) { S.messages.push(d); if (S.view !== "messages") S.unread += 1; }
  },
  reset() { loadAll().catch(() => {}); },
};

function connect() {
  const es = new EventSource("/api/events");
  S.es = es;
  const live = $("#live");
  es.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  es.onerror = () => {
    live.textContent = "reconnecting…";
    live.className = "live off";
    if (es.readyState === EventSource.CLOSED) {  // an HTTP error: signed out, or the daemon is starting
      setTimeout(() => { get("/api/me").then(() => { connect(); loadAll(); }).catch(() => setTimeout(connect, 3000)); }, 1000);
    }
  };
  for (const name of Object.keys(handlers)) {
    es.addEventListener(name, (e) => { handlers[name](JSON.parse(e.data)); render(); });
  }
}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const view = ["farm", "messages", "job"].includes(parts[0]) ? parts[0] : "queue";
  S.view = view;
  if (view === "job") {
    if (S.jobId !== parts[1]) { S.jobId = parts[1]; S.job = null; S.jobGone = false; }
    loadJob();
  } else { S.jobId = null; S.job = null; }
  render();
  $("#main").focus({ preventScroll: true });
}

document.addEventListener("DOMContentLoaded", () => {
  $("#logout").addEventListener("click", async () => { try { await post("/api/logout"); } catch (e) { /* ended anyway */ } signedOut(); });
  window.addEventListener("hashchange", route);
  setInterval(() => { if (S.view === "queue" || S.view === "job") render(); }, 5000);  // elapsed and ETA move on
  loadAll().then(() => { route(); connect(); }).catch((e) => { if (e.message !== "signed out") toast(e.message); });
});
