// The live job list: rows built from GET generate-content, kept current by the event
// stream (GET events, server-sent events through EventSource), with a countdown to each
// queued job's start and the text as the model writes it. Prompts, errors and streamed
// text are untrusted: they reach the page through textContent only.

import { ApiError, accessToken, forget, refresh, request } from "./api.js";
import { showError } from "./forms.js";

const list = () => document.getElementById("jobs");
const jobs = new Map(); // jobId -> the job as the API answered it
const editing = new Set(); // jobIds whose edit form is open
let source = null;
let lastSeq = null;
let ticker = null;
let retryTimer = null;
let hooks = { open: () => {}, notify: () => {}, changed: () => {} };

export function setHooks(given) {
  hooks = { ...hooks, ...given };
}

export function getJob(jobId) {
  return jobs.get(jobId);
}

export function resetJobs() {
  disconnect();
  jobs.clear();
  editing.clear();
  lastSeq = null;
  list().replaceChildren();
  document.getElementById("jobs-empty").hidden = false;
}

export async function startJobs() {
  connect();
  const found = await request("GET", "generate-content?limit=50");
  for (const job of found.reverse()) upsert(job);
  clearInterval(ticker);
  ticker = setInterval(tick, 250);
}

export async function fetchJob(jobId) {
  const job = await request("GET", `generate-content/${encodeURIComponent(jobId)}`);
  upsert(job);
  return job;
}

// ----- the event stream ---------------------------------------------------------------
function connect() {
  disconnect();
  const token = accessToken();
  if (!token) return;
  let url = `events?token=${encodeURIComponent(token)}`;
  if (lastSeq !== null) url += `&afterSeq=${lastSeq}`;
  source = new EventSource(url);
  const seen = (event) => {
    const seq = Number(event.lastEventId);
    if (Number.isFinite(seq) && event.lastEventId !== "") lastSeq = seq;
  };
  const on = (name, fn) =>
    source.addEventListener(name, (event) => {
      seen(event);
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      fn(data);
    });
  on("job_status", onStatus);
  on("job_progress", onProgress);
  on("job_completed", (data) => onFinal(data, "completed"));
  on("job_failed", (data) => onFinal(data, "failed"));
  on("resync", () => {
    for (const jobId of jobs.keys()) fetchJob(jobId).catch(() => {});
  });
  on("session_ended", () => {
    disconnect();
    forget();
  });
  source.onerror = () => {
    // EventSource reconnects by itself (with Last-Event-ID) while the stream merely
    // dropped; CLOSED means it was refused (an expired token): renew it, then reconnect.
    if (source && source.readyState === EventSource.CLOSED) {
      disconnect();
      clearTimeout(retryTimer);
      retryTimer = setTimeout(() => {
        refresh().then(connect, (err) => {
          if (err.status === 401) forget();
          else retryTimer = setTimeout(connect, 5_000);
        });
      }, 1_000);
    }
  };
}

function disconnect() {
  clearTimeout(retryTimer);
  if (source) {
    source.close();
    source = null;
  }
}

export function stopJobs() {
  disconnect();
  clearInterval(ticker);
}

function onStatus(data) {
  const job = jobs.get(data.jobId);
  if (!job) {
    fetchJob(data.jobId).catch(() => {});
    return;
  }
  if (job.status === data.status) return;
  job.status = data.status;
  if (data.status === "processing") job.partialContent = job.partialContent || "";
  if (data.status === "queued" || data.status === "cancelled") {
    // a retry, an edit or a cancel: what else changed (scheduledFor) comes with the job
    fetchJob(data.jobId).catch(() => {});
  }
  render(job);
}

function onProgress(data) {
  const job = jobs.get(data.jobId);
  if (!job) return;
  const text = data.reset ? data.delta : (job.partialContent || "") + data.delta;
  if (typeof data.length === "number" && text.length !== data.length) {
    fetchJob(data.jobId).catch(() => {}); // missed a piece: the API has it all
    return;
  }
  job.partialContent = text;
  if (job.status === "queued") job.status = "processing";
  const row = document.getElementById(`job-${job.jobId}`);
  const live = row && row.querySelector(".live-text");
  if (live && job.status === "processing") live.textContent = text;
  else render(job);
}

function onFinal(data, status) {
  const job = jobs.get(data.jobId);
  if (!job) {
    fetchJob(data.jobId).catch(() => {});
    return;
  }
  job.status = status;
  if (status === "completed") {
    job.generatedContent = data.generatedContent;
    hooks.notify("A job completed.");
  } else {
    job.error = data.error;
    hooks.notify("A job failed.");
  }
  render(job);
  fetchJob(data.jobId).catch(() => {}); // usage, model, times
}

// ----- rows ---------------------------------------------------------------------------
export function upsert(job) {
  const known = jobs.get(job.jobId);
  // A processing job's text from the stream may be ahead of what a GET answered.
  if (known && job.status === "processing" && (known.partialContent || "").length > (job.partialContent || "").length) {
    job.partialContent = known.partialContent;
  }
  jobs.set(job.jobId, { ...known, ...job });
  render(jobs.get(job.jobId));
  hooks.changed(jobs.get(job.jobId));
}

function el(tag, { text, cls, attrs } = {}) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function button(label, describedBy, onClick, cls = "secondary") {
  const b = el("button", { text: label, cls, attrs: { type: "button", "aria-describedby": describedBy } });
  b.addEventListener("click", onClick);
  return b;
}

