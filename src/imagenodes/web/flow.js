// The canvas graph as a seed-003 flow document and back. A wire becomes a
// "$.results.<step>.<output>" reference in the input it feeds; an input marked as a flow
// input becomes "$.input.<name>" with its schema (current value as default) in the
// flow's "input". So the saved file runs unchanged with `imagenodes flow run` and
// POST /v1/flows/run. Canvas positions ride along in "ui.builder", which runners ignore.

const RESULT_REF = /^\$\.results\.([^.[\]\s]+)\.([^.[\]\s]+)(?:\.0|\[0\])?$/;
const INPUT_REF = /^\$\.input\.([^.[\]\s]+)$/;

/**
 * Steps in dependency order (a wire's source before its target); ties keep the order
 * the nodes were added in. ``nodes``: [{stepId}], ``edges``: [{from, to}] of step ids.
 */
export function dependencyOrder(nodes, edges) {
  const ids = nodes.map((n) => n.stepId);
  const incoming = new Map(ids.map((id) => [id, new Set()]));
  for (const e of edges) if (incoming.has(e.to) && incoming.has(e.from)) incoming.get(e.to).add(e.from);
  const out = [];
  const done = new Set();
  while (out.length < ids.length) {
    const next = ids.find((id) => !done.has(id) && [...incoming.get(id)].every((d) => done.has(d)));
    if (next === undefined) throw new Error("the graph has a cycle: a node cannot feed itself");
    done.add(next);
    out.push(next);
  }
  return out.map((id) => nodes.find((n) => n.stepId === id));
}

function reference(edge) {
  const base = `$.results.${edge.from}.${edge.fromField}`;
  if (edge.toKind === "list") return edge.fromKind === "list" ? base : [base];
  return edge.fromKind === "list" ? `${base}.0` : base;
}

/**
 * The flow document. ``nodes``: [{stepId, type, label, fields, values, exposed, position}],
 * ``edges``: [{from, fromField, fromKind, to, toField, toKind}].
 */
export function toFlow(nodes, edges, title = "Builder graph") {
  const ordered = dependencyOrder(nodes, edges);
  const input = { type: "object", properties: {}, required: [] };
  const imageSources = [];
  const steps = ordered.map((node) => {
    const parameters = {};
    for (const field of node.fields) {
      const wire = edges.find((e) => e.to === node.stepId && e.toField === field.name);
      const value = node.values[field.name];
      if (wire) {
        parameters[field.name] = reference(wire);
      } else if (node.exposed.has(field.name)) {
        const name = `${node.stepId}_${field.name}`;
        const schema = { ...field.schema, title: `${node.label}: ${field.title}` };
        if (field.description) schema.description = field.description;
        if (field.nullable) {
          delete schema.type;
          schema.anyOf = [{ ...field.schema, title: undefined }, { type: "null" }];
          delete schema.anyOf[0].title;
          delete schema.enum;
        }
        if (value !== null && value !== undefined) schema.default = value;
        else if (field.required) input.required.push(name);
        input.properties[name] = schema;
        parameters[field.name] = `$.input.${name}`;
      } else if (value !== null && value !== undefined && !(Array.isArray(value) && !value.length && !field.required)) {
        parameters[field.name] = value;
      }
    }
    if (node.imageOutputs.length) imageSources.push(node.stepId);
    return { id: node.stepId, type: node.type, parameters };
  });
  if (!input.required.length) delete input.required;
  const positions = Object.fromEntries(
    nodes.map((n) => [n.stepId, { x: Math.round(n.position.x), y: Math.round(n.position.y) }]),
  );
  return {
    title,
    description: "Built with the imagenodes builder page.",
    input,
    ui: {
      results: { widgets: imageSources.length ? [{ type: "Images", sources: imageSources }] : [] },
      builder: { positions },
    },
    steps,
  };
}

/** The flow's inputs as the runner would fill them: each property's default. */
export function defaultInputs(flow) {
  const out = {};
  for (const [name, prop] of Object.entries((flow.input || {}).properties || {})) {
    if (prop && "default" in prop) out[name] = prop.default;
  }
  return out;
}

/**
 * A flow document back into nodes and wires: {nodes: [{stepId, type, values, exposed,
 * position}], edges: [{from, fromField, to, toField}]}. Parameters that are neither
 * references nor flow inputs are plain values.
 */
export function fromFlow(flow) {
  if (!flow || !Array.isArray(flow.steps)) throw new Error("not a flow document: it has no steps list");
  const props = (flow.input || {}).properties || {};
  const positions = ((flow.ui || {}).builder || {}).positions || {};
  const edges = [];
  const nodes = flow.steps.map((step, index) => {
    const values = {};
    const exposed = new Set();
    for (const [name, raw] of Object.entries(step.parameters || {})) {
      const one = Array.isArray(raw) && raw.length === 1 && typeof raw[0] === "string" ? raw[0] : raw;
      const wire = typeof one === "string" ? RESULT_REF.exec(one) : null;
      const flowInput = typeof raw === "string" ? INPUT_REF.exec(raw) : null;
      if (wire) {
        edges.push({ from: wire[1], fromField: wire[2], to: step.id, toField: name });
      } else if (flowInput) {
        exposed.add(name);
        const prop = props[flowInput[1]] || {};
        values[name] = "default" in prop ? prop.default : null;
      } else {
        values[name] = raw;
      }
    }
    return {
      stepId: step.id,
      type: step.type,
      values,
      exposed,
      position: positions[step.id] || { x: 40 + 340 * index, y: 40 },
    };
  });
  return { nodes, edges };
}
