// The ingot dashboard: sign-in, then live panels for one environment, refreshed by polling /api/v1.
// Everything from the API is put on the page as text (see dom.js): nothing is ever parsed as HTML.

import {ApiError, Unauthorized, call, follow, forgetToken, get, post, setToken, token} from "./api.js";
import {findByKey, h, replaceKeepingFocus, setText, when} from "./dom.js";
import * as panels from "./panels.js";

const $ = (id) => document.getElementById(id);

const LIVE_MS = 1000; // services, traffic and rollouts
const HISTORY_MS = 5000; // deployments and the newest ledger page
const VERIFY_MS = 30000; // the ledger's hash chain and signatures, checked again this often
const VERIFY_SOON_MS = 8000; // ... or this soon after the ledger grew
const DRIFT_MS = 60000; // drift detection walks every instance: not every second
const LEDGER_PAGE = 20;

const state = {
  generation: 0, // bumped on sign-out and on a change of environment: stale answers are dropped
  timers: new Map(),
  environments: [],
  env: null,
  signature: "",
  announced: null,
  ledger: {before: null, back: [], first: null, last: null, newest: null},
  verifiedAt: 0,
  verifiedNewest: null,
  deployments: [],
  live: new Map(), // service -> its live release, from the last overview
  details: new Map(), // deployment id -> {outcome, detail} for the steps shown under the history
  busy: false,
  pollProblems: new Map(), // loop name -> what went wrong with its last refresh
};

// ---- signing in and out -----------------------------------------------------------------------
function showSignIn(message) {
  stopPolling();
  $("dashboard").hidden = true;
  $("session-bar").hidden = true;
  $("sign-in").hidden = false;
  setText($("sign-in-error"), message || "");
  const input = $("token-input");
  input.setAttribute("aria-invalid", message ? "true" : "false");
  input.focus();
}

function signedOut(message) {
  forgetToken();
  closeDialog();
  showSignIn(message);
}

async function onSignIn(event) {
  event.preventDefault();
  const input = $("token-input");
  const value = input.value.trim();
  if (!value) {
    showSignIn("Enter the API token: 'ingot token show' prints it.");
    return;
  }
  if (/[^\x21-\x7e]/.test(value)) {
    showSignIn("That is not a token: a token has letters, digits, '-' and '_' only.");
    return;
  }
  const button = $("sign-in-submit");
  button.disabled = true;
  setText($("sign-in-error"), "");
  try {
    const environments = await call("environments", {authToken: value});
    setToken(value);
    input.value = "";
    input.setAttribute("aria-invalid", "false");
    await start(environments, true);
  } catch (err) {
    if (err instanceof Unauthorized) {
      showSignIn(`That token was not accepted (${err.message}). Check it and try again.`);
    } else {
      showSignIn(`Could not sign in: ${err.message}`);
    }
  } finally {
    button.disabled = false;
  }
}

// ---- starting, polling, stopping ------------------------------------------------------------------
async function start(environments, justSignedIn) {
  let envs = environments;
  if (!envs) {
    try {
      envs = await get("environments");
    } catch (err) {
      if (err instanceof Unauthorized) {
        signedOut("The saved token is no longer accepted (it may have been rotated). Sign in again.");
      } else {
        showSignIn(`Could not load the dashboard: ${err.message}`);
      }
      return;
    }
  }
  state.environments = envs.environments;
  setText($("project-name"), envs.project);
  document.title = `${envs.project} · ingot`;
  const wanted = new URLSearchParams(location.search).get("env") || sessionStorage.getItem("ingot.env");
  state.env = envs.environments.includes(wanted) ? wanted : envs.default;
  const select = $("env-select");
  select.replaceChildren(...envs.environments.map((name) => h("option", {value: name}, name)));
  select.value = state.env;
  $("sign-in").hidden = true;
  $("dashboard").hidden = false;
  $("session-bar").hidden = false;
  if (justSignedIn) $("main").focus();
  startPolling();
}

function startPolling() {
  stopPolling();
  const generation = state.generation;
  state.signature = "";
  state.announced = null;
  state.verifiedAt = 0;
  state.deployments = [];
  state.live = new Map();
  state.details.clear();
  state.pollProblems.clear();
  setText($("connection"), "");
  for (const id of ["services", "rollouts", "history", "drift"]) {
    $(id).replaceChildren(h("p", {class: "muted"}, "Loading…"));
  }
  setText($("rollout-announcer"), "");
  every("live", LIVE_MS, () => refreshLive(generation), generation);
  every("history", HISTORY_MS, () => refreshHistory(generation), generation);
  every("drift", DRIFT_MS, () => refreshDrift(generation), generation);
}

