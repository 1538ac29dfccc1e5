// The console's start: sessions, views and the generation form. Everything the API says
// (including its error messages) reaches the page as text.

import { ApiError, onSession, refresh, request, signIn, signOut } from "./api.js";
import { clearErrors, showError } from "./forms.js";
import { fetchJob, resetJobs, setHooks, startJobs, stopJobs } from "./jobs.js";
import { loadLibrary, resetLibrary, setUpLibrary } from "./library.js";
import { closeResult, jobChanged, openResult, setUpResult } from "./result.js";
import { loadUsage } from "./usage.js";

const $ = (id) => document.getElementById(id);
const VIEWS = ["loading", "auth", "generate", "library", "usage"];
let signedIn = false;

function notify(text) {
  $("notice").textContent = text;
}

function showView(name) {
  notify(""); // a note belongs to the view it was made in
  for (const view of VIEWS) $(`view-${view}`).hidden = view !== name;
  for (const tab of document.querySelectorAll("#nav .tab")) {
    if (tab.dataset.view === name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  if (name === "library") loadLibrary(true);
  if (name === "usage") loadUsage().catch((err) => notify(err.message));
}

async function enter(session) {
  signedIn = true;
  $("who-email").textContent = session.user.email;
  $("who").hidden = false;
  $("nav").hidden = false;
  notify("");
  showView("generate");
  $("gen-prompt").focus(); // the focus was on a button that is gone now
  loadVoices();
  try {
    await startJobs();
  } catch (err) {
    notify(err.message);
  }
}

function leave() {
  signedIn = false;
  stopJobs();
  resetJobs();
  resetLibrary();
  closeResult();
  $("who").hidden = true;
  $("nav").hidden = true;
  $("who-email").textContent = "";
  $("generate-form").reset();
  $("auth-form").reset();
  showView("auth");
  $("auth-email").focus();
}

async function loadVoices() {
  let voices = [];
  try {
    voices = await request("GET", "voices");
  } catch {
    voices = [];
  }
  const select = $("gen-voice");
  const keep = select.firstElementChild;
  const options = voices.map((voice) => {
    const option = document.createElement("option");
    option.value = voice.voiceId;
    option.textContent = voice.name;
    return option;
  });
  select.replaceChildren(keep, ...options);
  $("gen-voice-field").hidden = voices.length === 0;
}

async function onAuth(event) {
  event.preventDefault();
  const form = $("auth-form");
  const action = event.submitter && event.submitter.value === "register" ? "register" : "login";
  clearErrors(form);
  const email = $("auth-email").value.trim();
  const password = $("auth-password").value;
  try {
    await signIn(action, email, password);
  } catch (err) {
    showError(form, err);
  }
}

function generationBody() {
  const form = $("generate-form");
  const body = {};
  for (const control of form.querySelectorAll("[data-field]")) {
    if (control.closest("[hidden]")) continue;
    const value = control.value.trim();
    if (!value) continue;
    body[control.dataset.field] = control.type === "number" ? Number(value) : value;
  }
  return body;
}

async function onGenerate(event) {
  event.preventDefault();
  const form = $("generate-form");
  clearErrors(form);
  const button = event.submitter;
  if (button) button.disabled = true;
  try {
    const queued = await request("POST", "generate-content", { body: generationBody() });
    $("gen-prompt").value = "";
    notify("Job queued.");
    await fetchJob(queued.jobId);
  } catch (err) {
    if (err instanceof ApiError) showError(form, err);
    else throw err;
  } finally {
    if (button) button.disabled = false;
  }
}

function boot() {
  onSession((session) => {
    if (session && !signedIn) enter(session);
    else if (!session && signedIn) {
      leave();
      notify("You are signed out.");
    }
  });
  setHooks({ open: (jobId) => openResult(jobId).catch((err) => notify(err.message)), notify, changed: jobChanged });
  setUpResult();
  setUpLibrary();
  $("auth-form").addEventListener("submit", onAuth);
  $("generate-form").addEventListener("submit", onGenerate);
  $("sign-out").addEventListener("click", () => signOut().catch(() => {}));
  for (const tab of document.querySelectorAll("#nav .tab")) {
    tab.addEventListener("click", () => showView(tab.dataset.view));
  }
  // A console session survives a reload through its refresh cookie.
  refresh().catch(() => {
    if (!signedIn) showView("auth");
  });
}

boot();
