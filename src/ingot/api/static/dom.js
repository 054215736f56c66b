// Building the page from API data without ever parsing it as HTML: every value goes in as text.

/**
 * h("td", {class: "num", dataset: {release: id}}, "text", childNode, [more, children])
 * Attributes are set with setAttribute (or as properties for the few listed below); children that are
 * strings or numbers become text nodes. There is no way to pass markup through here, on purpose.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") {
      for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    } else if (name === "on") {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else if (name === "style") {
      for (const [k, v] of Object.entries(value)) el.style.setProperty(k, String(v));
    } else if (name === "hidden" || name === "disabled" || name === "open") {
      el[name] = Boolean(value);
    } else if (name.startsWith("on")) {
      throw new Error(`h(): use {on: {...}} for event handlers, not ${name}`);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Put text in an element (replacing whatever was there). */
export function setText(el, text) {
  el.textContent = text === null || text === undefined ? "" : String(text);
}

/**
 * Replace a container's content, keeping keyboard focus where it was: the element that had focus is
 * found again in the new content by its data-focus-key, so a refresh every second does not throw a
 * keyboard user back to the top of the page.
 */
export function replaceKeepingFocus(container, ...children) {
  const fresh = document.createElement(container.tagName);
  append(fresh, children);
  // Disclosures the reader opened stay open.
  for (const open of container.querySelectorAll("details[open][data-focus-key]")) {
    const again = findByKey(fresh, "details", open.dataset.focusKey);
    if (again) again.open = true;
  }
  // Nothing changed: leave the page alone (no flicker, no lost place for a screen reader). The markup is
  // only read here, to compare: it is never written from a string.
  if (fresh.innerHTML === container.innerHTML) return;
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.dataset.focusKey : undefined;
  container.replaceChildren(...fresh.childNodes);
  if (key !== undefined) {
    // Gone (a rollout ended, so its buttons did): to the panel's heading rather than lost to the page.
    const section = container.closest("section");
    const again = findByKey(container, "*", key) || (section && section.querySelector("h2[tabindex]"));
    if (again) again.focus({preventScroll: true});
  }
}

export function findByKey(root, selector, key) {
  for (const el of root.querySelectorAll(`${selector}[data-focus-key]`)) {
    if (el.dataset.focusKey === key) return el;
  }
  return null;
}

/** A short release or deployment id, in code style. */
export function code(text) {
  return h("code", {}, text ?? "—");
}

function pad(n) {
  return String(n).padStart(2, "0");
}

/** A time as "2026-11-22 07:45:59" (local), with the exact instant in the datetime attribute. */
export function when(value) {
  if (value === null || value === undefined) return h("span", {}, "—");
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return h("span", {}, String(value));
  const text = `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} `
    + `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  return h("time", {datetime: date.toISOString()}, text);
}

export function percent(rate, digits = 2) {
  if (rate === null || rate === undefined) return "—";
  return `${(rate * 100).toFixed(digits)}%`;
}

export function ms(value) {
  if (value === null || value === undefined) return "—";
  return `${Number(value).toFixed(1)} ms`;
}

export function count(value) {
  if (value === null || value === undefined) return "—";
  return Number(value).toLocaleString("en");
}

/** A stable colour per release, so a release keeps its colour as traffic moves (the text says it too). */
export function hueOf(text) {
  let hash = 0;
  for (const ch of String(text)) hash = (hash * 31 + ch.charCodeAt(0)) % 360;
  return hash;
}
