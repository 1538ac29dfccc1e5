// Validation messages beside the fields they name. Each control that can be named by an
// API error carries `data-field` (the API's field name) and `aria-describedby` pointing
// at its own `<p class="field-error">`, so a screen reader reads the message with it.

export function clearErrors(form) {
  for (const control of form.querySelectorAll("[data-field]")) {
    control.removeAttribute("aria-invalid");
    const slot = errorSlot(control);
    if (slot) slot.textContent = "";
  }
  const general = form.querySelector(".form-error");
  if (general) general.textContent = "";
}

function errorSlot(control) {
  const ids = (control.getAttribute("aria-describedby") || "").split(/\s+/);
  for (const id of ids) {
    const node = id && document.getElementById(id);
    if (node && node.classList.contains("field-error")) return node;
  }
  return null;
}

// Show an `ApiError` on `form`: each detail beside its field (the first such field gets
// the focus), the rest in the form's general message.
export function showError(form, error) {
  clearErrors(form);
  const left = [];
  let first = null;
  for (const detail of error.details || []) {
    const name = String(detail.field || "").split(".")[0];
    const control = name && form.querySelector(`[data-field="${CSS.escape(name)}"]`);
    const slot = control && !control.closest("[hidden]") && errorSlot(control);
    if (slot) {
      control.setAttribute("aria-invalid", "true");
      slot.textContent = slot.textContent ? `${slot.textContent}; ${detail.message}` : detail.message;
      first = first || control;
    } else {
      left.push(`${detail.field}: ${detail.message}`);
    }
  }
  const general = form.querySelector(".form-error");
  if (general && (left.length || !first)) {
    general.textContent = left.length ? left.join("; ") : error.message;
  }
  if (first) first.focus();
}