function stopPolling() {
  state.generation += 1;
  for (const timer of state.timers.values()) clearTimeout(timer);
  state.timers.clear();
}

/** Run `task` now and then `ms` after each run ends (never two at once); skip runs while the tab is hidden. */
function every(name, ms, task, generation) {
  const tick = async () => {
    if (generation !== state.generation) return;
    if (!document.hidden) {
      try {
        await task();
        pollProblem(name, null);
      } catch (err) {
        if (generation !== state.generation) return;
        if (err instanceof Unauthorized) {
          failed(err);
          return;
        }
        if (err.name !== "AbortError") pollProblem(name, err);
      }
    }
    if (generation !== state.generation) return;
    state.timers.set(name, setTimeout(tick, ms));
  };
  tick();
}

const POLLED = {live: "The live view", history: "The history and the ledger", drift: "Drift"};

/** A refresh that failed says so once (the alert is not rewritten while the message stays the same),
 * and the message goes away when that refresh works again. */
function pollProblem(name, err) {
  if (err) {
    const unreachable = err instanceof ApiError && err.status === 0;
    state.pollProblems.set(name, unreachable ? `${capitalise(err.message)}: retrying.`
      : `${POLLED[name] || name} could not be refreshed: ${err.message}`);
  } else {
    state.pollProblems.delete(name);
  }
  const text = [...new Set(state.pollProblems.values())].join(" ");
  const box = $("connection");
  if (box.textContent !== text) setText(box, text);
}

async function guarded(task) {
  try {
    await task();
    return true;
  } catch (err) {
    failed(err);
    return false;
  }
}

function failed(err) {
  if (err instanceof Unauthorized) {
    signedOut("The server no longer accepts the token (it may have been rotated with 'ingot token rotate'). "
      + "Sign in again.");
  } else if (err && err.name !== "AbortError") {
    showProblem(err.message || String(err), err.details || []);
  }
}

const capitalise = (text) => text.charAt(0).toUpperCase() + text.slice(1);

// ---- the panels ---------------------------------------------------------------------------------
async function refreshLive(generation) {
  const overview = await get("overview", {environment: state.env});
  if (generation !== state.generation) return;
  const dashboard = $("dashboard");
  dashboard.dataset.refreshes = String(Number(dashboard.dataset.refreshes || 0) + 1);
  $("live-updated").replaceChildren("Last update: ", when(Date.now() / 1000), ".");
  const agent = overview.agent || {};
  setText($("agent-state"), agent.running ? `agent running (pid ${agent.pid})` : "agent not running");
  $("agent-state").classList.toggle("bad", !agent.running);
  replaceKeepingFocus($("services"), panels.services(overview.services, state.env, {
    deploy: askDeploy, promote: askPromote, targets: state.environments.filter((e) => e !== state.env)}));
  replaceKeepingFocus($("rollouts"), panels.rollouts(overview.rollouts, state.env, rolloutActions));
  const live = new Map(overview.services.map((s) => [s.service, s.release]));
  const liveChanged = JSON.stringify([...live]) !== JSON.stringify([...state.live]);
  state.live = live;
  if (liveChanged && state.deployments.length) renderHistory();
  announce(overview.rollouts);
  // Something moved (a release went live, a step began or ended): the slower panels follow at once.
  const signature = JSON.stringify(overview.rollouts.map((r) => [
    r.service, r.release, r.deployment && r.deployment.id, r.deployment && r.deployment.step_number,
    r.verifying && r.verifying.deployment]));
  if (state.signature && signature !== state.signature) {
    refreshHistory(generation).then(() => pollProblem("history", null),
      (err) => (err instanceof Unauthorized ? failed(err) : pollProblem("history", err)));
  }
  state.signature = signature;
}

function announce(rollouts) {
  const text = rollouts.map(panels.rolloutSummary).join(" ");
  if (state.announced !== null && text !== state.announced) setText($("rollout-announcer"), text);
  state.announced = text;
}