function render(job) {
  let row = document.getElementById(`job-${job.jobId}`);
  const fresh = !row;
  if (fresh) {
    row = el("li", { cls: "job", attrs: { id: `job-${job.jobId}`, "data-job-id": job.jobId } });
  }
  const focusedLabel = row.contains(document.activeElement) ? document.activeElement.textContent : null;
  const promptId = `job-${job.jobId}-prompt`;
  const head = el("div", { cls: "job-head" });
  head.append(
    el("span", { cls: `badge badge-${job.status}`, text: job.status }),
    el("span", { cls: "muted", text: job.contentType }),
  );
  if (job.parentJobId) head.append(el("span", { cls: "muted", text: "another take" }));
  const parts = [head, el("p", { cls: "prompt-line", text: job.prompt, attrs: { id: promptId } })];

  if (job.status === "queued") {
    const countdown = el("p", { cls: "countdown", attrs: { "data-at": job.scheduledFor } });
    countdown.textContent = countdownText(job.scheduledFor);
    parts.push(countdown);
  } else if (job.status === "processing") {
    parts.push(el("div", { cls: "live-text", text: job.partialContent || "", attrs: { "aria-busy": "true" } }));
  } else if (job.status === "failed") {
    parts.push(el("p", { cls: "error-text", text: job.error || "Failed" }));
  }

  const actions = el("div", { cls: "actions wrap" });
  if (job.status === "queued") {
    actions.append(
      button("Run now", promptId, () => act(job, "POST", "run-now")),
      button(editing.has(job.jobId) ? "Close edit" : "Edit", promptId, () => toggleEdit(job)),
    );
  }
  if (job.status === "queued" || job.status === "processing") {
    actions.append(button("Cancel", promptId, () => act(job, "DELETE", ""), "danger"));
  }
  if (job.status === "failed" || job.status === "cancelled") {
    actions.append(button("Retry", promptId, () => act(job, "POST", "retry")));
  }
  if (job.status === "completed") {
    actions.append(button("Open", promptId, () => hooks.open(job.jobId), ""));
  }
  parts.push(actions);
  if (job.status === "queued" && editing.has(job.jobId)) parts.push(editForm(job));
  else editing.delete(job.jobId);
  parts.push(el("p", { cls: "form-error", attrs: { role: "alert" } }));

  row.replaceChildren(...parts);
  if (focusedLabel) {
    const again = [...row.querySelectorAll("button")].find((b) => b.textContent === focusedLabel);
    if (again) again.focus();
  }
  if (fresh) placeRow(row, job);
  document.getElementById("jobs-empty").hidden = jobs.size > 0;
}

function placeRow(row, job) {
  const container = list();
  for (const other of container.children) {
    const theirs = jobs.get(other.dataset.jobId);
    if (theirs && theirs.createdAt < job.createdAt) {
      container.insertBefore(row, other);
      return;
    }
  }
  container.append(row);
}

function editForm(job) {
  const id = `edit-${job.jobId}`;
  const form = el("form", { cls: "edit-job", attrs: { novalidate: "" } });
  const field = el("div", { cls: "field" });
  const textarea = el("textarea", {
    attrs: { id: `${id}-prompt`, rows: "3", "data-field": "prompt", "aria-describedby": `${id}-prompt-error` },
  });
  textarea.value = job.prompt;
  field.append(
    el("label", { text: "Edit prompt", attrs: { for: `${id}-prompt` } }),
    textarea,
    el("p", { cls: "field-error", attrs: { id: `${id}-prompt-error` } }),
  );
  const general = el("p", { cls: "form-error", attrs: { role: "alert" } });
  const submit = el("button", { text: "Save changes", attrs: { type: "submit" } });
  form.append(field, general, el("div", { cls: "actions" }));
  form.lastChild.append(submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const updated = await request("PATCH", `generate-content/${encodeURIComponent(job.jobId)}`, {
        body: { prompt: textarea.value },
      });
      editing.delete(job.jobId);
      upsert(updated);
      hooks.notify("The job was changed.");
    } catch (err) {
      showError(form, err);
    }
  });
  return form;
}

function toggleEdit(job) {
  if (editing.has(job.jobId)) editing.delete(job.jobId);
  else editing.add(job.jobId);
  render(job);
  if (editing.has(job.jobId)) document.getElementById(`edit-${job.jobId}-prompt`)?.focus();
}

async function act(job, method, action) {
  const path = `generate-content/${encodeURIComponent(job.jobId)}${action ? `/${action}` : ""}`;
  const row = document.getElementById(`job-${job.jobId}`);
  try {
    await request(method, path);
    await fetchJob(job.jobId);
  } catch (err) {
    const slot = row && row.querySelector(":scope > .form-error");
    if (slot) slot.textContent = err instanceof ApiError ? err.message : String(err);
  }
}

// ----- the countdown ------------------------------------------------------------------
export function countdownText(at) {
  const seconds = Math.ceil((Date.parse(at) - Date.now()) / 1000);
  if (!(seconds > 0)) return "Starting…";
  if (seconds < 60) return `Starts in ${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `Starts in ${minutes} min ${seconds % 60} s`;
  return `Starts in ${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function tick() {
  for (const node of document.querySelectorAll("#jobs .countdown")) {
    node.textContent = countdownText(node.dataset.at);
  }
}
