// The input form, built from the served OpenAPI schema: every input in `x-order`, with its description,
// default, bounds and choices, so the page follows predict.py without a second copy of it.
import { recorder } from "./recorder.js";

const AUDIO_HINT = "the server accepts any audio file ffmpeg decodes (wav, mp3, flac, ogg, m4a, ...)";

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

// Inline `code` in the descriptions, as Replicate renders them.
function describe(text) {
  const node = element("p", { class: "description" });
  text.split("`").forEach((part, i) => node.append(i % 2 ? element("code", {}, part) : part));
  return node;
}

// A property with its `allOf: [{$ref}]` enum resolved: {type, enum, default, minimum, ...}.
function resolve(property, schemas) {
  const ref = property.allOf?.[0]?.$ref;
  return ref ? { ...schemas[ref.split("/").pop()], ...property } : property;
}

function hint(property) {
  const parts = [];
  if (property.default !== undefined && property.default !== null) parts.push(`default ${JSON.stringify(property.default)}`);
  if (property.default === null) parts.push("empty: none");
  if (property.minimum !== undefined) parts.push(`≥ ${property.minimum}`);
  if (property.maximum !== undefined) parts.push(`≤ ${property.maximum}`);
  if (property.enum) parts.push(`one of ${property.enum.join(", ")}`);
  return parts.join(" · ");
}

function readAsDataUri(blob) {
  return new Promise((done, failed) => {
    const reader = new FileReader();
    reader.onload = () => done(reader.result);
    reader.onerror = () => failed(reader.error);
    reader.readAsDataURL(blob);
  });
}

// A file input: upload (or record) -> {dataUri, name}, previewed in a small player.
function fileControl(name, field) {
  const box = element("div", { class: "file-row" });
  const input = element("input", { type: "file", id: `input-${name}`, name, accept: "audio/*,video/*" });
  const record = element("button", { type: "button", id: `record-${name}` }, "Record");
  const clear = element("button", { type: "button", id: `clear-${name}` }, "Clear");
  const preview = element("audio", { controls: "", hidden: "" });
  const chosen = element("span", { class: "muted", id: `chosen-${name}` }, "no file");
  box.append(input, record, clear, chosen, preview);
  field.file = null;
  field.setFile = (file) => {
    field.file = file;
    chosen.textContent = file ? file.name : "no file";
    preview.hidden = !file;
    if (file) preview.src = file.dataUri;
    else preview.removeAttribute("src");
    if (!file) input.value = "";
  };
  input.addEventListener("change", async () => {
    const blob = input.files[0];
    field.showError(null);
    if (!blob) return field.setFile(null);
    if (blob.type && !/^(audio|video)\//.test(blob.type)) {
      field.showError(`${name}: ${blob.name} is ${blob.type}, which does not look like audio; ${AUDIO_HINT}.`);
    }
    field.setFile({ name: blob.name, dataUri: await readAsDataUri(blob) });
  });
  clear.addEventListener("click", () => field.setFile(null));
  recorder(record, async (blob, problem) => {
    if (problem) return field.showError(`${name}: ${problem}`);
    field.setFile({ name: `recording.${blob.type.includes("ogg") ? "ogg" : "webm"}`, dataUri: await readAsDataUri(blob) });
  });
  return box;
}

function control(name, property, field) {
  if (property.enum) {
    const select = element("select", { id: `input-${name}`, name });
    for (const choice of property.enum) select.append(element("option", { value: choice }, choice));
    return select;
  }
  if (property.type === "boolean") return element("input", { type: "checkbox", id: `input-${name}`, name });
  if (property.type === "integer" || property.type === "number") {
    const attributes = { type: "number", id: `input-${name}`, name, step: property.type === "integer" ? "1" : "any" };
    if (property.minimum !== undefined) attributes.min = property.minimum;
    if (property.maximum !== undefined) attributes.max = property.maximum;
    if (property.default === null) attributes.placeholder = "empty: none";
    return element("input", attributes);
  }
  if (property.format === "uri") return fileControl(name, field);
  return element("textarea", { id: `input-${name}`, name, rows: "3" });
}

export class InputForm {
  constructor(openapi, container) {
    const schemas = openapi.components.schemas;
    const properties = schemas.Input.properties;
    this.fields = Object.keys(properties)
      .sort((a, b) => (properties[a]["x-order"] ?? 0) - (properties[b]["x-order"] ?? 0))
      .map((name) => this.field(name, resolve(properties[name], schemas)));
    container.replaceChildren(...this.fields.map((field) => field.box));
    this.reset();
  }

  field(name, property) {
    const field = { name, property, box: element("div", { class: "field", id: `field-${name}` }) };
    const error = element("p", { class: "error", id: `error-${name}`, hidden: "" });
    field.showError = (message) => {
      error.textContent = message || "";
      error.hidden = !message;
      field.box.classList.toggle("invalid", Boolean(message));
    };
    field.control = control(name, property, field);
    const label = element("label", { for: `input-${name}` });
    const title = property.title && property.title !== name ? ` · ${property.title}` : "";
    label.append(element("span", { class: "name" }, name), title);
    field.box.append(label, describe(property.description || ""), field.control, element("div", { class: "hint" }, hint(property)), error);
    return field;
  }

  // The input to send: what differs from the schema's defaults (the server fills in the rest), and the
  // names of the files given, for the code shown with the take.
  values() {
    const input = {};
    const fileNames = {};
    for (const { name, property, control, file } of this.fields) {
      if (property.format === "uri") {
        if (file) [input[name], fileNames[name]] = [file.dataUri, file.name];
      } else if (property.type === "boolean") {
        if (control.checked !== Boolean(property.default)) input[name] = control.checked;
      } else if (control.value !== "") {
        const value = property.type === "integer" || property.type === "number" ? Number(control.value) : control.value;
        if (value !== property.default) input[name] = value;
      }
    }
    return { input, fileNames };
  }

  // Fill the form with a take's input (defaults for what it left out), its files included.
  fill(input, files = {}) {
    for (const field of this.fields) {
      const value = field.name in input ? input[field.name] : field.property.default;
      if (field.property.format === "uri") field.setFile(files[field.name] || null);
      else if (field.property.type === "boolean") field.control.checked = Boolean(value);
      else field.control.value = value === null || value === undefined ? "" : String(value);
    }
  }

  reset() {
    this.fill({});
    this.showErrors({});
  }

  // Each message beside the input it names; the ones naming no input of the form are returned.
  showErrors(errors) {
    const others = { ...errors };
    for (const field of this.fields) {
      field.showError(errors[field.name]);
      delete others[field.name];
    }
    return others;
  }
}
