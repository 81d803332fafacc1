// The demo page: a front end in miniature, and the reference for writing a real one.
//  - Submit with an Idempotency-Key, so a retry after a network error never makes two jobs.
//  - Follow the job through its event stream (GET /v1/jobs/{id}/stream): one request, each
//    change the moment it happens, the stream ending once the job settles. A cut stream
//    resumes with Last-Event-ID; a stream that cannot be had falls back to polling.
//  - Polling: GET /v1/jobs/{id} with If-None-Match (an unchanged job costs a 304 and no body),
//    as often as Retry-After says; stop when the status is completed, partial or failed.
//  - A job still processing with `attention` is not lost and not failed: its fate is unknown.
//    Tell the user to check the chart before resubmitting, and keep polling: it settles when
//    Cobalt's outcome turns up or support records what the chart shows.
//  - Show `error.code` (and the field it names) and `retried_as` when support resubmitted it.
//  - Show 422 field errors next to their fields. Server data goes in with textContent only.
//  - Offer the clinic's providers, locations and pharmacies (GET /v1/reference/...) as choices,
//    so a wrong id is rare; a wrong one typed anyway is refused at once (422 naming the field).
"use strict";

const TERMINAL = new Set(["completed", "partial", "failed"]);
const DEFAULT_WAIT_MS = 2000;
const MAX_WAIT_MS = 30000;
// The bearer token for /v1/*: the demo page's own (a real front end gets one from its back end).
const TOKEN = document.querySelector("meta[name=api-token]").content;
const AUTH = { Authorization: `Bearer ${TOKEN}` };

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Retry-After is seconds (or an HTTP date); without one, use the fallback.
function retryAfterMs(response, fallbackMs) {
  const value = response.headers.get("Retry-After");
  if (value === null) return fallbackMs;
  const ms = /^\d+$/.test(value) ? Number(value) * 1000 : Date.parse(value) - Date.now();
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 250), MAX_WAIT_MS) : fallbackMs;
}

// POST a body; network failures are retried with the same key, so the job exists once.
async function submitJob(path, body) {
  const key = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  for (let attempt = 1; ; attempt++) {
    try {
      const response = await fetch(path, {
        method: "POST",
        headers: { ...AUTH, "Content-Type": "application/json", "Idempotency-Key": key },
        body: JSON.stringify(body),
      });
      return { response, payload: await response.json().catch(() => ({})) };
    } catch (error) {
      if (attempt === 3) throw error;
      await sleep(1000 * attempt);
    }
  }
}

// Poll the job a 202 answered with until it settles, calling onChange(job, stats) each time.
async function pollJob(accepted, job, onChange) {
  const url = accepted.headers.get("Location");
  let etag = accepted.headers.get("ETag");
  let waitMs = retryAfterMs(accepted, DEFAULT_WAIT_MS);
  const stats = { polls: 0, notModified: 0 };
  while (!TERMINAL.has(job.status)) {
    await sleep(waitMs);
    let response;
    try {
      response = await fetch(url, {
        headers: etag ? { ...AUTH, "If-None-Match": etag } : AUTH,
        cache: "no-store", // we hold the ETag ourselves; let the 304 through
      });
    } catch {
      waitMs = Math.min(waitMs * 2, MAX_WAIT_MS); // offline or server gone: back off
      continue;
    }
    stats.polls++;
    if (response.status === 304) {
      stats.notModified++;
    } else if (response.ok) {
      job = await response.json();
      etag = response.headers.get("ETag");
    } else if (response.status < 500 && response.status !== 429) {
      throw new Error(`the service answered ${response.status}`); // 401, 404: polling won't help
    } else {
      waitMs = retryAfterMs(response, Math.min(waitMs * 2, MAX_WAIT_MS)); // 429, 5xx
      continue;
    }
    waitMs = retryAfterMs(response, DEFAULT_WAIT_MS);
    onChange(job, stats);
  }
}

