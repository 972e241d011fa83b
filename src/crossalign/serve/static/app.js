// The search page: every request goes to this service, nothing is loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form"), query = $("query"), drop = $("drop"), file = $("file");
const statusLine = $("status"), results = $("results");

// what this service allows and what its scores are; until it answers (or if it cannot),
// requests name no k and the service's own default applies, which is within its limit
let config = {k: null, ranking: "plain", score_kind: "cosine similarity", modes: ["vector"],
              calibrated: false};
const configured = fetch("/config").then((r) => (r.ok ? r.json() : null)).then((c) => {
  if (!c) return;
  config = c;
  query.maxLength = c.max_query_chars;
  $("mode").hidden = (c.modes || []).length < 2;
  $("good-switch").hidden = !c.calibrated;
}).catch(() => {});

// "only good matches": hits whose calibrated probability of being the match is at least this
const GOOD_PROB = "0.5";

function target() {
  return document.querySelector('input[name="target"]:checked').value;
}

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
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

// the page's state lives in its address: /?q=...&target=...&split=... opens that search, and
// the back button goes through the searches made
const FILTERS = {split: "f-split", folder: "f-folder", since: "f-since", until: "f-until",
                 min_score: "f-min-score"};

function readForm(extra) {
  const state = {target: target()};
  const q = query.value.trim();
  if (q) state.q = q;
  if (mode() !== "vector") state.mode = mode();
  if ($("good").checked) state.min_prob = GOOD_PROB;
  for (const [key, id] of Object.entries(FILTERS)) {
    const v = $(id).value.trim();
    if (v) state[key] = v;
  }
  const labels = $("f-label").value.split(";").map((x) => x.trim()).filter(Boolean);
  if (labels.length) state.label = labels;
  return {...state, ...(extra || {})};
}

function writeForm(state) {
  query.value = state.q || "";
  const t = document.querySelector(`input[name="target"][value="${state.target || "images"}"]`);
  (t || document.querySelector('input[name="target"][value="images"]')).checked = true;
  const m = document.querySelector(`input[name="mode"][value="${state.mode || "vector"}"]`);
  (m || document.querySelector('input[name="mode"][value="vector"]')).checked = true;
  $("good").checked = Boolean(state.min_prob);
  for (const [key, id] of Object.entries(FILTERS)) $(id).value = state[key] || "";
  $("f-label").value = (state.label || []).join("; ");
  if (Object.keys(FILTERS).some((k) => state[k]) || (state.label || []).length) $("narrow").open = true;
}

function fromURL(search) {
  const p = new URLSearchParams(search), state = {};
  for (const key of ["q", "like", "target", "mode", "min_prob", ...Object.keys(FILTERS)]) {
    if (p.get(key)) state[key] = p.get(key);
  }
  if (p.getAll("label").length) state.label = p.getAll("label");
  return state;
}

function toParams(state, withK) {
  const p = new URLSearchParams();
  if (withK && config.k) p.set("k", String(config.k));
  for (const [key, v] of Object.entries(state)) {
    for (const one of [].concat(v)) p.append(key, one);
  }
  return p.toString();
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
  if (hit.cosine !== null && data.score_kind !== "cosine similarity") {
    meta.appendChild(el("span", {class: "cos", title: "cosine similarity"}, `cos ${hit.cosine.toFixed(3)}`));
  }
  if (hit.probability !== null) {
    meta.appendChild(el("span", {class: "prob", title: "calibrated probability that this is the match"},
                        `p ${hit.probability.toFixed(2)}`));
  }
  body.appendChild(meta);
  if (hit.snippet.length) body.appendChild(snippet(hit.snippet));
  else if (hit.captions.length) body.appendChild(el("div", {class: "caption"}, hit.captions[0]));
  if (hit.ocr) body.appendChild(el("div", {class: "ocr", title: "words read in the picture"}, "words: " + hit.ocr));
  body.appendChild(el("div", {class: "name"}, hit.name));
  if (hit.date) body.appendChild(el("div", {class: "date", title: "taken (EXIF), else the file's date"},
                                    hit.date.slice(0, 10)));
  const actions = el("div", {class: "actions"});
  const like = el("button", {class: "like", type: "button"}, "more like this");
  like.addEventListener("click", () => go({...readForm(), q: undefined, like: String(hit.image_id),
                                           target: "images"}, true));
  actions.appendChild(like);
  if (data.target === "images" && data.query && data.query.q) {
    const why = el("button", {class: "why", type: "button", title: "which parts of the picture and which words made this match"}, "why?");
    why.addEventListener("click", () => explain(c, img, hit, data.query.q, why));
    actions.appendChild(why);
  }
  body.appendChild(actions);
  c.appendChild(body);
  return c;
}

// where the words matched: [text, matched] pieces, the matched ones marked
function snippet(pieces) {
  const box = el("div", {class: "caption snippet"});
  for (const [text, matched] of pieces) box.appendChild(matched ? el("mark", {}, text) : document.createTextNode(text));
  return box;
}

