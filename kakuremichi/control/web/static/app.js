// kakuremichi web UI: live status over server-sent events, copy buttons. No dependencies, no build step.
"use strict";

function applyStatus(snapshot) {
  const announcer = document.getElementById("announcer");
  for (const [key, fields] of Object.entries(snapshot)) {
    for (const element of document.querySelectorAll(`[data-live="${CSS.escape(key)}"]`)) {
      const field = element.dataset.field;
      if (!(field in fields) || element.textContent === fields[field]) continue;
      if (field === "status") {
        element.className = `badge badge-${fields.status}`;
        if (announcer) announcer.textContent = `${fields.name} is now ${fields.status}`;
      }
      element.textContent = fields[field];
    }
  }
}

function noticeListChanges(snapshot) {
  const list = document.querySelector("[data-live-list]");
  if (!list) return;
  const prefix = `${list.dataset.liveList}-`;
  const shown = new Set([...list.querySelectorAll("[data-live]")].map((element) => element.dataset.live));
  const current = Object.keys(snapshot).filter((key) => key.startsWith(prefix));
  const changed = current.length !== shown.size || current.some((key) => !shown.has(key));
  document.getElementById("list-changed").hidden = !changed;
}

function followStatus() {
  if (!document.querySelector("[data-live], [data-live-list]") || !window.EventSource) return;
  const source = new EventSource("/events");
  source.addEventListener("status", (event) => {
    const snapshot = JSON.parse(event.data);
    applyStatus(snapshot);
    noticeListChanges(snapshot);
  });
}

async function copy(button) {
  const source = document.getElementById(button.dataset.copy);
  const isInput = source instanceof HTMLInputElement;
  try {
    await navigator.clipboard.writeText(isInput ? source.value : source.textContent);
  } catch (error) {  // no clipboard API (plain http on a remote host): select and use the legacy command
    if (isInput) {
      source.select();
    } else {
      const range = document.createRange();
      range.selectNodeContents(source);
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
    }
    document.execCommand("copy");
  }
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = label; }, 1500);
}

document.addEventListener("DOMContentLoaded", () => {
  followStatus();
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", () => copy(button));
  }
});