// One server-sent event: its `id`, `event` and `data` fields (comments and `retry` ignored).
function parseEvent(block) {
  const event = { data: [] };
  for (const line of block.split("\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue; // a comment (": still here") or a bare line
    const name = line.slice(0, colon);
    const value = line.slice(colon + 1).replace(/^ /, "");
    if (name === "data") event.data.push(value);
    else event[name] = value;
  }
  return { ...event, data: event.data.join("\n") };
}

// Follow the job through its event stream until it settles, calling onChange(job, stats) at
// each change. fetch, not EventSource: EventSource cannot send the Authorization header (a
// real front end's browser would follow its own back end's stream, or use a library that
// can). A stream cut short is resumed with the last event's id; if no stream can be had
// (an old server, a proxy that buffers), the job is polled instead.
async function followJob(accepted, job, onChange) {
  const url = `${accepted.headers.get("Location")}/stream`;
  const stats = { via: "stream", requests: 0 };
  let lastId = null;
  for (let failures = 0; failures < 3 && !TERMINAL.has(job.status); ) {
    let response;
    try {
      const headers = lastId ? { ...AUTH, "Last-Event-ID": lastId } : AUTH;
      response = await fetch(url, { headers, cache: "no-store" });
    } catch {
      failures++;
      await sleep(1000 * failures);
      continue;
    }
    if (!response.ok || !response.body) break; // no stream to be had: poll
    stats.requests++;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch {
        failures++;
        break; // cut: resume from lastId
      }
      if (chunk.done) break;
      buffer += chunk.value;
      for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event.id) lastId = event.id;
        if (event.event !== "job" || !event.data) continue;
        job = JSON.parse(event.data);
        if (TERMINAL.has(job.status) && job.finished_at) {
          // From the webhook that settled it (finished_at) to this page: same clock here.
          stats.settledMs = Math.max(0, Date.now() - Date.parse(job.finished_at));
        }
        onChange(job, stats);
      }
    }
  }
  if (!TERMINAL.has(job.status)) await pollJob(accepted, job, onChange);
}

// --- Showing a job --------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderJob(row, job, stats) {
  Object.assign(row.dataset, { jobId: job.id, status: job.status });
  const head = el("div", "job-head");
  head.append(el("span", `status status-${job.status}`, job.status));
  head.append(el("span", "job-title", row.dataset.title));
  const meta = [`job ${job.id.slice(0, 8)}`, `submission ${job.submission.state}`];
  if (stats.via === "stream" && stats.requests) {
    meta.push(`followed by its event stream (${stats.requests} request${stats.requests > 1 ? "s" : ""})`);
  }
  if (stats.settledMs !== undefined) meta.push(`on this page ${stats.settledMs} ms after it settled`);
  if (stats.polls) meta.push(`${stats.polls} polls, ${stats.notModified} unchanged (304)`);
  const parts = [head, el("p", "job-meta", meta.join(" · "))];
  const outcome = job.outcome || {};
  if (job.attention) {
    row.dataset.attention = job.attention.code;
    const note = el("p", "job-attention", "Needs attention ");
    note.append(el("code", "attention-code", job.attention.code), ": ");
    note.append(el("span", "", job.attention.message));
    parts.push(note);
  }
  if (outcome.message) parts.push(el("p", "job-message", outcome.message));
  if (job.error) {
    const error = el("p", "job-error", "error ");
    error.append(el("code", "error-code", job.error.code));
    if (job.error.field) error.append(" in ", el("code", "error-field", job.error.field));
    if (job.error.message && job.error.message !== outcome.message) {
      error.append(`: ${job.error.message}`);
    }
    parts.push(error);
  }
  if (job.retried_as) {
    parts.push(el("p", "job-retried", `Resubmitted by support as job ${job.retried_as.slice(0, 8)}.`));
  }
  if (Array.isArray(outcome.available_medications)) {
    const list = el("ul", "medications");
    for (const name of outcome.available_medications) list.append(el("li", "", name));
    parts.push(el("p", "job-meds-label", "Available medications:"), list);
  }
  row.replaceChildren(...parts);
}

// --- Forms ----------------------------------------------------------------------------------