async function refreshHistory(generation) {
  const [deployments, page] = await Promise.all([
    get("deployments", {environment: state.env, limit: 50}),
    state.ledger.before === null ? get("ledger", {tail: true, limit: LEDGER_PAGE}) : null,
  ]);
  if (generation !== state.generation) return;
  state.deployments = deployments;
  await refreshOpenDetails(deployments, generation);
  renderHistory();
  if (page) renderLedger(page);
  // Verifying reads the whole ledger: again when it grew, but not more often than every VERIFY_SOON_MS.
  const since = Date.now() - state.verifiedAt;
  if (since > VERIFY_MS || (state.ledger.newest !== state.verifiedNewest && since > VERIFY_SOON_MS)) {
    await verifyLedger(generation);
  }
}

function renderHistory() {
  replaceKeepingFocus($("history"), panels.history(state.deployments, state.env, {
    rollback: askRollback,
    live: state.live,
    details: state.details,
    toggled: onDetailsToggled,
  }));
}

async function onDetailsToggled(id, open) {
  if (!open || state.details.has(id)) return;
  const generation = state.generation;
  await guarded(async () => {
    const detail = await get(`deployments/${encodeURIComponent(id)}`);
    if (generation !== state.generation) return;
    state.details.set(id, detail);
    renderHistory();
  });
}

async function refreshOpenDetails(deployments, generation) {
  // Steps shown for a deployment still running go stale: fetch them again with the history.
  for (const row of deployments) {
    const cached = state.details.get(row.deployment);
    if (cached && cached.outcome !== row.outcome || cached && row.outcome === "running") {
      const detail = await get(`deployments/${encodeURIComponent(row.deployment)}`);
      if (generation !== state.generation) return;
      state.details.set(row.deployment, detail);
    }
  }
}

async function refreshDrift(generation) {
  const box = $("drift");
  box.setAttribute("aria-busy", "true");
  try {
    const findings = await get("drift", {environment: state.env});
    if (generation !== state.generation) return;
    replaceKeepingFocus(box, panels.drift(findings, state.env));
  } catch (err) {
    if (err instanceof Unauthorized || (err instanceof ApiError && err.status === 0)) throw err;
    if (generation !== state.generation) return;
    replaceKeepingFocus(box, h("p", {class: "problem"}, `Drift could not be checked: ${err.message}`),
      panels.detailList(err.details || []));
  } finally {
    box.removeAttribute("aria-busy");
  }
}

// ---- the ledger -------------------------------------------------------------------------------
function renderLedger(page) {
  const entries = page.entries;
  const ledger = state.ledger;
  ledger.first = entries.length ? entries[0].seq : null;
  ledger.last = entries.length ? entries[entries.length - 1].seq : null;
  ledger.older = Boolean(page.older);
  if (ledger.before === null) ledger.newest = ledger.last;
  replaceKeepingFocus($("ledger"), panels.ledger(entries));
  const where = ledger.before === null ? "the newest" : "older ones";
  setText($("ledger-range"), entries.length
    ? `Entries ${ledger.last} down to ${ledger.first} (${where}).` : "The ledger has no entries yet.");
  setEnabled($("ledger-older"), ledger.older);
  setEnabled($("ledger-newer"), ledger.before !== null);
  setEnabled($("ledger-newest"), ledger.before !== null);
}

// aria-disabled keeps the button focusable: a keyboard user paging does not lose their place at the end.
function setEnabled(button, enabled) {
  button.setAttribute("aria-disabled", enabled ? "false" : "true");
}

const enabled = (button) => button.getAttribute("aria-disabled") !== "true";

async function showLedgerPage(before) {
  const generation = state.generation;
  await guarded(async () => {
    const page = before === null
      ? await get("ledger", {tail: true, limit: LEDGER_PAGE})
      : await get("ledger", {before, limit: LEDGER_PAGE});
    if (generation !== state.generation) return;
    state.ledger.before = before;
    renderLedger(page);
  });
}

function ledgerOlder() {
  if (!enabled($("ledger-older")) || state.ledger.first === null) return;
  state.ledger.back.push(state.ledger.before);
  showLedgerPage(state.ledger.first);
}

function ledgerNewer() {
  if (!enabled($("ledger-newer"))) return;
  const back = state.ledger.back.pop();
  showLedgerPage(back === undefined ? null : back);
}

function ledgerNewest() {
  if (!enabled($("ledger-newest"))) return;
  state.ledger.back = [];
  showLedgerPage(null);
}

async function verifyLedger(generation) {
  const report = await get("ledger/verify");
  if (generation !== state.generation) return;
  state.verifiedAt = Date.now();
  state.verifiedNewest = state.ledger.newest;
  const box = $("ledger-verify");
  const next = panels.verification(report);
  // Only a change is written: the status role would read the same sentence out every time otherwise.
  if (box.dataset.text !== next.text) {
    box.dataset.text = next.text;
    box.className = `verify ${report.ok ? "ok" : "bad"}`;
    box.dataset.ok = report.ok ? "true" : "false";
    box.replaceChildren(...next.nodes);
  }
}

