// Lineguard console: follow the line live (server-sent events) and draw regions on a frame.
"use strict";

const MAX_ROWS = 50;
const MAX_THUMBS = 24;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function frameLink(id) {
  return "/frame?id=" + encodeURIComponent(id);
}

function badge(cls, text) {
  return el("span", { class: "badge " + cls }, text);
}

function stationCard(name) {
  const stations = document.getElementById("stations");
  for (const card of stations.querySelectorAll("section.station")) {
    if (card.dataset.station === name) return card;
  }
  const placeholder = document.getElementById("no-stations");
  if (placeholder) placeholder.remove();
  const card = document.getElementById("station-template").content.firstElementChild.cloneNode(true);
  card.dataset.station = name;
  card.querySelector("h2").textContent = name;
  const after = [...stations.querySelectorAll("section.station")].find((c) => c.dataset.station > name);
  stations.insertBefore(card, after || null);
  return card;
}

function verdictRow(row) {
  const tr = el("tr", { class: "verdict fresh d-" + row.decision });
  tr.dataset.frame = row.frame_id;
  tr.append(el("td", {}, row.time));
  const link = el("td");
  link.append(el("a", { href: frameLink(row.frame_id) }, row.frame_id));
  tr.append(link, el("td", {}, row.product_class));
  const decision = el("td");
  decision.append(badge("d-" + row.decision, row.decision));
  if (row.late) decision.append(" ", badge("late", "late"));
  tr.append(decision, el("td", { class: "num" }, String(row.score)));
  const judged = el("td", { class: "judged" });
  if (row.feedback) judged.append(badge("fb-" + row.feedback, row.feedback));
  tr.append(judged);
  return tr;
}

function count(row) {
  const body = document.getElementById("counts-body");
  let tr = [...body.rows].find((r) => r.dataset.class === row.product_class);
  if (!tr) {
    tr = el("tr");
    tr.dataset.class = row.product_class;
    tr.append(el("th", {}, row.product_class));
    for (const d of ["pass", "reject", "review", "error"]) {
      const td = el("td", { class: "num d-" + d }, "0");
      td.dataset.decision = d;
      tr.append(td);
    }
    const after = [...body.rows].find((r) => r.dataset.class > row.product_class);
    body.insertBefore(tr, after || null);
  }
  const cell = [...tr.cells].find((c) => c.dataset.decision === row.decision);
  if (cell) cell.textContent = String(Number(cell.textContent) + 1);
}

function addVerdict(row) {
  const tbody = stationCard(row.station_id).querySelector("tbody");
  tbody.prepend(verdictRow(row));
  while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
  count(row);
}

function addEvidence(row) {
  const gallery = document.getElementById("gallery");
  const empty = gallery.querySelector(".empty");
  if (empty) empty.remove();
  const a = el("a", { class: "thumb fresh d-" + row.decision, href: frameLink(row.frame_id) });
  a.dataset.frame = row.frame_id;
  const src = "/frame/picture?id=" + encodeURIComponent(row.frame_id) + "&kind=overlay&size=thumb";
  a.append(el("img", { src: src, alt: "heatmap of " + row.frame_id }));
  a.append(el("span", {}, row.decision + " · " + row.product_class + " · " + row.score));
  a.append(el("span", { class: "muted" }, row.station_id + " · " + row.time));
  gallery.prepend(a);
  while (gallery.children.length > MAX_THUMBS) gallery.lastElementChild.remove();
}

function markFeedback(data) {
  for (const tr of document.querySelectorAll("tr.verdict")) {
    if (tr.dataset.frame !== data.frame_id) continue;
    const cell = tr.querySelector("td.judged");
    cell.replaceChildren(badge("fb-" + data.label, data.label));
  }
}

// One row per announcement: it arrives on `models` and on `model-history`, in either order.
function showAnnouncement(data) {
  const body = document.getElementById("models-body");
  const empty = body.querySelector("tr.empty");
  if (empty) empty.remove();
  let tr = Array.from(body.querySelectorAll("tr")).find((row) => row.dataset.key === data.key);
  if (!tr) {
    tr = el("tr", { class: "fresh", "data-key": data.key });
    body.prepend(tr);
  }
  tr.replaceChildren(
    el("td", {}, data.model_version), el("td", {}, data.announced_at), el("td", {}, data.action),
    el("td", {}, data.actor), el("td", {}, data.signed_by || "unsigned"), el("td", { class: "why" }, data.reason));
}

