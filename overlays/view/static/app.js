// overlays ui: the live picture. One Server-Sent Events stream brings each new snapshot
// (picture model, Graphviz SVG, recent operations); the page redraws in place, never reloads.
// All text from the server goes into the page as text (textContent), never as markup; the
// SVG is Graphviz's, whose labels overlays escaped.
"use strict";

const page = {
  digest: null,
  model: null,
  nodes: new Map(),
  edges: new Map(),
  selected: null,
  updates: 0,
};
window.overlaysUi = page; // read by the browser test

function $(id) { return document.getElementById(id); }

function element(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (className) e.className = className;
  return e;
}

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + kind;
}

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => setStatus("live", "live"));
  source.addEventListener("error", () => setStatus("reconnecting…", "down")); // EventSource retries by itself
  source.addEventListener("state", (event) => apply(JSON.parse(event.data)));
}

function apply(snapshot) {
  const error = $("error");
  error.hidden = !snapshot.error;
  error.textContent = snapshot.error || "";
  if (snapshot.svg && snapshot.digest !== page.digest) {
    page.model = snapshot.graph;
    page.nodes = new Map(snapshot.graph.nodes.map((n) => [n.id, n]));
    page.edges = new Map(snapshot.graph.edges.map((e) => [e.id, e]));
    draw(snapshot.svg);
    page.digest = snapshot.digest;
    $("title").textContent = snapshot.graph.title;
    document.title = snapshot.graph.title;
  }
  $("revision").textContent = `store revision ${snapshot.revision}`;
  renderOperations(snapshot.operations || []);
  select(page.selected);
  page.updates += 1;
}

function draw(svgText) {
  const doc = new DOMParser().parseFromString(svgText, "image/svg+xml");
  const svg = document.importNode(doc.documentElement, true);
  $("graph").replaceChildren(svg);
}

// -- details of what was clicked ------------------------------------------------------------

function objectOf(id) {
  if (id && id.startsWith("cluster:")) return { id: "host:" + id.slice(8), node: page.nodes.get("host:" + id.slice(8)) };
  if (page.nodes.has(id)) return { id, node: page.nodes.get(id) };
  if (page.edges.has(id)) return { id, edge: page.edges.get(id) };
  return null;
}

function select(id) {
  document.querySelectorAll("#graph g.selected").forEach((g) => g.classList.remove("selected"));
  const details = $("details");
  if (!id) {
    page.selected = null;
    details.replaceChildren(element("p", "Click a host, network, sandbox or link to see its details.", "empty"));
    return;
  }
  page.selected = id;
  const found = objectOf(id);
  if (!found || (!found.node && !found.edge)) {
    details.replaceChildren(element("p", `${id} is gone.`, "empty"));
    return;
  }
  const g = document.getElementById(found.id) || document.getElementById(id);
  if (g) g.classList.add("selected");
  details.replaceChildren(...(found.node ? nodeDetails(found.node) : edgeDetails(found.edge)));
}

function table(pairs) {
  const dl = element("dl");
  for (const [key, value] of Object.entries(pairs)) {
    dl.append(element("dt", key), element("dd", value));
  }
  return dl;
}

function ref(id, text) {
  const a = element("a", text, "ref");
  a.addEventListener("click", () => select(id));
  return a;
}

function nodeName(id) {
  const n = page.nodes.get(id);
  return n ? `${n.kind} ${n.title}` : id;
}

function nodeDetails(node) {
  const parts = [element("div", node.kind + (node.host ? ` on host ${node.host}` : ""), "kind"),
    element("h3", node.title), table(node.details)];
  const links = page.model.edges.filter((e) => e.source === node.id || e.target === node.id);
  if (links.length) {
    const ul = element("ul", null, "links");
    for (const e of links) {
      const other = e.source === node.id ? e.target : e.source;
      const li = element("li");
      li.append(ref(e.id, e.label || e.kind), " — ", ref(other, nodeName(other)));
      ul.append(li);
    }
    parts.push(element("h4", "Links"), ul);
  }
  return parts;
}

function edgeDetails(edge) {
  const ends = element("p");
  ends.append(ref(edge.source, nodeName(edge.source)), " — ", ref(edge.target, nodeName(edge.target)));
  return [element("div", edge.kind + " link", "kind"), element("h3", edge.label || edge.kind), ends,
    table(edge.details)];
}

$("graph").addEventListener("click", (event) => {
  const g = event.target.closest("g.node, g.edge, g.cluster");
  select(g ? g.id : null);
});

$("zoom").addEventListener("click", () => {
  const actual = $("graph").classList.toggle("actual");
  $("zoom").textContent = actual ? "fit to window" : "actual size";
});

// -- recent operations and their --explain lines ----------------------------------------------

let shownOperations = "";

function renderOperations(operations) {
  const key = JSON.stringify(operations);
  if (key === shownOperations) return; // keep what the reader opened
  shownOperations = key;
  const box = $("operations");
  if (!operations.length) {
    const p = element("p", null, "empty");
    p.append("No operations recorded yet. Every overlays command that changes this host appears here, newest",
      " first, with the ", element("code", "ip"), ", ", element("code", "bridge"), ", ", element("code", "sysctl"),
      " and ", element("code", "nft"), " commands that do the same by hand (", element("code", "overlays --explain"),
      " prints them as they happen).");
    box.replaceChildren(p);
    return;
  }
  box.replaceChildren(...operations.map(operation));
}

function operation(op) {
  const d = element("details", null, "op" + (op.ok ? "" : " failed"));
  const when = new Date(op.time * 1000).toLocaleTimeString();
  d.append(element("summary", `${when}  ${op.command}${op.ok ? "" : "  (failed: " + (op.error || "?") + ")"}`));
  const text = op.lines.join("\n");
  d.append(element("pre", text || "(no kernel change)"));
  if (text && navigator.clipboard) {
    const copy = element("button", "copy");
    copy.type = "button";
    copy.addEventListener("click", () => navigator.clipboard.writeText(text));
    d.append(copy);
  }
  return d;
}

connect();
