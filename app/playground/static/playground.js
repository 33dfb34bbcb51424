// The lamini-serve playground: plain ES module, no dependencies, talks only to its own server.
//
// Models come from GET /v1/models (+ /info for families and limits, /families for the model
// cards); answers stream from POST /v1/completions (fetch + ReadableStream, one request per
// chosen model, side by side); "Show model input" asks POST /prompt. Stop aborts the fetches:
// the server sees the disconnect and cancels the generation, freeing its slot.

const API_ROOT = new URL("../../", import.meta.url); // the server root, also behind a prefix
const KEY_STORAGE = "lamini-serve.api-key";

const $ = (id) => document.getElementById(id);

const state = {
  models: [], // ids, as /v1/models lists them
  info: new Map(), // id -> /info's model entry (family, engine, limits)
  cards: new Map(), // family name -> /families card
  panes: new Map(), // id -> Pane
  controllers: [], // AbortControllers of the requests running now
  cardOwner: null, // the model whose card filled the parameters
};

// --- talking to the server ------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status = null) {
    super(message);
    this.status = status;
  }
}

const LOADING_RETRY_MS = 2000;

function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE) ?? localStorage.getItem(KEY_STORAGE) ?? "";
}

function saveKey(key, remember) {
  sessionStorage.removeItem(KEY_STORAGE);
  localStorage.removeItem(KEY_STORAGE);
  if (key) (remember ? localStorage : sessionStorage).setItem(KEY_STORAGE, key);
}

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

function unreachable() {
  return new ApiError(
    `Cannot reach the server at ${API_ROOT.origin}: it may have stopped or restarted, ` +
      "or the network is down. Reload the page once it is back.",
  );
}

// The server's own words for a failed response, in either error shape (TGI's or OpenAI's).
async function describeFailure(response) {
  let detail = "";
  try {
    const body = await response.json();
    const error = body?.error;
    detail = typeof error === "string" ? error : (error?.message ?? JSON.stringify(body));
  } catch {
    detail = response.statusText;
  }
  if (response.status === 401) {
    return `The server needs a valid API key: type it at the top and press "Use key" (${detail}).`;
  }
  if (response.status === 429) {
    const wait = response.headers.get("Retry-After") ?? "a few";
    return `The server is busy (its queue is full): retry in ${wait} s. ${detail}`;
  }
  if (response.status === 502 || response.status === 503 || response.status === 504) {
    return `The server cannot answer right now (${response.status}): ${detail}`;
  }
  return `The server refused the request (${response.status}): ${detail}`;
}

async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(new URL(path, API_ROOT), { headers: requestHeaders(), ...options });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw unreachable();
  }
  if (!response.ok) throw new ApiError(await describeFailure(response), response.status);
  return response;
}

async function getJson(path) {
  return (await call(path)).json();
}

// --- notices -----------------------------------------------------------------------------------

function notify(message) {
  const notice = $("notice");
  notice.textContent = message ?? "";
  notice.hidden = !message;
}

// --- models and their cards --------------------------------------------------------------------

async function loadModels() {
  notify("");
  $("models-empty").textContent = "Loading the served models…";
  $("models-empty").hidden = false;
  try {
    const [models, info, families] = await Promise.all([
      getJson("v1/models"),
      getJson("info"),
      getJson("families"),
    ]);
    state.models = models.data.map((model) => model.id);
    state.info = new Map(info.models.map((model) => [model.model_id, model]));
    state.cards = new Map(families.map((family) => [family.name, family]));
    const count = state.models.length;
    $("server-line").textContent =
      `lamini-serve ${info.version} · ${count} model${count === 1 ? "" : "s"} served`;
    renderModelList();
  } catch (error) {
    $("models-empty").textContent = "No models yet.";
    notify(error.message);
    // 503: the server is up but still loading a model; ask again until it is ready.
    if (error.status === 503) setTimeout(loadModels, LOADING_RETRY_MS);
  }
}

function familyOf(model) {
  return state.info.get(model)?.model_family ?? null;
}

