// The builder page: a palette from GET /v1/nodes, nodes on a baklavajs canvas whose
// forms come from their input JSON Schemas, image fields as sockets, and the graph run
// as one flow job (POST /v1/flows/run) whose events drive each node's progress,
// thumbnails, notices and errors. baklavajs draws nodes, sockets and wires; the form
// controls are plain labelled DOM elements (baklava's own widgets have no labels), put
// in place by a render-less Vue component per interface.

import { ApiError, call, follow, imageUrl, setToken, token, upload } from "./api.js";
import { defaultInputs, fromFlow, toFlow } from "./flow.js";
import { control, fieldsOf, initialValue } from "./schema.js";

const { Core, createBaklava } = globalThis.BaklavaJS;
const STORE_KEY = "imagenodes.flow";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const $ = (selector) => document.querySelector(selector);

const catalog = new Map(); // node id → catalog entry
const nodes = new Map(); // baklava node id → our node state
const ports = new Map(); // baklava interface id → {nodeId, name, kind, output}
const counters = new Map(); // node type → last number used in a step id
let viewModel;
let running = null; // {jobId, abort}

// -- small DOM helpers -----------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const out = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") out.className = value;
    else if (key === "text") out.textContent = value;
    else if (key.startsWith("on")) out.addEventListener(key.slice(2), value);
    else out.setAttribute(key, value === true ? "" : value);
  }
  out.append(...children.filter((c) => c !== null && c !== undefined));
  return out;
}