// ---- actions ------------------------------------------------------------------------------------
function showNotice(text) {
  setText($("problem"), "");
  setText($("notice"), text);
}

function showProblem(text, details) {
  setText($("notice"), "");
  const box = $("problem");
  box.replaceChildren(h("p", {}, text), panels.detailList(details || []));
}

function askRollback(row, fromRelease) {
  const env = state.env;
  confirmAction({
    title: `Roll back ${row.service} in ${env}?`,
    body: [
      h("p", {}, `Release ${row.release} of ${row.service} goes live again in ${env}, on fresh instances `
        + `that must pass the health gate before traffic moves to them.`),
      h("p", {}, fromRelease ? `It replaces release ${fromRelease}, which is live now.`
        : `Nothing of ${row.service} is live in ${env} now.`),
    ],
    confirmLabel: `Roll back to ${row.release}`,
    focusKey: `rollback:${row.service}:${row.release}`,
    fallback: $("history-title"),
    action: () => act(`Rolling back ${row.service} in ${env} to ${row.release}…`, async () => {
      const end = await runOperation(`Rollback of ${row.service} in ${env} to ${row.release}`,
        post("rollback", {environment: env, service: row.service, to: row.release}));
      const outcome = end.result[0] || {};
      return `Rolled back ${row.service} in ${env}: release ${outcome.release} is live`
        + (outcome.deployment ? ` (deployment ${outcome.deployment}).` : ".");
    }, `Rollback of ${row.service} to ${row.release} failed`),
  });
}

function askDeploy(item) {
  const env = state.env;
  const service = item.service;
  confirmAction({
    title: `Deploy ${service} to ${env}?`,
    body: [
      h("p", {}, `The server builds ${service} from its spec and files as they are now, makes a signed release `
        + `of it (or reuses the release of an unchanged build) and deploys it to ${env} on fresh instances, `
        + "which must pass the health gate before traffic moves to them."),
      h("p", {}, item.release ? `Release ${item.release} is live now; it keeps serving if the deploy fails.`
        : `Nothing of ${service} is live in ${env} now.`),
    ],
    confirmLabel: `Deploy ${service}`,
    danger: false,
    focusKey: `deploy:${service}`,
    fallback: $("services-title"),
    action: () => act(`Deploying ${service} to ${env}…`, async () => {
      const end = await runOperation(`Deploy of ${service} to ${env}`,
        post("deploy", {environment: env, service}));
      const outcome = end.result[0] || {};
      return outcome.nothing_changed
        ? `Nothing changed: release ${outcome.release} of ${service} already serves ${env}.`
        : `Deployed ${service} to ${env}: release ${outcome.release} is live (deployment ${outcome.deployment}).`;
    }, `Deploy of ${service} to ${env} failed`),
  });
}

function askPromote(item, target) {
  const env = state.env;
  const service = item.service;
  confirmAction({
    title: `Promote ${service} from ${env} to ${target}?`,
    body: [
      h("p", {}, `The artifact of release ${item.release}, live in ${env}, is deployed to ${target} with `
        + `${target}'s own configuration, through the same health gate.`),
      h("p", {}, `Refused unless ${service} is healthy and verified in ${env}.`),
    ],
    confirmLabel: `Promote ${service} to ${target}`,
    danger: false,
    focusKey: `promote:${service}:${target}`,
    fallback: $("services-title"),
    action: () => act(`Promoting ${service} from ${env} to ${target}…`, async () => {
      const end = await runOperation(`Promotion of ${service} from ${env} to ${target}`,
        post("promote", {source: env, target, service}));
      const outcome = end.result[0] || {};
      return `Promoted ${service} to ${target}: release ${outcome.release} is live`
        + (outcome.deployment ? ` (deployment ${outcome.deployment}).` : ".");
    }, `Promotion of ${service} to ${target} failed`),
  });
}

/** A deploy, rollback or promote the server answered with an operation: its progress shown line by line
 * from the event stream, until it ends. Returns the final event; an operation that did not succeed throws. */
