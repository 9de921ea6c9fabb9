// The page's wiring: the server's health, the form from its schema, takes started, followed and replayed.
import { call, PlaygroundDown, post, sleep } from "./api.js";
import { InputForm } from "./form.js";
import { History } from "./history.js";
import { TakeView } from "./take_view.js";

const $ = (id) => document.getElementById(id);
const TERMINAL = ["succeeded", "failed", "canceled"];
const view = new TakeView();
const state = { form: null, current: null };
const history = new History($("takes"), { show: (entry) => showEntry(entry), reuse: (entry) => reuse(entry) });

function connection(message) {
  $("connection").textContent = message || "";
  $("connection").hidden = !message;
}

function banner(health) {
  const box = $("server-status");
  box.textContent = health.message;
  box.dataset.status = health.status;
  box.className = `banner ${{ READY: "good", BUSY: "wait", STARTING: "wait" }[health.status] || "bad"}`;
  $("generate").disabled = !health.ready || !state.form;
}

async function buildForm() {
  try {
    state.form = new InputForm(await call("/api/schema"), $("fields"));
  } catch (error) {
    $("fields").textContent = `No form yet: ${error.message}`;
  }
}

async function watchHealth() {
  while (true) {
    try {
      const health = await call("/api/health");
      connection(null);
      if (!state.form && health.status !== "UNREACHABLE" && health.status !== "EXITED") await buildForm();
      banner(health);
    } catch (error) {
      connection(error instanceof PlaygroundDown ? `${error.message} Retrying…` : error.message);
    }
    await sleep(2000);
  }
}

// Poll one take until it ends (250 ms: the server's own updates come about twice a second).
async function follow(entry) {
  while (true) {
    let take;
    try {
      take = await call(`/api/takes/${entry.id}`);
      connection(null);
    } catch (error) {
      if (!(error instanceof PlaygroundDown)) return state.current === entry.id && view.problem(error.message);
      connection(`${error.message} Retrying…`);
      await sleep(1000);
      continue;
    }
    history.update(take);
    if (state.current === entry.id) view.show(take, state.form);
    if (TERMINAL.includes(take.status) && (take.status !== "succeeded" || take.file_url)) return;
    await sleep(250);
  }
}

async function generate(input, fileNames) {
  state.form.showErrors({});
  let take;
  try {
    take = await post("/api/takes", { input, file_names: fileNames });
  } catch (error) {
    return view.problem(error.message);
  }
  const entry = history.add(take, input, fileNames);
  state.current = take.id;
  view.show(take, state.form);
  await follow(entry);
}

function showEntry(entry) {
  state.current = entry.id;
  view.show(entry.take, null);
}

function reuse(entry) {
  state.form.fill(entry.input, entry.files);
}

function again(withSameSeed) {
  const entry = history.entries.get(state.current);
  if (!entry) return;
  const input = { ...entry.input };
  if (withSameSeed) input.seed = entry.take.seed;
  else delete input.seed; // the server draws a new one, and logs it
  state.form.fill(input, entry.files);
  generate(input, entry.fileNames);
}

async function setUp() {
  const config = await call("/api/config");
  $("server-url").textContent = config.server_url;
  if (!config.live_updates) {
    $("live-note").hidden = false;
    $("live-note").textContent =
      "Live logs and progress are off: the server is not on this machine, so its updates cannot reach this " +
      "playground. Start the playground with PLAYGROUND_WEBHOOK_URL set to an address of it the server can reach.";
  }
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const { input, fileNames } = state.form.values();
  generate(input, fileNames);
});
$("reset").addEventListener("click", () => state.form?.reset());
$("cancel").addEventListener("click", async () => {
  try {
    const take = await post(`/api/takes/${state.current}/cancel`);
    if (take.cancel_problem) view.problem(take.cancel_problem);
  } catch (error) {
    view.problem(error.message);
  }
});
$("same-again").addEventListener("click", () => again(true));
$("vary").addEventListener("click", () => again(false));
for (const button of document.querySelectorAll("button.copy")) {
  button.addEventListener("click", () => navigator.clipboard?.writeText($(button.dataset.copy).textContent));
}

setUp().catch((error) => connection(error.message));
watchHealth();
