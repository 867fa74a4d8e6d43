// Form fields from a node's input JSON Schema alone: no per-node code, so a node of a
// third-party pack gets its form the same way as a built-in one.

/** Resolve a local "$ref" ("#/$defs/X") against the root schema. */
function deref(schema, root) {
  let out = schema || {};
  for (let i = 0; i < 8 && out.$ref && out.$ref.startsWith("#/"); i++) {
    out = out.$ref
      .slice(2)
      .split("/")
      .reduce((node, key) => (node ? node[key] : undefined), root) || {};
  }
  return out;
}

/**
 * One descriptor per property: {name, title, description, kind, nullable, required,
 * default, enum, min, max, step, image}. ``kind`` is text, textarea, number, integer,
 * select, checkbox, lines (a list of strings) or json (anything else, as JSON text).
 * ``image`` ("single" or "list") comes from the catalog's image_fields: those are sockets.
 */
export function fieldsOf(entry) {
  const root = entry.input_schema || {};
  const required = new Set(root.required || []);
  const images = (entry.image_fields || {}).inputs || {};
  return Object.entries(root.properties || {}).map(([name, raw]) => {
    let prop = deref(raw, root);
    let nullable = false;
    const variants = prop.anyOf || prop.oneOf;
    if (Array.isArray(variants)) {
      const rest = variants.map((v) => deref(v, root)).filter((v) => v.type !== "null");
      nullable = rest.length < variants.length;
      if (rest.length === 1) prop = { ...rest[0], ...withoutVariants(prop) };
    }
    const field = {
      name,
      title: raw.title || prop.title || name,
      description: raw.description || prop.description || "",
      nullable,
      required: required.has(name),
      default: "default" in raw ? raw.default : prop.default,
      hasDefault: "default" in raw || "default" in prop,
      image: images[name] || null,
      schema: prop,
    };
    if (Array.isArray(prop.enum)) {
      field.kind = "select";
      field.enum = prop.enum;
    } else if (prop.type === "boolean") {
      field.kind = "checkbox";
    } else if (prop.type === "integer" || prop.type === "number") {
      field.kind = prop.type;
      const step = prop.multipleOf || (prop.type === "integer" ? 1 : "any");
      field.step = step;
      const inc = prop.type === "integer" ? 1 : 0;
      if (prop.minimum !== undefined) field.min = prop.minimum;
      else if (prop.exclusiveMinimum !== undefined) field.min = prop.exclusiveMinimum + inc;
      if (prop.maximum !== undefined) field.max = prop.maximum;
      else if (prop.exclusiveMaximum !== undefined) field.max = prop.exclusiveMaximum - inc;
      // An exclusive bound of a float cannot be an HTML attribute: it is told as help.
      if (prop.type === "number" && prop.exclusiveMinimum !== undefined && prop.minimum === undefined) {
        field.exclusiveMin = prop.exclusiveMinimum;
      }
    } else if (prop.type === "string") {
      const long = /prompt/i.test(name) || /prompt/i.test(field.title) || (prop.maxLength || 0) > 200;
      field.kind = long ? "textarea" : "text";
    } else if (prop.type === "array" && deref(prop.items, root).type === "string") {
      field.kind = "lines";
    } else {
      field.kind = "json";
    }
    return field;
  });
}

/** A property's own keywords (title, default, …) without its anyOf/oneOf branches. */
function withoutVariants(prop) {
  const rest = { ...prop };
  delete rest.anyOf;
  delete rest.oneOf;
  return rest;
}

/** The initial value of a field: its default, else empty. */
export function initialValue(field) {
  if (field.hasDefault && field.default !== null) return field.default;
  if (field.kind === "checkbox") return false;
  if (field.kind === "lines") return [];
  if (field.kind === "text" || field.kind === "textarea") return field.nullable ? null : "";
  return null;
}

let counter = 0;

/**
 * The control of a field, labelled by its title and described by its description.
 * ``onChange(value)`` gets the typed value (null for an empty optional field).
 */
export function control(field, value, onChange) {
  const id = `f${++counter}`;
  const wrap = document.createElement("div");
  wrap.className = `field field-${field.kind}`;
  wrap.dataset.field = field.name;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = field.title;
  if (field.required) label.classList.add("required");
  let input;
  if (field.kind === "select") {
    input = document.createElement("select");
    if (field.nullable || !field.hasDefault) input.append(new Option("—", ""));
    for (const choice of field.enum) input.append(new Option(String(choice), String(choice)));
    input.value = value === null || value === undefined ? "" : String(value);
    input.addEventListener("change", () => {
      const picked = field.enum.find((c) => String(c) === input.value);
      onChange(picked === undefined ? null : picked);
    });
  } else if (field.kind === "checkbox") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(value);
    input.addEventListener("change", () => onChange(input.checked));
  } else if (field.kind === "integer" || field.kind === "number") {
    input = document.createElement("input");
    input.type = "number";
    input.step = String(field.step);
    if (field.min !== undefined) input.min = String(field.min);
    if (field.max !== undefined) input.max = String(field.max);
    input.value = value === null || value === undefined ? "" : String(value);
    if (field.nullable) input.placeholder = "empty";
    input.addEventListener("input", () => {
      const text = input.value.trim();
      if (text === "") return onChange(null);
      const n = Number(text);
      onChange(Number.isFinite(n) ? n : text);
    });
  } else if (field.kind === "textarea" || field.kind === "lines" || field.kind === "json") {
    input = document.createElement("textarea");
    input.rows = 2;
    if (field.kind === "lines") {
      input.value = (value || []).join("\n");
      input.placeholder = "one per line";
    } else if (field.kind === "json") {
      input.value = value === null || value === undefined ? "" : JSON.stringify(value);
      input.placeholder = "JSON";
    } else {
      input.value = value ?? "";
    }
    input.addEventListener("input", () => {
      if (field.kind === "lines") {
        onChange(input.value.split("\n").map((s) => s.trim()).filter(Boolean));
      } else if (field.kind === "json") {
        try {
          onChange(input.value.trim() ? JSON.parse(input.value) : null);
          input.setCustomValidity("");
        } catch {
          input.setCustomValidity("not valid JSON");
        }
      } else {
        onChange(input.value === "" && field.nullable ? null : input.value);
      }
    });
  } else {
    input = document.createElement("input");
    input.type = "text";
    input.value = value ?? "";
    input.addEventListener("input", () =>
      onChange(input.value === "" && field.nullable ? null : input.value),
    );
  }
  input.id = id;
  input.name = field.name;
  if (field.required) input.required = true;
  const help = [field.description];
  if (field.exclusiveMin !== undefined) help.push(`(more than ${field.exclusiveMin})`);
  if (field.nullable) help.push("(optional)");
  const text = help.filter(Boolean).join(" ");
  if (text) {
    const small = document.createElement("small");
    small.id = `${id}-help`;
    small.className = "help";
    small.textContent = text;
    small.title = text;
    input.setAttribute("aria-describedby", small.id);
    wrap.append(label, input, small);
  } else {
    wrap.append(label, input);
  }
  /** Set the control's value from outside (loading a flow, an upload). */
  wrap.setValue = (v) => {
    if (field.kind === "checkbox") input.checked = Boolean(v);
    else if (field.kind === "lines") input.value = (v || []).join("\n");
    else if (field.kind === "json") input.value = v === null || v === undefined ? "" : JSON.stringify(v);
    else input.value = v === null || v === undefined ? "" : String(v);
  };
  wrap.input = input;
  return wrap;
}
