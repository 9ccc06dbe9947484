// Switchboard playground: plain browser JavaScript, no build step and no third-party code.
// Every API call sends the key typed in the header as `Authorization: Bearer`; the key stays in this tab's
// sessionStorage only.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const panes = [$("#pane-a"), $("#pane-b")];

function headers(json = false) {
  const h = { authorization: `Bearer ${$("#api-key").value.trim()}` };
  if (json) h["content-type"] = "application/json";
  return h;
}

function setStatus(text, failed = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("failed", failed);
}

async function apiError(reply) {
  try {
    const body = await reply.json();
    return `HTTP ${reply.status}: ${body.error?.message ?? JSON.stringify(body)}`;
  } catch {
    return `HTTP ${reply.status}`;
  }
}

async function loadModels() {
  sessionStorage.setItem("switchboard-key", $("#api-key").value);
  setStatus("loading models…");
  const reply = await fetch("/v1/models", { headers: headers() });
  if (!reply.ok) {
    setStatus(await apiError(reply), true);
    return;
  }
  const { data } = await reply.json();
  for (const [index, pane] of panes.entries()) {
    const select = $("select.model", pane);
    const keep = select.value;
    select.replaceChildren(...data.map((model) => {
      const price = model.pricing ? ` · $${(Number(model.pricing.prompt) * 1e6).toPrecision(3)}/` +
        `$${(Number(model.pricing.completion) * 1e6).toPrecision(3)} per M` : "";
      return new Option(`${model.id}${price}`, model.id);
    }));
    if (keep && data.some((m) => m.id === keep)) select.value = keep;
    else if (data.length > index) select.selectedIndex = index;
  }
  setStatus(`${data.length} models`);
}

function formBody() {
  const body = { input: $("#prompt").value, stream: $("#stream").checked, store: $("#store").checked };
  const instructions = $("#instructions").value.trim();
  if (instructions) body.instructions = instructions;
  return body;
}

function fillBody() {
  const body = { model: $("select.model", panes[0]).value, ...formBody() };
  $("#body-editor").value = JSON.stringify(body, null, 2);
}

// ---------------------------------------------------------------- one pane's run

class Run {
  constructor(pane) {
    this.pane = pane;
    this.output = $(".output", pane);
    this.usage = $(".usage", pane);
    this.state = $(".state", pane);
    this.rows = $("table.events tbody", pane);
    this.started = performance.now();
    this.count = 0;
    this.spans = {};
    this.output.replaceChildren();
    this.usage.textContent = "";
    this.rows.replaceChildren();
    this.setState("sending…");
  }

  setState(text, failed = false) {
    this.state.textContent = text;
    this.state.classList.toggle("failed", failed);
  }

  span(kind) {
    if (!this.spans[kind]) {
      this.spans[kind] = document.createElement("span");
      this.spans[kind].className = kind;
      this.output.append(this.spans[kind]);
    }
    return this.spans[kind];
  }

  error(message) {
    const line = document.createElement("span");
    line.className = "error";
    line.textContent = message;
    this.output.append(line);
    this.setState("failed", true);
  }

  inspect(event) {
    this.count += 1;
    const row = this.rows.insertRow();
    row.className = "event";
    row.dataset.type = event.type ?? "";
    const elapsed = Math.round(performance.now() - this.started);
    for (const text of [String(this.count), event.type ?? "(none)", String(event.sequence_number ?? ""),
      String(elapsed)]) {
      row.insertCell().textContent = text;
    }
    row.cells[1].className = "type";
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    const payload = JSON.stringify(event);
    summary.textContent = payload.slice(0, 80);
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(event, null, 2);
    details.append(summary, pre);
    row.insertCell().append(details);
  }

  event(event) {
    this.inspect(event);
    const type = event.type ?? "";
    if (type === "response.output_text.delta") {
      this.span("text").textContent += event.delta;
    } else if (type.startsWith("response.reasoning") && type.endsWith(".delta")) {
      this.span("reasoning").textContent += event.delta;
    } else if (type === "response.output_item.done" && event.item?.type === "function_call") {
      const call = document.createElement("span");
      call.className = "tool";
      call.textContent = `→ ${event.item.name}(${event.item.arguments})`;
      this.output.append(call);
    } else if (type === "response.created" || type === "response.in_progress") {
      this.setState(`${event.response?.id ?? ""} ${event.response?.status ?? ""}`);
    } else if (["response.completed", "response.incomplete", "response.failed"].includes(type)) {
      this.done(event.response);
    } else if (type === "error") {
      this.error(event.message ?? event.error?.message ?? JSON.stringify(event));
    }
  }