function cardOf(model) {
  return state.cards.get(familyOf(model)) ?? null;
}

function renderModelList() {
  const list = $("model-list");
  list.replaceChildren();
  $("models-empty").hidden = state.models.length > 0;
  state.models.forEach((model, index) => {
    const label = document.createElement("label");
    label.className = "model-option";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = model;
    box.checked = index === 0;
    box.dataset.testid = `model-option-${model}`;
    box.addEventListener("change", selectionChanged);
    const name = document.createElement("span");
    name.className = "model-name";
    name.textContent = model;
    const meta = document.createElement("span");
    meta.className = "model-meta";
    const info = state.info.get(model);
    meta.textContent = info ? `${info.model_family} · ${info.engine} · ${info.quantization}` : "";
    label.append(box, name, meta);
    list.append(label);
  });
  selectionChanged();
}

function chosenModels() {
  return [...$("model-list").querySelectorAll("input:checked")].map((box) => box.value);
}

function selectionChanged() {
  const chosen = chosenModels();
  for (const [model, pane] of state.panes) {
    if (!chosen.includes(model)) {
      pane.element.remove();
      state.panes.delete(model);
    }
  }
  for (const model of chosen) {
    if (!state.panes.has(model)) state.panes.set(model, new Pane(model));
  }
  const grid = $("answers");
  grid.replaceChildren(...chosen.map((model) => state.panes.get(model).element));
  grid.dataset.count = String(chosen.length);
  if (chosen[0] !== state.cardOwner) applyCardDefaults(chosen[0] ?? null);
  renderExamples(chosen);
  updateButtons();
}

function renderExamples(chosen) {
  const seen = new Map();
  for (const model of chosen) {
    for (const example of cardOf(model)?.examples ?? []) {
      seen.set(example.instruction, example.source);
    }
  }
  const buttons = [...seen].map(([instruction, source]) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "example";
    button.dataset.testid = "example";
    button.title = `From the ${source}`;
    button.textContent = instruction.replace(/\s+/g, " ");
    button.addEventListener("click", () => {
      $("instruction").value = instruction;
      $("instruction").focus({ preventScroll: true });
    });
    return button;
  });
  const heading = document.createElement("span");
  heading.className = "hint";
  heading.textContent = buttons.length ? "Examples from the model cards:" : "";
  $("examples").replaceChildren(heading, ...buttons);
}

// --- parameters --------------------------------------------------------------------------------

function applyCardDefaults(model) {
  state.cardOwner = model;
  const card = model ? cardOf(model) : null;
  if (!card) {
    $("defaults-line").textContent = "Choose a model to see its card's settings.";
    return;
  }
  const settings = card.recommended;
  $(settings.do_sample ? "decoding-sample" : "decoding-greedy").checked = true;
  $("temperature").value = settings.temperature;
  $("top-p").value = settings.top_p;
  $("max-new-tokens").value = settings.max_new_tokens;
  $("repetition-penalty").value = settings.repetition_penalty;
  $("stop-sequences").value = "";
  $("defaults-line").textContent =
    `Defaults from the ${card.name} model card: ${describe(settings)}. ` +
    "They apply to every chosen model.";
  decodingChanged();
}

function describe(settings) {
  const decoding = settings.do_sample
    ? `sampling (temperature ${settings.temperature}, top p ${settings.top_p})`
    : "greedy";
  return `${decoding}, ${settings.max_new_tokens} new tokens, ` +
    `repetition penalty ${settings.repetition_penalty}`;
}

function decodingChanged() {
  const greedy = $("decoding-greedy").checked;
  $("temperature").disabled = greedy;
  $("top-p").disabled = greedy;
}

function numberField(id) {
  const text = $(id).value.trim();
  return text === "" ? undefined : Number(text);
}

// The parameters as /v1/completions takes them (temperature 0 is OpenAI's greedy decoding).
function readParameters() {
  const sampling = $("decoding-sample").checked;
  const stops = $("stop-sequences").value.split("\n").filter((line) => line !== "");
  const parameters = {
    max_tokens: numberField("max-new-tokens"),
    repetition_penalty: numberField("repetition-penalty"),
    temperature: sampling ? numberField("temperature") : 0,
    top_p: sampling ? numberField("top-p") : undefined,
    stop: stops.length ? stops : undefined,
  };
  return Object.fromEntries(Object.entries(parameters).filter(([, v]) => v !== undefined));
}