async function runOperation(title, starting) {
  const started = await starting;
  const box = $("operation");
  const log = $("operation-log");
  setText($("operation-title"), `${title} (operation ${started.id})`);
  log.replaceChildren();
  box.hidden = false;
  box.dataset.operation = started.id;
  box.dataset.state = "running";
  const line = (text, kind) => {
    if (text !== null) log.appendChild(h("li", kind ? {class: kind} : {}, text));
  };
  const end = await follow(started.id, (event) => line(panels.operationLine(event)));
  box.dataset.state = end.state;
  line(panels.operationLine(end), end.state === "succeeded" ? "ok" : "bad");
  if (end.state !== "succeeded") {
    const error = end.error || {};
    throw new ApiError(0, error.message || `it ended ${end.state}`, error.details || []);
  }
  return end;
}

function rolloutActions(item, action) {
  const env = state.env;
  const service = item.service;
  const run = () => act(`${capitalise(panels.verb(action))} the rollout of ${service} in ${env}…`, async () => {
    await post(action, {environment: env, service});
    return `${capitalise(panels.pastTense(action))} the rollout of ${service} in ${env}.`;
  }, `Could not ${action} the rollout of ${service}`);
  if (action !== "abort") {
    run();
    return;
  }
  const dep = item.deployment || {};
  confirmAction({
    title: `Abort the rollout of ${service} in ${env}?`,
    body: [h("p", {}, `All traffic goes back to release ${dep.from || "the stable release"} at once, and the `
      + `instances of ${dep.release || "the new release"} are retired.`)],
    confirmLabel: "Abort the rollout",
    focusKey: `control:${service}:abort`,
    fallback: $("rollouts-title"),
    action: run,
  });
}

async function act(progress, task, failure) {
  if (state.busy) {
    showProblem("Another action is still running; wait for its result first.", []);
    return;
  }
  state.busy = true;
  document.body.classList.add("busy");
  showNotice(progress);
  try {
    showNotice(await task());
  } catch (err) {
    if (err instanceof Unauthorized) {
      failed(err);
      return;
    }
    showProblem(`${failure}: ${err.message}`, err.details || []);
  } finally {
    state.busy = false;
    document.body.classList.remove("busy");
  }
  const generation = state.generation;
  await guarded(() => refreshLive(generation));
  await guarded(() => refreshHistory(generation));
}

// ---- the confirmation dialog ---------------------------------------------------------------------
let pending = null;

function confirmAction({title, body, confirmLabel, focusKey, fallback, action, danger = true}) {
  const dialog = $("confirm");
  if (dialog.open) return;
  setText($("confirm-title"), title);
  $("confirm-body").replaceChildren(...body);
  setText($("confirm-ok"), confirmLabel);
  $("confirm-ok").className = danger ? "danger" : "primary";
  pending = {focusKey, fallback, action};
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus(); // the safe choice first: Enter on an opened dialog does nothing harmful
}

function closeDialog() {
  pending = null;
  const dialog = $("confirm");
  if (dialog.open) dialog.close("cancel");
}

function onDialogClosed() {
  const dialog = $("confirm");
  const done = pending;
  pending = null;
  if (!done) return;
  // Back to the button that opened it: found by key, since the list may have been redrawn meanwhile.
  const opener = findByKey(document, "*", done.focusKey) || done.fallback;
  if (opener) opener.focus();
  if (dialog.returnValue === "confirm") done.action();
}

// ---- wiring -------------------------------------------------------------------------------------
function onEnvironmentChange() {
  const select = $("env-select");
  state.env = select.value;
  sessionStorage.setItem("ingot.env", state.env);
  const url = new URL(location.href);
  url.searchParams.set("env", state.env);
  history.replaceState(null, "", url);
  showNotice(`Showing ${state.env}.`);
  startPolling();
}

function init() {
  $("sign-in-form").addEventListener("submit", onSignIn);
  $("sign-out").addEventListener("click", () => {
    signedOut("Signed out. The token was removed from this tab.");
  });
  $("env-select").addEventListener("change", onEnvironmentChange);
  $("confirm").addEventListener("close", onDialogClosed);
  $("drift-refresh").addEventListener("click", () => {
    const generation = state.generation;
    guarded(() => refreshDrift(generation));
  });
  $("ledger-verify-again").addEventListener("click", () => {
    const generation = state.generation;
    $("ledger-verify").dataset.text = "";
    guarded(() => verifyLedger(generation));
  });
  $("ledger-older").addEventListener("click", ledgerOlder);
  $("ledger-newer").addEventListener("click", ledgerNewer);
  $("ledger-newest").addEventListener("click", ledgerNewest);
  if (token()) start(null, false);
  else showSignIn("");
}

init();
