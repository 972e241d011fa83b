// The search page: every request goes to this service, nothing is loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form"), query = $("query"), drop = $("drop"), file = $("file");
const statusLine = $("status"), results = $("results");

// what this service allows and what its scores are; until it answers (or if it cannot),
// requests name no k and the service's own default applies, which is within its limit
let config = {k: null, ranking: "plain", score_kind: "cosine similarity"};
const configured = fetch("/config").then((r) => (r.ok ? r.json() : null)).then((c) => {
  if (!c) return;
  config = c;
  query.maxLength = c.max_query_chars;
}).catch(() => {});

function target() {
  return document.querySelector('input[name="target"]:checked').value;
}

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "muted";
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// the label before a score: "cos" for cosine similarity, else the ranking that made it
function scoreLabel(data) {
  return data.score_kind === "cosine similarity" ? "cos" : data.ranking;
}

function card(hit, data) {
  const c = el("article", {class: "card", "data-id": String(hit.image_id)});
  const img = el("img", {src: hit.thumb_url, alt: hit.captions[0] || hit.name});
  c.appendChild(img);
  const body = el("div", {class: "body"});
  const meta = el("div", {class: "meta"});
  meta.appendChild(el("span", {}, "#" + hit.rank));
  meta.appendChild(el("span", {class: "score", title: `${data.score_kind} (ranking: ${data.ranking})`},
                      `${scoreLabel(data)} ${hit.score.toFixed(3)}`));
  body.appendChild(meta);
  if (hit.captions.length) body.appendChild(el("div", {class: "caption"}, hit.captions[0]));
  body.appendChild(el("div", {class: "name"}, hit.name));
  const like = el("button", {class: "like", type: "button"}, "more like this");
  like.addEventListener("click", () => run(() => "/search?" + params({like: hit.image_id}),
                                           {method: "GET"}, "images like #" + hit.image_id));
  body.appendChild(like);
  c.appendChild(body);
  return c;
}

function params(extra) {
  const k = config.k ? {k: String(config.k)} : {};
  return new URLSearchParams({...k, target: target(), ...extra}).toString();
}

// path: a function of the query string, called once the service's limits are known
async function run(path, init, label) {
  setStatus("searching…");
  const t0 = performance.now();
  try {
    await configured;
    const resp = await fetch(path(), init);
    const data = await resp.json();
    if (!resp.ok) {
      const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      setStatus(detail, true);
      return;
    }
    results.replaceChildren(...data.hits.map((hit) => card(hit, data)));
    const ms = (data.seconds * 1000).toFixed(1), total = (performance.now() - t0).toFixed(0);
    setStatus(`${data.hits.length} ${data.target} for ${label} in ${ms} ms (${total} ms with the network)`);
  } catch (err) {
    setStatus("the service did not answer: " + err, true);
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const q = query.value.trim();
  if (!q) { setStatus("type something to search for", true); return; }
  run(() => "/search?" + params({q}), {method: "GET"}, `“${q}”`);
});

function searchFile(f) {
  if (!f) return;
  const body = new FormData();
  body.append("file", f, f.name);
  run(() => "/search/image?" + params({}), {method: "POST", body}, f.name);
}

file.addEventListener("change", () => searchFile(file.files[0]));
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  searchFile(e.dataTransfer.files[0]);
});
document.querySelectorAll('input[name="target"]').forEach((r) => r.addEventListener("change", () => {
  if (query.value.trim()) form.requestSubmit();
}));

fetch("/health").then((r) => r.json()).then((h) => {
  $("stats").textContent = h.status === "ok" ? `${h.images} images, ${h.captions} captions`
                                             : `the index is not usable: ${h.detail}`;
  if (h.status !== "ok") $("stats").className = "error";
}).catch(() => {});