  done(response) {
    if (!response) return;
    const failed = response.status === "failed";
    this.setState(`${response.id} ${response.status}`, failed);
    if (response.error?.message) this.error(response.error.message);
    if (response.id) $("#lookup-id").value = response.id;
    const u = response.usage;
    if (u) {
      const cost = typeof u.cost === "number" ? ` · $${u.cost.toFixed(6)}` : "";
      this.usage.textContent = `${response.model}: ${u.input_tokens} in · ${u.output_tokens} out · ` +
        `${u.total_tokens} total${cost} · ${Math.round(performance.now() - this.started)} ms`;
    }
  }

  // A JSON (not streamed) response: render its output as the stream would have.
  whole(response) {
    this.inspect({ type: "(response)", ...response });
    for (const item of response.output ?? []) {
      if (item.type === "message") {
        for (const part of item.content ?? []) if (part.type === "output_text") this.span("text").textContent += part.text;
      } else if (item.type === "reasoning") {
        for (const part of [...(item.summary ?? []), ...(item.content ?? [])]) this.span("reasoning").textContent += part.text ?? "";
      } else if (item.type === "function_call") {
        this.event({ type: "response.output_item.done", item });
      }
    }
    this.done(response);
  }
}

// Server-sent events from a fetch body: lines, `data:` fields joined by newlines, a blank line ends an event.
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let newline;
    while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
      if (line === "") {
        if (data.length) yield data.join("\n");
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      }
    }
  }
  if (data.length) yield data.join("\n");
}

async function runOne(pane, body) {
  const run = new Run(pane);
  try {
    const reply = await fetch("/v1/responses", { method: "POST", headers: headers(true), body: JSON.stringify(body) });
    if (!reply.ok) {
      run.error(await apiError(reply));
      return;
    }
    if (!(reply.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
      run.whole(await reply.json());
      return;
    }
    run.setState("streaming…");
    for await (const data of sseEvents(reply.body)) {
      if (data === "[DONE]") break;
      run.event(JSON.parse(data));
    }
  } catch (exc) {
    run.error(String(exc));
  }
}

async function send() {
  let base;
  if ($("#use-body").checked) {
    try {
      base = JSON.parse($("#body-editor").value);
    } catch (exc) {
      setStatus(`the JSON body does not parse: ${exc.message}`, true);
      return;
    }
  } else {
    base = formBody();
  }
  setStatus("");
  const active = $("#compare").checked ? panes : panes.slice(0, 1);
  await Promise.all(active.map((pane) => {
    const model = $("select.model", pane).value;
    const body = model && !($("#use-body").checked && base.model && active.length === 1) ? { ...base, model } : base;
    return runOne(pane, body);
  }));
}

async function lookup() {
  const id = $("#lookup-id").value.trim();
  if (!id) return;
  const path = `/v1/responses/${encodeURIComponent(id)}`;
  const [response, items] = await Promise.all([
    fetch(path, { headers: headers() }), fetch(`${path}/input_items?order=asc&limit=100`, { headers: headers() })]);
  if (!response.ok) {
    $("#lookup-summary").textContent = await apiError(response);
    $("#lookup-response").textContent = $("#lookup-items").textContent = "";
    return;
  }
  const stored = await response.json();
  const text = (stored.output ?? []).flatMap((item) => item.content ?? [])
    .filter((part) => part.type === "output_text").map((part) => part.text).join("");
  $("#lookup-summary").textContent = `${stored.id} · ${stored.model} · ${stored.status}: ${text}`;
  $("#lookup-response").textContent = JSON.stringify(stored, null, 2);
  $("#lookup-items").textContent = items.ok ? JSON.stringify((await items.json()).data, null, 2) : await apiError(items);
}

$("#api-key").value = sessionStorage.getItem("switchboard-key") ?? "";
$("#load-models").addEventListener("click", loadModels);
$("#api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") loadModels(); });
$("#send").addEventListener("click", send);
$("#prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(); });
$("#fill-body").addEventListener("click", fillBody);
$("#use-body").addEventListener("change", () => {
  if ($("#use-body").checked) {
    if (!$("#body-editor").value.trim()) fillBody();
    $("#body-details").open = true;
  }
});
$("#compare").addEventListener("change", () => { panes[1].hidden = !$("#compare").checked; });
$("#lookup").addEventListener("click", lookup);
if ($("#api-key").value) loadModels();