// Named, enabled, non-empty fields; "note.plan" nests; data-list fields split on commas.
// A SOAP section is sent even when empty: the API needs all four, and at least one with text.
function formBody(form) {
  const body = {};
  for (const input of form.querySelectorAll("[name]")) {
    const section = input.name.includes(".");
    if (input.matches(":disabled") || (input.value.trim() === "" && !section)) continue;
    const value = "list" in input.dataset
      ? input.value.split(",").map((s) => s.trim()).filter(Boolean)
      : input.value;
    const [name, part] = input.name.split(".");
    if (part) (body[name] ??= {})[part] = value;
    else body[name] = value;
  }
  return body;
}

function showProblem(form, problem, status) {
  const general = form.querySelector(".form-error");
  for (const { field, message } of problem.errors || []) {
    const slot = [...form.querySelectorAll("[data-error-for]")]
      .find((s) => s.dataset.errorFor === field && !s.closest("[hidden]"));
    if (slot) {
      slot.textContent = message;
      slot.closest("label")?.querySelector("[name]")?.setAttribute("aria-invalid", "true");
    } else {
      general.append(el("span", "", `${field}: ${message}. `));
    }
  }
  if (!problem.errors) general.textContent = problem.detail || `The service answered ${status}.`;
}

function clearProblems(form) {
  form.querySelectorAll(".field-error, .form-error").forEach((slot) => slot.replaceChildren());
  form.querySelectorAll("[aria-invalid]").forEach((input) => input.removeAttribute("aria-invalid"));
}

async function onSubmit(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const button = form.querySelector("button[type=submit]");
  const scenario = form.querySelector(".scenario").selectedOptions[0];
  const body = formBody(form);
  // Named by the body sent, not by the format picker, which may change while this waits.
  const soap = typeof body.note === "object" ? " (SOAP)" : "";
  clearProblems(form);
  button.disabled = true;
  try {
    const { response, payload } = await submitJob(form.dataset.path, body);
    if (response.status !== 202) return showProblem(form, payload, response.status);
    const row = el("li", "job");
    Object.assign(row.dataset, { kind: form.dataset.kind, scenario: scenario.value });
    row.dataset.title = `${form.dataset.title}${soap} · ${scenario.textContent}`;
    document.getElementById("jobs").prepend(row);
    document.querySelector(".jobs .empty").hidden = true;
    renderJob(row, payload, { polls: 0 });
    followJob(response, payload, (job, stats) => renderJob(row, job, stats))
      .catch((error) => row.append(el("p", "job-error", `Following stopped: ${error.message}`)));
  } catch (error) {
    form.querySelector(".form-error").textContent = `Could not reach the service: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

// A scenario fills in the fields it needs; the note format shows text or SOAP sections.
function onScenario(event) {
  const form = event.target.form;
  const fields = JSON.parse(event.target.selectedOptions[0].dataset.fields);
  for (const [name, value] of Object.entries(fields)) form.elements[name].value = value;
}

function onNoteFormat(event) {
  for (const set of event.target.form.querySelectorAll("fieldset[data-format]")) {
    set.hidden = set.disabled = set.dataset.format !== event.target.value;
  }
}

for (const form of document.querySelectorAll("form[data-path]")) {
  form.addEventListener("submit", onSubmit);
  form.querySelector(".scenario").addEventListener("change", onScenario);
  form.querySelector(".note-format")?.addEventListener("change", onNoteFormat);
}

// Fill each id field's choices from the clinic's EMR lists (ETag'd; the browser revalidates).
async function loadPickers() {
  const state = document.getElementById("picker-state");
  const lists = [...document.querySelectorAll("datalist[id$='-options']")];
  const counts = [];
  for (const list of lists) {
    const kind = list.id.replace(/-options$/, "");
    try {
      const response = await fetch(`/v1/reference/${kind}`, { headers: AUTH });
      if (!response.ok) throw new Error(`${response.status}`);
      const { items, fetched_at: fetchedAt } = await response.json();
      list.replaceChildren(...items.map((item) => {
        const option = el("option");
        option.value = item.ehr_id;
        option.label = item.status && item.status !== "active"
          ? `${item.name} (${item.status})` : item.name;
        return option;
      }));
      counts.push(fetchedAt ? `${items.length} ${kind}` : `${kind} not fetched yet`);
    } catch (error) {
      counts.push(`${kind} unavailable (${error.message})`);
    }
  }
  if (state) state.textContent = `${counts.join(", ")}.`;
}

loadPickers();
