// Runs the viewer page's own script in node (fetch, streams and timers are node's own) over a minimal
// DOM, against a live aggregator: a stand-in for a browser where none is installed. Prints one JSON line
// per step; tests/aggregator/test_viewer.py stores lines between the steps.
//   node viewer_dom.mjs <viewer.html> <aggregator url> <job id> <read token>
import { readFileSync } from "node:fs";

const [page, origin, jobId, token] = process.argv.slice(2);

class El {
  constructor(tag, id) {
    this.tagName = tag; this.id = id || ""; this.children = []; this.listeners = {};
    this.hidden = false; this.value = ""; this.checked = false; this.dataset = {}; this.className = "";
    this.attrs = {}; this.text = ""; this.scrollTop = 0; this.clientHeight = 100; this.scrollHeight = 100;
    this.tBodies = tag === "table" ? [new El("tbody")] : [];
  }
  get textContent() { return this.text + this.children.map((c) => c.textContent).join(""); }
  set textContent(v) { this.text = String(v); this.children = []; }
  get cells() { return this.children; }
  get rows() { return this.children; }
  addEventListener(kind, fn) { (this.listeners[kind] ||= []).push(fn); }
  dispatchEvent(ev) { ev.preventDefault ||= () => {}; for (const fn of this.listeners[ev.type] || []) fn(ev); }
  appendChild(c) { if (c.tagName === "#fragment") this.children.push(...c.children); else this.children.push(c); return c; }
  append(...cs) { for (const c of cs) this.appendChild(c); }
  replaceChildren(...cs) { this.children = []; this.text = ""; this.append(...cs); }
  insertRow() { return this.appendChild(new El("tr")); }
  insertCell() { return this.appendChild(new El("td")); }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  focus() {}
  click() {}
  remove() {}
}

const elements = new Map();
const tags = { streams: "table", follow: "input" };
globalThis.document = {
  title: "",
  getElementById(id) {
    if (!elements.has(id)) {
      const el = new El(tags[id] || "div", id);
      if (id === "follow") el.checked = true;
      elements.set(id, el);
    }
    return elements.get(id);
  },
  createElement: (tag) => new El(tag),
  createDocumentFragment: () => new El("#fragment"),
  createTextNode: (t) => { const el = new El("#text"); el.text = String(t); return el; },
  body: new El("body"),
};
const path = `/v1/jobs/${jobId}/view`;
globalThis.location = { pathname: path, search: "", hash: "#token=" + encodeURIComponent(token), get href() { return origin + path + this.search + this.hash; } };
globalThis.history = { replaceState(_s, _t, url) { location.hash = url.includes("#") ? url.slice(url.indexOf("#")) : ""; } };
const store = new Map();
globalThis.sessionStorage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
globalThis.Event = class { constructor(type) { this.type = type; } };
const seenUrls = [];
const nodeFetch = globalThis.fetch;
globalThis.fetch = (url, init) => { seenUrls.push(String(url)); return nodeFetch(origin + url, init); };

const html = readFileSync(page, "utf8");
const script = html.slice(html.indexOf("<script>") + 8, html.lastIndexOf("</script>"));
(0, eval)(script);

const $ = (id) => document.getElementById(id);
const logLines = () => $("log").children.map((c) => c.textContent);
async function until(what, check, timeout = 20000) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = what();
    if (check(v)) return v;
    if (Date.now() > end) { console.log(JSON.stringify({ error: "timeout", last: v })); process.exit(1); }
    await new Promise((r) => setTimeout(r, 50));
  }
}
const say = (obj) => console.log(JSON.stringify(obj));
const has = (s) => (lines) => lines.some((l) => l.endsWith(" " + s));

await until(logLines, has("line 4"));
const phases = await until(() => $("phases").children.map((b) => b.textContent), (v) => v.length >= 3);
say({ step: 1, phases, hash: location.hash, lines: logLines() });
await until(logLines, has("line 7"));
say({ step: 2, lines: logLines() });
$("filter").value = "export";
$("filter").dispatchEvent(new Event("input"));
const filtered = await until(logLines, (l) => !l.some((x) => x.endsWith(" line 7")));
say({ step: 3, lines: filtered });
await until(() => $("status").textContent, (s) => s.startsWith("ended"));
const exits = await until(() => $("streams").tBodies[0].rows.map((r) => r.cells[5].textContent), (v) => v.includes("3"));
const streams = $("streams").tBodies[0].rows.map((r) => r.cells.map((c) => c.textContent));
say({ step: 4, exits, streams, lastOutput: $("last-output").textContent, urls: seenUrls });

// A phase's button: the log shows that phase alone (the filter cleared first).
$("filter").value = "";
$("filter").dispatchEvent(new Event("input"));
const exporting = $("phases").children.find((b) => b.textContent === "exporting_results");
exporting.dispatchEvent(new Event("click"));
const phaseLines = await until(logLines, (l) => l.length > 0 && !l.some((x) => x.includes("/blast ")));
// The download link: every line of the phase, as text, fetched with the token in a header.
let blob = null;
URL.createObjectURL = (b) => { blob = b; return "blob:test"; };
URL.revokeObjectURL = () => {};
$("download").dispatchEvent(Object.assign(new Event("click"), { preventDefault() {} }));
await until(() => blob, (b) => b !== null);
say({ step: 5, phaseLines, download: await blob.text(), urls: seenUrls });
process.exit(0);