// --- one model's pane --------------------------------------------------------------------------

class Pane {
  constructor(model) {
    this.model = model;
    this.element = $("pane-template").content.firstElementChild.cloneNode(true);
    this.element.dataset.testid = `pane-${model}`;
    this.part(".pane-title").textContent = model;
    this.part(".family").textContent = familyOf(model) ?? "";
    this.part(".answer").dataset.testid = `answer-${model}`;
    this.part(".answer").setAttribute("aria-label", `Answer of ${model}`);
    this.part(".status").dataset.testid = `status-${model}`;
    this.part(".error").dataset.testid = `error-${model}`;
    this.part(".model-input").dataset.testid = `model-input-${model}`;
  }

  part(selector) {
    return this.element.querySelector(selector);
  }

  reset(parameters) {
    this.text = "";
    this.generated = 0;
    this.promptTokens = null;
    this.firstAt = null;
    this.lastAt = null;
    this.finish = null;
    this.part(".answer").textContent = "";
    this.part(".error").hidden = true;
    this.part(".settings").textContent = Object.entries(parameters)
      .map(([name, value]) => `${name}=${JSON.stringify(value)}`)
      .join(" · ");
    for (const stat of this.element.querySelectorAll("[data-stat]")) stat.textContent = "–";
    this.setStatus("Waiting for the first token…", "busy");
  }

  setStatus(text, kind) {
    const status = this.part(".status");
    status.textContent = text;
    status.dataset.kind = kind;
    this.element.dataset.state = kind;
  }

  onChunk(chunk, startedAt) {
    const now = performance.now();
    const choice = chunk.choices?.[0];
    if (choice) {
      const tokens = choice.logprobs?.tokens?.length ?? 0;
      if (tokens && this.firstAt === null) this.firstAt = now;
      this.generated += tokens;
      this.lastAt = now;
      this.text += choice.text ?? "";
      const answer = this.part(".answer");
      const following = answer.scrollHeight - answer.scrollTop - answer.clientHeight < 40;
      answer.textContent = this.text;
      if (following) answer.scrollTop = answer.scrollHeight; // keep the newest text in view
      if (choice.finish_reason) this.finish = choice.finish_reason;
      if (this.generated) this.setStatus("Streaming…", "busy");
    }
    if (chunk.usage) {
      this.promptTokens = chunk.usage.prompt_tokens;
      this.generated = chunk.usage.completion_tokens;
    }
    this.showStats(startedAt);
  }

  showStats(startedAt) {
    if (this.firstAt !== null) {
      this.part(".ttft").textContent = `${Math.round(this.firstAt - startedAt)} ms`;
      const seconds = (this.lastAt - this.firstAt) / 1000;
      if (this.generated > 1 && seconds > 0) {
        this.part(".tps").textContent = `${((this.generated - 1) / seconds).toFixed(1)} tok/s`;
      }
    }
    if (this.promptTokens !== null) {
      this.part(".prompt-tokens").textContent = `${this.promptTokens} tok`;
    }
    this.part(".tokens").textContent = `${this.generated} tok`;
  }

  done() {
    const reason = this.finish === "length" ? "token limit" : "end of answer";
    this.setStatus(`Done · ${reason}`, "done");
  }

  stopped() {
    this.setStatus("Stopped", "stopped");
  }

  fail(message) {
    const error = this.part(".error");
    error.textContent = message;
    error.hidden = false;
    this.setStatus("Error", "error");
  }

  showInput(rendered) {
    const box = this.part(".model-input");
    box.hidden = false;
    box.open = true;
    this.part(".model-input-text").textContent = rendered.model_input;
    this.part(".input-meta").textContent =
      `${rendered.family} · ${rendered.prompt_format} format · ${rendered.input_tokens} tokens`;
  }