function addModel(data) {
  showAnnouncement(data);
  document.getElementById("serving-version").textContent = data.model_version;
}

function followLine() {
  const url = document.body.dataset.live;
  if (!url || !window.EventSource) return;
  const source = new EventSource(url + "?since=" + encodeURIComponent(document.body.dataset.seq || "0"));
  source.addEventListener("reload", () => window.location.reload());
  source.onmessage = (message) => {
    const change = JSON.parse(message.data);
    if (change.kind === "verdict") addVerdict(change.data);
    else if (change.kind === "evidence") addEvidence(change.data);
    else if (change.kind === "feedback") markFeedback(change.data);
    else if (change.kind === "model") addModel(change.data);
    else if (change.kind === "history") showAnnouncement(change.data);
  };
}

function pictureSwitch() {
  const image = document.getElementById("frame-image");
  if (!image) return;
  for (const link of document.querySelectorAll(".switch a")) {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      image.src = image.dataset[link.dataset.show];
      for (const other of document.querySelectorAll(".switch a")) other.classList.toggle("active", other === link);
    });
  }
}

function regionDrawing() {
  const svg = document.getElementById("regions");
  const stage = document.getElementById("stage");
  const field = document.getElementById("drawn-regions");
  if (!svg || !stage || !field) return;
  const width = Number(stage.dataset.width);
  const height = Number(stage.dataset.height);
  const boxes = [];
  let start = null;
  let live = null;

  function point(event) {
    const box = svg.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * width;
    const y = ((event.clientY - box.top) / box.height) * height;
    return { x: Math.min(Math.max(x, 0), width), y: Math.min(Math.max(y, 0), height) };
  }
  function rect(a, b) {
    const x = Math.floor(Math.min(a.x, b.x));
    const y = Math.floor(Math.min(a.y, b.y));
    return { x: x, y: y, w: Math.ceil(Math.max(a.x, b.x)) - x, h: Math.ceil(Math.max(a.y, b.y)) - y };
  }
  function show(node, r) {
    node.setAttribute("x", r.x);
    node.setAttribute("y", r.y);
    node.setAttribute("width", Math.max(r.w, 1));
    node.setAttribute("height", Math.max(r.h, 1));
  }
  function save() {
    field.value = boxes.map((b) => [b.x, b.y, b.w, b.h].join(",")).join(";");
    document.getElementById("drawn-count").textContent = String(boxes.length);
  }
  svg.addEventListener("mousedown", (event) => {
    event.preventDefault();
    start = point(event);
    live = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    live.setAttribute("class", "drawn");
    svg.append(live);
    show(live, rect(start, start));
  });
  svg.addEventListener("mousemove", (event) => {
    if (start) show(live, rect(start, point(event)));
  });
  window.addEventListener("mouseup", (event) => {
    if (!start) return;
    const r = rect(start, point(event));
    start = null;
    if (r.w >= 2 && r.h >= 2 && boxes.length < 16) {
      boxes.push(r);
      show(live, r);
      document.getElementById("label-defect").checked = true;
      labelChanged();
    } else {
      live.remove();
    }
    save();
  });
  document.getElementById("clear-drawn").addEventListener("click", () => {
    boxes.length = 0;
    for (const node of svg.querySelectorAll("rect.drawn")) node.remove();
    save();
  });
}

function labelChanged() {
  const good = document.getElementById("label-good");
  const defectOnly = document.querySelector("fieldset.defect-only");
  if (good && defectOnly) defectOnly.disabled = good.checked;
  const drawn = document.getElementById("drawn-regions");
  if (drawn) drawn.disabled = good.checked;
}

function feedbackForm() {
  for (const radio of document.querySelectorAll("input[name=label]")) radio.addEventListener("change", labelChanged);
}

document.addEventListener("DOMContentLoaded", () => {
  followLine();
  pictureSwitch();
  regionDrawing();
  feedbackForm();
});