// the words of the query, each shaded by its part in the match (red raised it, blue lowered it)
function shadedWords(words) {
  const top = Math.max(1e-9, ...words.map((w) => Math.abs(w.score)));
  const box = el("div", {class: "words"});
  for (const w of words) {
    const a = Math.min(Math.abs(w.score) / top, 1).toFixed(2);
    const colour = w.score >= 0 ? `rgba(214, 39, 40, ${a})` : `rgba(31, 119, 180, ${a})`;
    const word = el("span", {title: `${w.score.toFixed(4)} (${(w.share * 100).toFixed(0)}%)`}, w.word);
    word.style.background = colour;  // a style property, which the page's policy allows (an attribute it refuses)
    box.appendChild(word);
    box.appendChild(document.createTextNode(" "));
  }
  return box;
}

// the heat map over the picture and the shaded words, in place of the thumbnail; again: back
async function explain(c, img, hit, q, button) {
  const shown = c.querySelector(".why-panel");
  if (shown) {
    shown.remove();
    img.src = hit.thumb_url;
    button.textContent = "why?";
    return;
  }
  button.disabled = true;
  button.textContent = "explaining…";
  try {
    const resp = await fetch(`/explain?${new URLSearchParams({id: String(hit.image_id), q})}`);
    if (signedOut(resp)) return;
    const data = await resp.json();
    if (!resp.ok) {
      setStatus(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail), true);
      button.textContent = "why?";
      return;
    }
    img.src = data.overlay;
    const panel = el("div", {class: "why-panel"});
    panel.appendChild(el("div", {class: "muted"}, `similarity ${data.similarity.toFixed(3)} · heat: ${data.method}`));
    panel.appendChild(shadedWords(data.words));
    c.querySelector(".body").insertBefore(panel, c.querySelector(".actions"));
    button.textContent = "hide why";
  } catch (err) {
    setStatus("the service did not answer: " + err, true);
    button.textContent = "why?";
  } finally {
    button.disabled = false;
  }
}

// a service shared with a token: a request refused for want of it goes to the sign-in form
function signedOut(resp) {
  if (resp.status !== 401) return false;
  location.assign("/login");
  return true;
}

function clean(state) {
  return Object.fromEntries(Object.entries(state).filter(([, v]) => v !== undefined));
}

function describe(state) {
  return state.q ? `“${state.q}”` : "images like #" + state.like;
}

// path: a function of the query string, called once the service's limits are known
async function run(path, init, label) {
  setStatus("searching…");
  const t0 = performance.now();
  try {
    await configured;
    const resp = await fetch(path(), init);
    if (signedOut(resp)) return;
    const data = await resp.json();
    if (!resp.ok) {
      const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      setStatus(detail, true);
      return;
    }
    results.replaceChildren(...data.hits.map((hit) => card(hit, data)));
    const ms = (data.seconds * 1000).toFixed(1), total = (performance.now() - t0).toFixed(0);
    const none = data.hits.length ? "" : " (nothing passes the filters and the cut-off)";
    const at = data.cutoff ? data.cutoff.cosine : null;
    const cut = at == null ? "" : at > 1 ? ", cut off: no item can be that likely a match"
                                         : `, cut off below cos ${at.toFixed(3)}`;
    setStatus(`${data.hits.length} ${data.target} for ${label} in ${ms} ms (${total} ms with the network; ${data.mode} search${cut})${none}`);
  } catch (err) {
    setStatus("the service did not answer: " + err, true);
  }
}

// a search by text or by an indexed image; push: record it in the address and the history
function go(state, push) {
  state = clean(state);
  if (push) history.pushState(null, "", "/?" + toParams(state, false));
  writeForm(state);
  return run(() => "/search?" + toParams(state, true), {method: "GET"}, describe(state));
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  if (!query.value.trim()) { setStatus("type something to search for", true); return; }
  go(readForm(), true);
});

function searchFile(f) {
  if (!f) return;
  const body = new FormData();
  body.append("file", f, f.name);
  const state = readForm();
  delete state.q;
  delete state.mode;  // a picture is searched by meaning; the calibration is of text queries
  delete state.min_prob;
  run(() => "/search/image?" + toParams(state, true), {method: "POST", body}, f.name);
}

file.addEventListener("change", () => searchFile(file.files[0]));
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  searchFile(e.dataTransfer.files[0]);
});
document.querySelectorAll('input[name="target"], input[name="mode"], #good').forEach((r) => r.addEventListener("change", () => {
  if (query.value.trim()) form.requestSubmit();
}));

function openFromURL() {
  const state = fromURL(location.search);
  writeForm(state);
  if (state.q || state.like) go(state, false);
  else { results.replaceChildren(); setStatus(""); }
}
window.addEventListener("popstate", openFromURL);
openFromURL();

fetch("/health").then((r) => r.json()).then((h) => {
  $("stats").textContent = h.status === "ok" ? `${h.images} images, ${h.captions} captions`
                                             : `the index is not usable: ${h.detail}`;
  if (h.status !== "ok") $("stats").className = "error";
}).catch(() => {});
