// The library: saved contents, searched and filtered by the API (GET contents with
// q / contentType / tag, cursor pages), edited (title, body, tags), deleted after an
// in-page confirmation, exported (CSV, JSON Lines, Markdown). Against an API without
// the library's search (GET contents answers a plain array) it says so and shows nothing.

import { request } from "./api.js";
import { clearErrors, showError } from "./forms.js";
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
let cursor = null;
let filters = {};
let available = true;

function el(tag, { text, cls, attrs } = {}) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function say(text) {
  $("library-message").textContent = text;
}

export function resetLibrary() {
  cursor = null;
  filters = {};
  $("contents").replaceChildren();
  $("library-form").reset();
  $("library-more").hidden = true;
  $("library-empty").hidden = true;
  say("");
}

function query() {
  const params = new URLSearchParams({ limit: "20" });
  for (const [name, value] of Object.entries(filters)) if (value) params.set(name, value);
  if (cursor) params.set("cursor", cursor);
  return `contents?${params}`;
}

export async function loadLibrary(fromStart = true) {
  const form = $("library-form");
  if (fromStart) {
    cursor = null;
    $("contents").replaceChildren();
  }
  clearErrors(form);
  let page;
  try {
    page = await request("GET", query());
  } catch (err) {
    showError(form, err);
    return;
  }
  if (Array.isArray(page)) {
    // An API from before the library's search: no cursor, no search, no editing.
    available = false;
    $("library-tools").hidden = true;
    say("This server's API has no content library search yet (GET /contents answers a plain list); update smartgen to search, edit and export saved content.");
    return;
  }
  available = true;
  $("library-tools").hidden = false;
  say("");
  for (const item of page.items || []) $("contents").append(row(item));
  cursor = page.nextCursor || null;
  $("library-more").hidden = !cursor;
  $("library-empty").hidden = $("contents").children.length > 0;
}

function row(item) {
  const li = el("li", { cls: "content", attrs: { id: `content-${item.contentId}`, "data-content-id": item.contentId } });
  show(li, item);
  return li;
}

function show(li, item) {
  const titleId = `content-${item.contentId}-title`;
  const parts = [el("h2", { text: item.title, attrs: { id: titleId } })];
  const meta = `${item.contentType} · saved ${new Date(item.createdAt).toLocaleString()}`;
  parts.push(el("p", { cls: "muted", text: meta }));
  if (item.tags && item.tags.length) {
    const tags = el("ul", { cls: "tags", attrs: { "aria-label": "Tags" } });
    for (const tag of item.tags) tags.append(el("li", { text: tag }));
    parts.push(tags);
  }
  const details = el("details");
  details.append(el("summary", { text: "Show the text" }));
  const body = el("div", { cls: "markdown" });
  renderMarkdown(body, item.body);
  details.append(body);
  parts.push(details);
  const actions = el("div", { cls: "actions wrap" });
  const edit = el("button", { text: "Edit", cls: "secondary", attrs: { type: "button", "aria-describedby": titleId } });
  edit.addEventListener("click", () => editor(li, item));
  const remove = el("button", { text: "Delete", cls: "danger", attrs: { type: "button", "aria-describedby": titleId } });
  remove.addEventListener("click", () => confirmDelete(li, item, actions));
  actions.append(edit, remove);
  parts.push(actions);
  li.replaceChildren(...parts);
}

function field(id, label, control, name) {
  const wrap = el("div", { cls: "field" });
  control.id = id;
  control.dataset.field = name;
  control.setAttribute("aria-describedby", `${id}-error`);
  wrap.append(el("label", { text: label, attrs: { for: id } }), control, el("p", { cls: "field-error", attrs: { id: `${id}-error` } }));
  return wrap;
}

function editor(li, item) {
  const id = `edit-content-${item.contentId}`;
  const form = el("form", { attrs: { novalidate: "" } });
  const title = el("input", { attrs: { maxlength: "200" } });
  title.value = item.title;
  const body = el("textarea", { attrs: { rows: "8" } });
  body.value = item.body;
  const tags = el("input", { attrs: { placeholder: "comma, separated" } });
  tags.value = (item.tags || []).join(", ");
  const save = el("button", { text: "Save changes", attrs: { type: "submit" } });
  const discard = el("button", { text: "Discard", cls: "secondary", attrs: { type: "button" } });
  discard.addEventListener("click", () => {
    show(li, item);
    li.querySelector("button")?.focus();
  });
  const actions = el("div", { cls: "actions" });
  actions.append(save, discard);
  form.append(
    el("h2", { text: `Edit “${item.title}”` }),
    field(`${id}-title`, "Title", title, "title"),
    field(`${id}-body`, "Body", body, "body"),
    field(`${id}-tags`, "Tags", tags, "tags"),
    el("p", { cls: "form-error", attrs: { role: "alert" } }),
    actions,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const changes = {
      title: title.value.trim(),
      body: body.value,
      tags: tags.value.split(",").map((t) => t.trim()).filter(Boolean),
    };
    try {
      const updated = await request("PATCH", `contents/${encodeURIComponent(item.contentId)}`, { body: changes });
      Object.assign(item, updated);
      show(li, item);
      say(`Saved “${item.title}”.`);
      li.querySelector("button")?.focus();
    } catch (err) {
      showError(form, err);
    }
  });
  li.replaceChildren(form);
  title.focus();
}

function confirmDelete(li, item, actions) {
  const box = el("div", { cls: "confirm", attrs: { role: "group", "aria-label": "Confirm deletion" } });
  box.append(el("p", { text: `Delete “${item.title}” for good?` }));
  const yes = el("button", { text: "Yes, delete", cls: "danger", attrs: { type: "button" } });
  const no = el("button", { text: "Keep it", cls: "secondary", attrs: { type: "button" } });
  const row = el("div", { cls: "actions" });
  row.append(yes, no);
  box.append(row);
  no.addEventListener("click", () => {
    box.remove();
    actions.hidden = false;
    actions.querySelector("button")?.focus();
  });
  yes.addEventListener("click", async () => {
    try {
      await request("DELETE", `contents/${encodeURIComponent(item.contentId)}`);
      li.remove();
      say(`Deleted “${item.title}”.`);
      $("library-empty").hidden = $("contents").children.length > 0;
      $("lib-search").focus();
    } catch (err) {
      say(err.message);
    }
  });
  actions.hidden = true;
  actions.after(box);
  no.focus();
}

async function exportAs(format) {
  try {
    const response = await request("GET", `contents/export?format=${encodeURIComponent(format)}`, { raw: true });
    const blob = await response.blob();
    const disposition = response.headers.get("Content-Disposition") || "";
    const named = /filename="?([^";]+)"?/.exec(disposition);
    const extension = { csv: "csv", jsonl: "jsonl", markdown: "md" }[format];
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = named ? named[1] : `smartgen-library.${extension}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    say(`Exported as ${link.download}.`);
  } catch (err) {
    say(err.message);
  }
}

export function setUpLibrary() {
  $("library-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData($("library-form"));
    filters = { q: data.get("q").trim(), contentType: data.get("contentType"), tag: data.get("tag").trim() };
    loadLibrary(true);
  });
  $("library-more").addEventListener("click", () => loadLibrary(false));
  for (const b of document.querySelectorAll("[data-export]")) {
    b.addEventListener("click", () => exportAs(b.dataset.export));
  }
}

export function libraryAvailable() {
  return available;
}
