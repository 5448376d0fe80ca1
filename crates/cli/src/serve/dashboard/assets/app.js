// SocketCluster operator dashboard: plain JS, no dependencies.
"use strict";
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const $ = (id) => document.getElementById(id);
const HISTORY = 300; // seconds of chart history

async function action(path, body) {
  const r = await fetch("/dashboard/api/" + path, {
    method: "POST",
    headers: { "content-type": "application/json", "x-csrf-token": csrf },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  const v = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(v.error || r.status);
  return v;
}
async function get(path) {
  const r = await fetch("/dashboard/api/" + path, { credentials: "same-origin" });
  if (r.status === 401) location.reload();
  return r;
}
function cell(tr, text) {
  const td = document.createElement("td");
  td.textContent = text;
  tr.appendChild(td);
  return td;
}

// ---- navigation
const sections = ["overview", "channels", "sockets", "config"];
function show() {
  const name = sections.includes(location.hash.slice(1)) ? location.hash.slice(1) : "overview";
  for (const s of sections) {
    $(s).hidden = s !== name;
    $("nav-" + s).classList.toggle("active", s === name);
  }
  if (name === "channels") loadChannels();
  if (name === "sockets") findSockets();
  if (name === "config") loadConfig();
}
window.addEventListener("hashchange", show);

// ---- overview: live figures over SSE, inline SVG charts
const series = {};
function chart(key, value) {
  const s = (series[key] ||= []);
  s.push(value);
  if (s.length > HISTORY) s.shift();
  const svg = $("chart-" + key);
  if (!svg) return;
  const max = Math.max(1, ...s);
  // newest at the right edge, one point per second
  const pts = s.map((v, i) => `${300 - ((s.length - 1 - i) * 300) / (HISTORY - 1)},${58 - (v / max) * 56}`).join(" ");
  let line = svg.querySelector("polyline");
  if (!line) {
    line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    svg.appendChild(line);
  }
  line.setAttribute("points", pts);
}
function connectStats() {
  const es = new EventSource("/dashboard/events");
  es.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "dot on"; });
  es.addEventListener("error", () => { $("live").textContent = "reconnecting"; $("live").className = "dot off"; });
  es.addEventListener("stats", (e) => {
    const v = JSON.parse(e.data);
    for (const [k, x] of Object.entries(v)) {
      const el = $("stat-" + k);
      if (k === "backplane") {
        el.textContent = x === null ? "none (in-process)" : (x.up ? "up" : "DOWN") + " " + (x.state || "");
      } else if (el) {
        el.textContent = x;
        chart(k, x);
      }
    }
    if (v.instances) renderInstances(v.instances);
  });
}
function renderInstances(list) {
  const body = $("instance-list");
  body.textContent = "";
  for (const i of list) {
    const tr = document.createElement("tr");
    tr.dataset.address = i.address;
    cell(tr, i.id + (i.self ? " (this one)" : ""));
    cell(tr, i.address);
    cell(tr, i.sockets).className = "instance-sockets";
    cell(tr, `${i.messagesInPerSec} / ${i.messagesOutPerSec}`);
    const b = i.backplane;
    cell(tr, b ? (b.up ? "up" : "DOWN") + " " + (b.state || "") : "none");
    cell(tr, (i.lastSeenMs / 1000).toFixed(1) + " s ago");
    body.appendChild(tr);
  }
}

// ---- channels
let channels = [];
let watch = null;
async function loadChannels() {
  const r = await get("channels");
  channels = (await r.json()).channels || [];
  renderChannels();
}
function renderChannels() {
  const q = $("channel-search").value.trim().toLowerCase();
  const body = $("channel-list");
  body.textContent = "";
  for (const c of channels.filter((c) => c.channel.toLowerCase().includes(q))) {
    const tr = document.createElement("tr");
    tr.className = "pick";
    tr.dataset.channel = c.channel;
    cell(tr, c.channel);
    cell(tr, c.subscribers);
    tr.addEventListener("click", () => openChannel(c.channel));
    body.appendChild(tr);
  }
}
$("channel-search").addEventListener("input", renderChannels);
function openChannel(name) {
  if (watch) watch.close();
  $("channel-view").hidden = false;
  $("channel-name").textContent = name;
  $("channel-feed").textContent = "";
  $("channel-view").dataset.channel = name;
  $("channel-view").dataset.ready = "false";
  watch = new EventSource("/dashboard/events/channel?name=" + encodeURIComponent(name));
  watch.addEventListener("ready", () => { $("channel-view").dataset.ready = "true"; });
  watch.addEventListener("publication", (e) => {
    const li = document.createElement("li");
    li.textContent = new Date().toLocaleTimeString() + "  " + JSON.stringify(JSON.parse(e.data).data);
    $("channel-feed").prepend(li);
  });
}
$("publish-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("publish-data").value;
  let data;
  try { data = text === "" ? null : JSON.parse(text); } catch { data = text; }
  try {
    await action("publish", { channel: $("channel-view").dataset.channel, data });
    $("publish-result").textContent = "published";
  } catch (err) {
    $("publish-result").textContent = "failed: " + err.message;
  }
});

// ---- sockets
async function findSockets(e) {
  if (e) e.preventDefault();
  const q = $("socket-search").value.trim();
  const r = await get("sockets?q=" + encodeURIComponent(q));
  const v = await r.json();
  $("socket-summary").textContent = `${v.sockets.length} shown of ${v.total} connected`;
  const body = $("socket-list");
  body.textContent = "";
  for (const s of v.sockets) {
    const tr = document.createElement("tr");
    tr.dataset.socket = s.id;
    cell(tr, s.id);
    cell(tr, s.remoteAddr || "");
    cell(tr, s.authenticated ? "authenticated" : "anonymous");
    cell(tr, s.authToken ? JSON.stringify(s.authToken) : "");
    cell(tr, s.subscriptions.join(", "));
    const td = cell(tr, "");
    for (const [label, path] of [["Disconnect", "disconnect"], ["Deauthenticate", "deauthenticate"]]) {
      const b = document.createElement("button");
      b.textContent = label;
      b.className = path;
      b.addEventListener("click", async () => {
        try {
          const res = await action(path, { socket: s.id });
          $("socket-result").textContent = `${label}: ${JSON.stringify(res)}`;
        } catch (err) {
          $("socket-result").textContent = `${label} failed: ${err.message}`;
        }
        findSockets();
      });
      td.appendChild(b);
    }
    body.appendChild(tr);
  }
}
$("socket-search-form").addEventListener("submit", findSockets);

// ---- configuration
async function loadConfig() {
  $("config-text").textContent = await (await get("config")).text();
}

// ---- log out (an action: it carries the CSRF token too)
$("logout").addEventListener("submit", async (e) => {
  e.preventDefault();
  await fetch("/dashboard/logout", { method: "POST", headers: { "x-csrf-token": csrf }, credentials: "same-origin" });
  location.href = "/dashboard/";
});

connectStats();
show();