function say(message, isError = false) {
  const status = $("#status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

function describe(error) {
  const parts = [error.field ? `${error.code} (${error.field})` : error.code, error.message];
  if (error.solution) parts.push(error.solution);
  return parts.filter(Boolean).join(" — ");
}

/**
 * Keep a pointer or wheel gesture inside a control from dragging or zooming the canvas,
 * and Tab from baklava's editor, which cancels every Tab (keyboard users must move on).
 */
function isolate(element) {
  for (const type of ["pointerdown", "wheel", "dblclick"]) {
    element.addEventListener(type, (event) => event.stopPropagation());
  }
  element.addEventListener("keydown", (event) => {
    if (event.key === "Tab") event.stopPropagation();
  });
  return element;
}

// -- the component that puts a field's control into baklava's interface row -----------
const FieldSlot = {
  __v_skip: true, // markRaw: a component must not be made reactive
  props: ["modelValue", "node", "intf"],
  emits: ["update:modelValue", "openSidebar"],
  render() {
    return null;
  },
  mounted() {
    const port = ports.get(this.intf.id);
    const state = port && nodes.get(port.nodeId);
    if (!state) return;
    this.ctrl = state.controls[port.name];
    // Before the placeholder, never after it: Vue takes the placeholder's next sibling
    // as the anchor when it swaps the row (a wire connected), and ours is removed then.
    this.$el.parentNode.insertBefore(this.ctrl, this.$el);
  },
  beforeUnmount() {
    if (this.ctrl) this.ctrl.remove();
  },
};

// -- nodes -----------------------------------------------------------------------------
function nodeType(entry) {
  const fields = fieldsOf(entry);
  const outputs = (entry.image_fields || {}).outputs || {};
  const outProps = (entry.output_schema || {}).properties || {};
  return Core.defineNode({
    type: entry.id,
    title: entry.title,
    inputs: Object.fromEntries(
      fields.map((f) => [
        f.name,
        () => new Core.NodeInterface(f.title, null).setPort(Boolean(f.image)).setComponent(FieldSlot),
      ]),
    ),
    outputs: Object.fromEntries(
      Object.keys(outputs).map((name) => [
        name,
        () => new Core.NodeInterface((outProps[name] || {}).title || name, null),
      ]),
    ),
  });
}

const types = new Map();

function nextStepId(type) {
  const n = (counters.get(type) || 0) + 1;
  counters.set(type, n);
  return `${type}_${n}`;
}

/** "Title", "Title 2", … for our step ids; "Title (stepId)" for a loaded flow's own ids. */
function labelOf(entry, stepId) {
  if (!stepId.startsWith(`${entry.id}_`)) return `${entry.title} (${stepId})`;
  const n = Number(stepId.slice(entry.id.length + 1));
  if (!Number.isInteger(n) || n < 1) return `${entry.title} (${stepId})`;
  return n > 1 ? `${entry.title} ${n}` : entry.title;
}

function resolveType(stepType) {
  const snake = stepType.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toLowerCase();
  return [stepType, snake, stepType.replace(/-/g, "_")].find((t) => catalog.has(t));
}

/** Add a node of ``typeId`` to the canvas; returns its state. */
function addNode(typeId, { stepId, values = {}, exposed = new Set(), position } = {}) {
  const entry = catalog.get(typeId);
  if (!types.has(typeId)) types.set(typeId, nodeType(entry));
  const node = new (types.get(typeId))();
  if (stepId && stepId.startsWith(`${typeId}_`)) {
    const n = Number(stepId.slice(typeId.length + 1));
    if (Number.isInteger(n)) counters.set(typeId, Math.max(counters.get(typeId) || 0, n));
  }
  const taken = new Set([...nodes.values()].map((s) => s.stepId));
  while (!stepId || taken.has(stepId)) stepId = nextStepId(typeId);
  const label = labelOf(entry, stepId);
  const fields = fieldsOf(entry);
  const state = {
    id: node.id,
    node,
    entry,
    type: typeId,
    stepId,
    label,
    fields,
    values: {},
    exposed: new Set(exposed),
    controls: {},
    imageOutputs: Object.keys((entry.image_fields || {}).outputs || {}),
  };
  for (const field of fields) {
    state.values[field.name] = field.name in values ? values[field.name] : initialValue(field);
    state.controls[field.name] = fieldControl(state, field);
  }
  const images = { inputs: {}, outputs: {}, ...(entry.image_fields || {}) };
  for (const [name, intf] of Object.entries(node.inputs)) {
    ports.set(intf.id, { nodeId: node.id, name, kind: images.inputs[name], output: false });
  }
  for (const [name, intf] of Object.entries(node.outputs)) {
    ports.set(intf.id, { nodeId: node.id, name, kind: images.outputs[name], output: true });
  }
  state.status = statusPanel(state);
  nodes.set(node.id, state);
  node.title = label;
  viewModel.displayedGraph.addNode(node);
  const index = nodes.size - 1;
  const at = position || { x: 30 + 350 * (index % 3), y: 30 + 40 * Math.floor(index / 3) };
  node.position.x = at.x;
  node.position.y = at.y;
  changed();
  return state;
}

function fieldControl(state, field) {
  const wrap = control(field, state.values[field.name], (value) => {
    state.values[field.name] = value;
    clearFieldError(wrap);
    changed();
  });
  isolate(wrap);
  if (field.image) {
    const picker = el("input", {
      type: "file",
      accept: "image/*",
      class: "upload-input",
      "aria-label": `Upload ${field.title}`,
      onchange: (event) => event.target.files[0] && uploadInto(state, field, wrap, event.target.files[0]),
    });
    const preview = el("img", { class: "upload-preview", alt: `${field.title} of ${state.label}`, hidden: true });
    const wire = el("select", {
      class: "wire-select",
      "aria-label": `Wire ${field.title} from`,
      onfocus: () => refreshWires(),
      onchange: () => wireFrom(state, field, wire),
    });
    wrap.wire = wire;
    wrap.append(
      el("div", { class: "upload" }, el("span", { text: "or drop an image, or " }), picker),
      wire,
      preview,
    );
    wrap.preview = preview;
    wrap.addEventListener("dragover", (event) => {
      event.preventDefault();
      wrap.classList.add("drop");
    });
    wrap.addEventListener("dragleave", () => wrap.classList.remove("drop"));
    wrap.addEventListener("drop", (event) => {
      event.preventDefault();
      wrap.classList.remove("drop");
      const file = event.dataTransfer.files[0];
      if (file) uploadInto(state, field, wrap, file);
    });
  }
  if (!field.image) {
    const id = `${wrap.input.id}-expose`;
    const box = el("input", {
      type: "checkbox",
      id,
      class: "expose",
      "aria-label": `Expose ${field.title} as a flow input`,
      onchange: (event) => {
        if (event.target.checked) state.exposed.add(field.name);
        else state.exposed.delete(field.name);
        changed();
      },
    });
    box.checked = state.exposed.has(field.name);
    wrap.append(el("span", { class: "expose-wrap" }, box, el("label", { for: id, text: "flow input" })));
  }
  return wrap;
}

/** The wire-from selects (wiring by keyboard): every other node's image outputs. */
function refreshWires() {
  for (const state of nodes.values()) {
    for (const field of state.fields) {
      const select = field.image && state.controls[field.name].wire;
      if (!select) continue;
      const options = [new Option("wire from…", "")];
      for (const other of nodes.values()) {
        if (other === state) continue;
        for (const name of other.imageOutputs) {
          const out = other.node.outputs[name];
          options.push(new Option(`${other.label} · ${out.name}`, `${other.id}|${name}`));
        }
      }
      select.replaceChildren(...options);
      select.hidden = options.length === 1;
    }
  }
}

/**
 * Connect an output to an input through the graph's reactive nodes (the graph holds Vue
 * proxies; a wire added on the raw objects would not re-render the rows).
 */
function wire(source, output, target, input) {
  const graph = viewModel.displayedGraph;
  const from = graph.nodes.find((n) => n.id === source.id);
  const to = graph.nodes.find((n) => n.id === target.id);
  if (from && to && from.outputs[output] && to.inputs[input]) {
    graph.addConnection(from.outputs[output], to.inputs[input]);
  }
}

function wireFrom(state, field, select) {
  const [id, name] = select.value.split("|");
  const source = nodes.get(id);
  if (!source) return;
  wire(source, name, state, field.name);
  say(`Wired ${source.label} into ${field.title} of ${state.label}.`);
  // The wired field's control leaves the row: keep the focus in the node.
  const next = state.fields.find((f) => f !== field && !f.image);
  if (next) setTimeout(() => state.controls[next.name].input.focus(), 0);
}

async function uploadInto(state, field, wrap, file) {
  say(`Uploading ${file.name || "image"}…`);
  try {
    const done = await upload(file);
    const value = field.image === "list" ? [...(state.values[field.name] || []), done.ref] : done.ref;
    state.values[field.name] = value;
    wrap.setValue(value);
    wrap.preview.src = await imageUrl(done.url);
    wrap.preview.hidden = false;
    clearFieldError(wrap);
    changed();
    say(`Uploaded ${done.width}×${done.height} ${done.format} to ${field.title} of ${state.label}`);
  } catch (error) {
    showFieldError(wrap, error instanceof ApiError ? error.error : { code: "UPLOAD_FAILED", message: String(error) });
    say(`Upload failed: ${error.message}`, true);
  }
}

function statusPanel(state) {
  const bar = el("div", { class: "bar" });
  const progress = el(
    "div",
    {
      role: "progressbar",
      "aria-label": `Progress of ${state.label}`,
      "aria-valuemin": "0",
      "aria-valuemax": "1",
      "aria-valuenow": "0",
      class: "progress",
    },
    bar,
  );
  const stepText = el("span", { class: "step-text", text: "not run" });
  const notices = el("ul", { class: "notices", "aria-label": `Notices of ${state.label}` });
  const error = el("p", { class: "node-error", role: "alert", hidden: true });
  const thumbs = el("div", { class: "thumbs" });
  // One "Remove wire into <field>" button per wired input: a wire is removed by
  // keyboard (or click) here, since a wired field's own control leaves its row.
  const wires = el("div", { class: "unwire" });
  const remove = el("button", {
    type: "button",
    class: "delete",
    text: "Delete",
    "aria-label": `Delete ${state.label}`,
    onclick: () => viewModel.displayedGraph.removeNode(state.node),
  });
  const panel = isolate(el("div", { class: "node-status" }, el("div", { class: "progress-row" }, progress, stepText), error, notices, thumbs, wires, remove));
  Object.assign(panel, { bar, progress, stepText, notices, error, thumbs, wires });
  return panel;
}

/** baklava's renderNode hook: name the node's element and put its status panel in it. */
function decorate({ node, el: element }) {
  const state = nodes.get(node.id);
  if (state && element) {
    element.setAttribute("role", "group");
    element.setAttribute("aria-label", state.label);
    element.dataset.label = state.label;
    element.dataset.step = state.stepId;
    if (state.status.parentNode !== element) element.append(state.status);
  }
  return { node, el: element };
}

// -- the graph as data -------------------------------------------------------------------
function edges() {
  return viewModel.displayedGraph.connections
    .map((c) => [ports.get(c.from.id), ports.get(c.to.id)])
    .filter(([from, to]) => from && to && nodes.has(from.nodeId) && nodes.has(to.nodeId))
    .map(([from, to]) => ({
      from: nodes.get(from.nodeId).stepId,
      fromField: from.name,
      fromKind: from.kind,
      to: nodes.get(to.nodeId).stepId,
      toField: to.name,
      toKind: to.kind,
    }));
}

function liveNodes() {
  const ids = new Set(viewModel.displayedGraph.nodes.map((n) => n.id));
  for (const id of [...nodes.keys()]) if (!ids.has(id)) nodes.delete(id);
  return viewModel.displayedGraph.nodes.map((n) => nodes.get(n.id)).filter(Boolean).map((s) => ({ ...s, position: s.node.position }));
}

function currentFlow() {
  return toFlow(liveNodes(), edges());
}

let saveTimer = null;
/** The remove-wire buttons of every node: one per connection into it. */
function refreshUnwire() {
  const graph = viewModel.displayedGraph;
  for (const state of nodes.values()) {
    const buttons = [];
    for (const connection of graph.connections) {
      const into = ports.get(connection.to.id);
      const from = ports.get(connection.from.id);
      if (!into || into.nodeId !== state.id) continue;
      const field = state.fields.find((f) => f.name === into.name);
      const source = from && nodes.get(from.nodeId);
      const title = field ? field.title : into.name;
      buttons.push(
        el("button", {
          type: "button",
          class: "unwire-button",
          text: `Remove wire into ${title}`,
          "aria-label": `Remove wire into ${title} of ${state.label}`,
          onclick: () => {
            graph.removeConnection(connection);
            say(`Removed the wire${source ? ` from ${source.label}` : ""} into ${title} of ${state.label}.`);
            // The field's own control is back in its row: put the focus on it.
            setTimeout(() => {
              const control = state.controls[into.name];
              const target = control && (control.wire && !control.wire.hidden ? control.wire : control.input);
              if (target) target.focus();
            }, 0);
          },
        }),
      );
    }
    state.status.wires.replaceChildren(...buttons);
  }
}

function changed() {
  refreshWires();
  refreshUnwire();
  clearTimeout(saveTimer);
  saveTimer = setTimeout(() => {
    try {
      localStorage.setItem(STORE_KEY, JSON.stringify(currentFlow()));
    } catch {
      // a graph with a cycle is not saved until it has none
    }
  }, 200);
}

function clearGraph() {
  for (const node of [...viewModel.displayedGraph.nodes]) viewModel.displayedGraph.removeNode(node);
  nodes.clear();
  counters.clear();
}

function loadFlow(flow) {
  const parsed = fromFlow(flow);
  const unknown = parsed.nodes.filter((n) => !resolveType(n.type)).map((n) => n.type);
  if (unknown.length) throw new Error(`no node for step type ${unknown.join(", ")}`);
  clearGraph();
  const byStep = new Map();
  for (const n of parsed.nodes) {
    byStep.set(n.stepId, addNode(resolveType(n.type), n));
  }
  for (const e of parsed.edges) {
    const from = byStep.get(e.from);
    const to = byStep.get(e.to);
    if (from && to) wire(from, e.fromField, to, e.toField);
  }
  for (const state of byStep.values()) {
    for (const field of state.fields) state.controls[field.name].setValue(state.values[field.name]);
  }
  changed();
}

// -- running -------------------------------------------------------------------------------
function clearFieldError(wrap) {
  wrap.querySelector(".field-error")?.remove();
  wrap.input.removeAttribute("aria-invalid");
}

function showFieldError(wrap, error) {
  clearFieldError(wrap);
  const p = el("p", { class: "field-error", role: "alert", id: `${wrap.input.id}-error`, text: describe(error) });
  wrap.insertBefore(p, wrap.input.nextSibling);
  wrap.input.setAttribute("aria-invalid", "true");
  const described = wrap.input.getAttribute("aria-describedby") || "";
  if (!described.includes(p.id)) wrap.input.setAttribute("aria-describedby", `${p.id} ${described}`.trim());
}

function byStep(stepId) {
  return [...nodes.values()].find((s) => s.stepId === stepId);
}

/** Put an error next to the field it names (steps.<step>.parameters.<field>…), else on
 * its node, else in the status line. */
function showError(error) {
  const match = /^steps\.([^.]+)(?:\.parameters\.([^.[\]]+))?/.exec(error.field || "");
  const state = byStep((match && match[1]) || (error.details || {}).step);
  const wrap = state && match && match[2] && state.controls[match[2]];
  if (wrap && wrap.isConnected) showFieldError(wrap, error);
  else if (state) {
    state.status.error.textContent = describe(error);
    state.status.error.hidden = false;
  }
  say(`Failed: ${describe(error)}${error.field ? ` (field ${error.field})` : ""}`, true);
}

function setProgress(state, step, total) {
  const p = state.status.progress;
  p.setAttribute("aria-valuemax", String(total));
  p.setAttribute("aria-valuenow", String(step));
  p.setAttribute("aria-valuetext", `step ${step} of ${total}`);
  state.status.bar.style.width = `${total ? (100 * step) / total : 0}%`;
  state.status.stepText.textContent = `step ${step}/${total}`;
}

function resetStatus(state) {
  setProgress(state, 0, 1);
  state.status.stepText.textContent = "queued";
  state.status.notices.replaceChildren();
  state.status.thumbs.replaceChildren();
  state.status.error.hidden = true;
  for (const wrap of Object.values(state.controls)) clearFieldError(wrap);
}

async function addThumbnail(state, index, url) {
  const src = await imageUrl(url);
  const alt = `${state.label} image ${index + 1}`;
  const img = el("img", { src, alt, class: "thumb" });
  const open = el("button", { type: "button", class: "thumb-button", title: "Show full size", onclick: () => showFull(src, alt) }, img);
  state.status.thumbs.append(open);
}

function showFull(src, alt) {
  const dialog = $("#viewer");
  const img = dialog.querySelector("img");
  img.src = src;
  img.alt = `${alt}, full size`;
  dialog.showModal();
}

function noticeText(notice) {
  const given = (v) => v !== undefined && v !== null;
  let change = "";
  if (given(notice.requested) && given(notice.applied)) change = ` ${notice.requested} → ${notice.applied}`;
  else if (given(notice.requested)) change = ` ${notice.requested}`;
  const why = notice.reason || notice.message || "";
  return `${notice.code}${change}${why ? `, ${why}` : ""}`;
}

async function run() {
  if (running) return;
  let flow;
  try {
    flow = currentFlow();
  } catch (error) {
    return say(error.message, true);
  }
  if (!flow.steps.length) return say("Add a node first: pick one in the palette.", true);
  localStorage.setItem(STORE_KEY, JSON.stringify(flow));
  const states = liveNodes();
  for (const s of states) resetStatus(nodes.get(s.id));
  $("#run").disabled = true;
  $("#cancel").disabled = false;
  say("Submitting…");
  const abort = new AbortController();
  try {
    const job = await call("/flows/run", { method: "POST", json: { flow, inputs: defaultInputs(flow) } });
    running = { jobId: job.id, abort };
    say(`Running job ${job.id}`);
    let current = null;
    let completed = false;
    const complete = (data) => {
      if (completed) return;
      completed = true;
      finish(job.id, data, flow);
    };
    // Should the event stream stall or drop, the job's own status still ends the run.
    const ended = async () => {
      const now = await call(`/jobs/${job.id}`);
      if (TERMINAL.has(now.status)) complete({ status: now.status, error: now.error });
      return completed;
    };
    const watchdog = setInterval(() => {
      if (!completed) ended().then((done) => done && abort.abort()).catch(() => {});
    }, 5000);
    try {
      await follow(
        job.id,
        (event) => {
          // One event model (docs/server.md "Events"): every field is on the event itself.
          const stepId = event.step_id;
          const state = stepId ? byStep(stepId) : null;
          if (state && state !== current) {
            if (current && Number(current.status.progress.getAttribute("aria-valuenow")) === 0) setProgress(current, 1, 1);
            current = state;
          }
          if (event.type === "node.progress" && state) setProgress(state, event.step, event.total);
          else if (event.type === "model.loading" && state) state.status.stepText.textContent = "loading model";
          else if (event.type === "image.stored" && state) {
            addThumbnail(state, event.index, event.url).catch((e) => say(e.message, true));
          } else if (event.type === "job.completed") complete(event);
        },
        abort.signal,
      );
    } catch (error) {
      if (!completed && error.name !== "AbortError") say(`Event stream lost (${error.message}); waiting for the job…`, true);
    } finally {
      clearInterval(watchdog);
    }
    while (!completed && !(await ended())) await new Promise((r) => setTimeout(r, 1000));
  } catch (error) {
    if (error instanceof ApiError) showError(error.error);
    else if (error.name !== "AbortError") say(String(error.message || error), true);
  } finally {
    running = null;
    $("#run").disabled = false;
    $("#cancel").disabled = true;
  }
}

async function finish(jobId, done, flow) {
  if (done.status === "succeeded") {
    for (const step of flow.steps) {
      const state = byStep(step.id);
      if (!state) continue;
      const p = state.status.progress;
      const max = Number(p.getAttribute("aria-valuemax"));
      setProgress(state, max, max);
      state.status.stepText.textContent = `done (${p.getAttribute("aria-valuetext")})`;
    }
    say("Done.");
  } else if (done.status === "cancelled" || (done.error || {}).code === "CANCELLED") {
    say("Cancelled.");
    for (const s of nodes.values()) if (s.status.stepText.textContent !== "not run") s.status.stepText.textContent = "cancelled";
  } else if (done.error) {
    showError(done.error);
  }
  try {
    const job = await call(`/jobs/${jobId}`);
    for (const step of (job.outputs || {}).steps || []) {
      const state = byStep(step.id);
      if (!state) continue;
      for (const notice of step.notices || []) {
        state.status.notices.append(el("li", { class: "notice", text: noticeText(notice) }));
      }
    }
  } catch (error) {
    say(`Could not read the job: ${error.message}`, true);
  }
}

async function cancel() {
  if (!running) return;
  say("Cancelling…");
  try {
    await call(`/jobs/${running.jobId}/cancel`, { method: "POST" });
  } catch (error) {
    say(`Cancel failed: ${error.message}`, true);
  }
}

// -- save and load -----------------------------------------------------------------------
function saveFile() {
  let flow;
  try {
    flow = currentFlow();
  } catch (error) {
    return say(error.message, true);
  }
  localStorage.setItem(STORE_KEY, JSON.stringify(flow));
  const url = URL.createObjectURL(new Blob([JSON.stringify(flow, null, 2)], { type: "application/json" }));
  const a = el("a", { href: url, download: "flow.json" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  say("Saved flow.json (also kept in this browser).");
}

/** Resolved once the catalog is in: a flow chosen before that waits for it (and then
 * replaces a graph restored from localStorage, since the user picked it). */
let catalogReady;
const catalogLoaded = new Promise((resolve) => {
  catalogReady = resolve;
});

async function loadFile(file) {
  try {
    const text = await file.text();
    await catalogLoaded;
    loadFlow(JSON.parse(text));
    say(`Loaded ${file.name}.`);
  } catch (error) {
    say(`Cannot load ${file.name}: ${error.message}`, true);
  }
}

// -- palette and start-up --------------------------------------------------------------------
function palette(entries) {
  const byCategory = new Map();
  for (const entry of entries) {
    if (!byCategory.has(entry.category)) byCategory.set(entry.category, []);
    byCategory.get(entry.category).push(entry);
  }
  const nav = $("#palette");
  nav.replaceChildren(el("h2", { text: "Nodes" }));
  for (const [category, list] of [...byCategory].sort(([a], [b]) => a.localeCompare(b))) {
    const items = list.map((entry) => {
      const available = (entry.availability || {}).available !== false;
      const reason = available ? entry.description : `Unavailable: ${(entry.availability || {}).reason || "unknown reason"}`;
      const descId = `desc-${entry.id}`;
      const button = el("button", {
        type: "button",
        class: available ? "add-node" : "add-node unavailable",
        "aria-disabled": available ? null : "true",
        "aria-describedby": descId,
        "data-node": entry.id,
        text: entry.title,
        onclick: () => {
          if (!available) return say(`${entry.title}: ${reason}`, true);
          const state = addNode(entry.id);
          focusFirst(state);
          say(`Added ${state.label}.`);
        },
      });
      return el("li", {}, button, el("small", { id: descId, class: "reason", text: reason, title: reason }));
    });
    nav.append(el("section", { "aria-label": category }, el("h3", { text: category }), el("ul", {}, ...items)));
  }
}

function focusFirst(state, tries = 20) {
  const first = state.fields.find((f) => !f.image) || state.fields[0];
  const input = first && state.controls[first.name].input;
  if (input && input.isConnected) input.focus();
  else if (tries > 0) requestAnimationFrame(() => focusFirst(state, tries - 1));
}

async function askToken() {
  const dialog = $("#token-dialog");
  const input = $("#token-input");
  input.value = "";
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  setToken(input.value.trim());
}

async function loadCatalog() {
  const config = await (await fetch(new URL("web/config.json", document.baseURI))).json();
  if (config.token_required && !token()) await askToken();
  for (;;) {
    try {
      return (await call("/nodes")).nodes;
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) throw error;
      if (token()) say("That token was refused; type it again.", true);
      await askToken();
    }
  }
}

async function start() {
  viewModel = createBaklava($("#canvas"));
  Object.assign(viewModel.settings.palette, { enabled: false });
  Object.assign(viewModel.settings.sidebar, { enabled: false });
  Object.assign(viewModel.settings.toolbar, { enabled: false });
  Object.assign(viewModel.settings.nodes, { defaultWidth: 320, maxWidth: 420, minWidth: 240 });
  const token_ = Symbol("imagenodes");
  viewModel.hooks.renderNode.subscribe(token_, decorate);
  viewModel.displayedGraph.events.addConnection.subscribe(token_, changed);
  viewModel.displayedGraph.events.removeConnection.subscribe(token_, changed);
  viewModel.displayedGraph.events.removeNode.subscribe(token_, changed);

  $("#run").addEventListener("click", run);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      run();
    }
  });
  $("#cancel").addEventListener("click", cancel);
  $("#save").addEventListener("click", saveFile);
  $("#load").addEventListener("change", (event) => event.target.files[0] && loadFile(event.target.files[0]));
  $("#clear").addEventListener("click", () => {
    clearGraph();
    changed();
    say("Canvas cleared.");
  });
  $("#viewer-close").addEventListener("click", () => $("#viewer").close());

  say("Loading the node catalog…");
  const entries = await loadCatalog();
  for (const entry of entries) catalog.set(entry.id, entry);
  palette(entries);
  catalogReady();
  const saved = localStorage.getItem(STORE_KEY);
  if (saved) {
    try {
      const flow = JSON.parse(saved);
      if ((flow.steps || []).length) {
        loadFlow(flow);
        return say("Restored the graph kept in this browser.");
      }
    } catch (error) {
      return say(`The graph kept in this browser could not be restored: ${error.message}`, true);
    }
  }
  say(`${entries.length} nodes. Pick one in the palette to add it.`);
}

start().catch((error) => say(`The builder could not start: ${error.message}`, true));
