// The result view: a completed job's text rendered as safe Markdown, copy, save to the
// library with a title, like / dislike, and "another take".

import { ApiError, request } from "./api.js";
import { clearErrors, showError } from "./forms.js";
import { fetchJob, getJob } from "./jobs.js";
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
let current = null; // the job id shown
const OPTION_NAMES = ["tone", "length", "language", "audience", "keywords", "model", "temperature", "voiceId"];

function say(text) {
  $("result-message").textContent = text;
}

export function closeResult() {
  current = null;
  $("result").hidden = true;
  $("result-body").replaceChildren();
}

export async function openResult(jobId) {
  let job = getJob(jobId);
  if (!job || job.generatedContent === undefined) job = await fetchJob(jobId);
  current = jobId;
  $("result").hidden = false;
  $("result-prompt").textContent = job.prompt;
  renderMarkdown($("result-body"), job.generatedContent || "");
  $("save-title").value = "";
  clearErrors($("save-form"));
  showRating(job.feedback && job.feedback.rating);
  say("");
  $("result-title").focus();
}

// A job changed (the live list): keep the view in step.
export function jobChanged(job) {
  if (job.jobId === current && job.feedback) showRating(job.feedback.rating);
}

function showRating(rating) {
  $("result-like").setAttribute("aria-pressed", String(rating === "like"));
  $("result-dislike").setAttribute("aria-pressed", String(rating === "dislike"));
}

async function copy() {
  const job = getJob(current);
  try {
    await navigator.clipboard.writeText(job.generatedContent || "");
    say("Copied to the clipboard.");
  } catch {
    say("The browser refused the clipboard; select the text and copy it instead.");
  }
}

async function rate(rating) {
  const job = getJob(current);
  try {
    await request("POST", `generate-content/${encodeURIComponent(job.jobId)}/feedback`, { body: { rating } });
    job.feedback = { rating };
    showRating(rating);
    say(rating === "like" ? "Marked as liked." : "Marked as disliked.");
  } catch (err) {
    say(err.status === 404 || err.status === 405 ? "Feedback is not available on this server." : err.message);
  }
}

async function another() {
  const job = getJob(current);
  let queued;
  try {
    queued = await request("POST", `generate-content/${encodeURIComponent(job.jobId)}/variations`);
  } catch (err) {
    if (!(err instanceof ApiError) || ![404, 405, 409].includes(err.status)) {
      say(err.message);
      return;
    }
    // no variations here: a new job with the same prompt and options
    const body = { prompt: job.prompt, contentType: job.contentType };
    for (const name of OPTION_NAMES) if (job.options && job.options[name] != null) body[name] = job.options[name];
    try {
      queued = await request("POST", "generate-content", { body });
    } catch (again) {
      say(again.message);
      return;
    }
  }
  await fetchJob(queued.jobId);
  say("Another take is queued: see the job list.");
}

async function save(event) {
  event.preventDefault();
  const form = $("save-form");
  clearErrors(form);
  const title = $("save-title").value.trim();
  try {
    const saved = await request("POST", `generate-content/${encodeURIComponent(current)}/save`, {
      body: title ? { title } : {},
    });
    say(`Saved to the library as “${saved.title}”.`);
  } catch (err) {
    showError(form, err);
    if (!(err.details || []).length) say(err.message);
  }
}

export function setUpResult() {
  $("result-copy").addEventListener("click", copy);
  $("result-like").addEventListener("click", () => rate("like"));
  $("result-dislike").addEventListener("click", () => rate("dislike"));
  $("result-again").addEventListener("click", another);
  $("save-form").addEventListener("submit", save);
}