  hideInput() {
    this.part(".model-input").hidden = true;
  }
}

// --- streaming an answer -----------------------------------------------------------------------

// Server-sent events from a fetch body: yields the data of each event as it arrives.
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) yield data;
    }
  }
}

async function streamAnswer(pane, instruction, parameters, signal) {
  const body = {
    model: pane.model,
    prompt: instruction,
    ...parameters,
    logprobs: 0, // each chunk then lists its tokens, so they can be counted as they come
    stream: true,
    stream_options: { include_usage: true },
  };
  const startedAt = performance.now();
  let finished = false;
  try {
    const response = await call("v1/completions", {
      method: "POST",
      body: JSON.stringify(body),
      signal,
    });
    for await (const data of serverSentEvents(response.body)) {
      if (data === "[DONE]") {
        finished = true;
        break;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(`The server stopped this answer: ${chunk.error.message}`);
      pane.onChunk(chunk, startedAt);
    }
    if (!finished) throw new ApiError("The answer was cut off: the server closed the stream.");
    pane.done();
  } catch (error) {
    if (signal.aborted) pane.stopped();
    else if (error instanceof ApiError) pane.fail(error.message);
    else pane.fail(`${unreachable().message} (${error.message})`);
  }
}

async function showModelInputs(models, instruction) {
  await Promise.all(
    models.map(async (model) => {
      const pane = state.panes.get(model);
      try {
        const response = await call("prompt", {
          method: "POST",
          body: JSON.stringify({ model, inputs: instruction }),
        });
        pane.showInput(await response.json());
      } catch (error) {
        pane.fail(`Cannot show the model input: ${error.message}`);
      }
    }),
  );
}

function inputShown() {
  return $("show-input").getAttribute("aria-pressed") === "true";
}

async function send() {
  const instruction = $("instruction").value;
  const models = chosenModels();
  if (!models.length) return notify("Choose at least one model.");
  if (!instruction.trim()) {
    $("instruction").focus();
    return notify("Type an instruction first (or pick an example).");
  }
  if (state.controllers.length) return;
  notify("");
  const parameters = readParameters();
  if (inputShown()) showModelInputs(models, instruction);
  const runs = models.map((model) => {
    const controller = new AbortController();
    state.controllers.push(controller);
    const pane = state.panes.get(model);
    pane.reset(parameters);
    return streamAnswer(pane, instruction, parameters, controller.signal);
  });
  updateButtons();
  await Promise.all(runs);
  state.controllers = [];
  updateButtons();
}

function stop() {
  for (const controller of state.controllers) controller.abort();
}

function updateButtons() {
  const running = state.controllers.length > 0;
  $("send").disabled = running || chosenModels().length === 0;
  $("stop").disabled = !running;
  $("send").textContent = running ? "Generating…" : "Send";
}

async function toggleModelInput() {
  const shown = !inputShown();
  $("show-input").setAttribute("aria-pressed", String(shown));
  $("show-input").textContent = shown ? "Hide model input" : "Show model input";
  const instruction = $("instruction").value;
  if (!shown) {
    for (const pane of state.panes.values()) pane.hideInput();
  } else if (instruction.trim()) {
    await showModelInputs(chosenModels(), instruction);
  } else {
    notify("Type an instruction to see the model input it makes.");
  }
}

// --- wiring ------------------------------------------------------------------------------------

function start() {
  $("api-key").value = storedKey();
  $("remember-key").checked = localStorage.getItem(KEY_STORAGE) !== null;
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveKey($("api-key").value.trim(), $("remember-key").checked);
    loadModels();
  });
  $("send").addEventListener("click", send);
  $("stop").addEventListener("click", stop);
  $("show-input").addEventListener("click", toggleModelInput);
  $("reset-params").addEventListener("click", () => applyCardDefaults(chosenModels()[0] ?? null));
  for (const radio of document.querySelectorAll("input[name=decoding]")) {
    radio.addEventListener("change", decodingChanged);
  }
  $("instruction").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") stop();
  });
  loadModels();
}

start();
