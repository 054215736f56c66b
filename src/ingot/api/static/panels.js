// The dashboard's panels as DOM built from API data (text only, see dom.js). Pure: data in, nodes out.

import {code, count, h, hueOf, ms, percent, when} from "./dom.js";

const VERBS = {resume: "resuming", pause: "pausing", abort: "aborting"};
const PAST = {resume: "resumed", pause: "paused", abort: "aborted"};
export const verb = (action) => VERBS[action] || action;
export const pastTense = (action) => PAST[action] || action;

export function detailList(details) {
  if (!details || !details.length) return null;
  return h("ul", {class: "details"}, details.map((d) => h("li", {}, String(d))));
}

function badge(text, kind) {
  return h("span", {class: `badge ${kind || ""}`}, text);
}

function empty(text) {
  return h("p", {class: "muted empty"}, text);
}

// ---- services -----------------------------------------------------------------------------------
/** `actions`: {deploy(item), promote(item, target), targets: the other environments}; none while signed out. */
export function services(items, env, actions) {
  if (!items.length) return empty(`No service is deployed in ${env}. 'ingot deploy --env ${env}' deploys one.`);
  return h("table", {class: "data services-table"},
    h("caption", {}, `Services in ${env}`),
    h("thead", {}, h("tr", {},
      h("th", {scope: "col"}, "Service"),
      h("th", {scope: "col"}, "Live release"),
      h("th", {scope: "col"}, "Instances"),
      h("th", {scope: "col"}, "Router"),
      actions ? h("th", {scope: "col"}, "Actions") : null)),
    h("tbody", {}, items.map((item) => serviceRow(item, env, actions))));
}

function serviceActions(item, env, actions) {
  const deploy = h("button", {type: "button", class: "deploy", dataset: {focusKey: `deploy:${item.service}`},
    on: {click: () => actions.deploy(item)}}, `Deploy ${item.service}`);
  // Promotion takes what is live here: nothing live, nothing to promote.
  const promotions = item.release ? actions.targets.map((target) => h("button", {
    type: "button", class: "promote", dataset: {focusKey: `promote:${item.service}:${target}`},
    on: {click: () => actions.promote(item, target)}}, `Promote ${item.service} to ${target}`)) : [];
  return h("td", {class: "service-actions"}, h("div", {class: "controls"}, deploy, promotions));
}

function serviceRow(item, env, actions) {
  const instances = item.instances || [];
  const healthy = instances.filter((i) => i.health === "healthy").length;
  const allWell = instances.length > 0 && healthy === instances.length;
  return h("tr", {dataset: {service: item.service}},
    h("th", {scope: "row"}, item.service),
    h("td", {class: "live-release"}, item.release ? code(item.release) : badge("none", "warn")),
    h("td", {},
      h("p", {class: "instance-summary"}, badge(`${healthy} of ${instances.length} healthy`, allWell ? "ok" : "bad")),
      instances.length ? h("ul", {class: "instances"}, instances.map(instanceItem)) : null),
    h("td", {}, routerCell(item)),
    actions ? serviceActions(item, env, actions) : null);
}

function instanceItem(instance) {
  const ok = instance.health === "healthy";
  return h("li", {dataset: {instance: instance.id}},
    h("span", {class: "instance-id"}, instance.id), " ",
    code(instance.release), " ",
    badge(instance.state, instance.state === "running" ? "" : "bad"), " ",
    badge(instance.health, ok ? "ok" : "bad"));
}

function routerCell(item) {
  const router = item.router || {};
  const url = typeof item.url === "string" && /^https?:\/\//.test(item.url) ? item.url : null;
  return [
    url ? h("a", {href: url, rel: "noreferrer", dataset: {focusKey: `router:${item.service}`}}, url)
      : h("span", {}, item.url || "—"),
    router.listening === false ? h("p", {}, badge("not listening", "bad")) : null,
    (item.routes || []).length ? h("ul", {class: "routes"}, item.routes.map(routeItem)) : null,
  ];
}

// A route on the edge's shared listeners and its certificate: an ACME failure says why and when it is retried.
const CERTIFICATE_KIND = {valid: "ok", renewing: "warn", pending: "warn", failed: "bad"};

function routeItem(route) {
  const acme = route.acme;
  const kind = acme ? CERTIFICATE_KIND[acme.state] || "" : (route.certificate === "missing" ? "bad" : "");
  return h("li", {dataset: {route: route.url}},
    code(route.url), " ",
    badge(acme ? `certificate ${acme.state}` : "certificate", kind), " ",
    h("span", {class: "certificate"}, route.certificate));
}

// ---- traffic and rollouts -------------------------------------------------------------------------
function roleOf(release, item) {
  const dep = item.deployment;
  const window = item.verifying;
  if (dep && release === dep.release) return dep.strategy === "canary" ? "canary (new)" : "new";
  if (dep && release === dep.from) return "stable";
  if (window && release === window.release) return "new, verifying";
  if (window && release === window.previous) return "previous, kept warm";
  if (release === item.release) return "live";
  return "";
}

function orderedReleases(item) {
  const ids = new Set([...Object.keys(item.weights || {}), ...Object.keys(item.stats || {})]);
  const first = [...new Set([item.release, item.deployment && item.deployment.from].filter(Boolean))];
  return [...first.filter((id) => ids.has(id)), ...[...ids].filter((id) => !first.includes(id)).sort()];
}

export function rollouts(items, env, onAction) {
  if (!items.length) return empty(`Nothing runs in ${env}.`);
  return items.map((item) => rollout(item, onAction));
}

function rollout(item, onAction) {
  const dep = item.deployment;
  const id = `rollout-${item.service}`;
  return h("article", {class: `rollout ${dep ? "active" : ""}`, "aria-labelledby": `${id}-title`,
    dataset: {service: item.service}},
  h("h3", {id: `${id}-title`}, item.service),
  h("p", {class: "rollout-state"}, stateLine(item)),
  dep ? stepLine(dep) : null,
  dep && dep.paused_by ? h("p", {class: "paused"}, badge("paused", "warn"),
    ` by ${dep.paused_by}: it waits before its next step until someone resumes it.`) : null,
  item.verifying ? verifyingLine(item.verifying) : null,
  trafficTable(item),
  dep && dep.analysis ? analysis(dep.analysis) : null,
  dep ? controls(item, onAction) : null);
}

function stateLine(item) {
  const dep = item.deployment;
  if (dep) {
    const what = `${dep.strategy || ""} ${dep.kind}`.trim();
    return [badge("in progress", "warn"), ` ${capitalise(what)} ${dep.id}: from `, code(dep.from), " to ",
      code(dep.release), `, started by ${dep.actor}.`];
  }
  if (item.verifying) return [badge("verifying", "warn"), " The switch is done; the new release is being verified."];
  const weights = Object.entries(item.weights || {});
  if (!weights.length) return "Its router is not serving (the agent may be down).";
  return ["No rollout in progress: all traffic goes to ", code(item.release), "."];
}

function stepLine(dep) {
  const step = dep.step;
  const total = dep.steps_total ? ` of ${dep.steps_total}` : "";
  if (!step) return h("p", {class: "step"}, `Step ${dep.step_number || 0}${total}: starting.`);
  const detail = step.detail || {};
  const waiting = detail.manual ? " It waits for an operator: Resume goes on, Abort goes back." : "";
  return h("p", {class: "step"},
    h("strong", {}, `Step ${dep.step_number}${total}:`), " ", detail.description || step.name, ".", waiting);
}

function verifyingLine(window) {
  const until = new Date(window.until);
  const left = Math.max(0, Math.round((until.getTime() - Date.now()) / 1000));
  return h("p", {class: "verifying"}, "Verification window: ", code(window.release), " is being verified until ",
    when(window.until), ` (${left} s left). `,
    window.previous ? ["Release ", code(window.previous), " stays warm, so a rollback now is a traffic switch."] : "");
}

function trafficTable(item) {
  const weights = item.weights || {};
  const stats = item.stats || {};
  const ids = orderedReleases(item);
  if (!ids.length) return null;
  return h("table", {class: "data traffic"},
    h("caption", {}, `Traffic of ${item.service} by release`),
    h("thead", {}, h("tr", {},
      h("th", {scope: "col"}, "Release"),
      h("th", {scope: "col"}, "Share of traffic"),
      h("th", {scope: "col", class: "num"}, "Requests"),
      h("th", {scope: "col", class: "num"}, "5xx"),
      h("th", {scope: "col", class: "num"}, "Error rate"),
      h("th", {scope: "col", class: "num"}, "p99"))),
    h("tbody", {}, ids.map((id) => {
      const weight = Number(weights[id] || 0);
      const s = stats[id] || {};
      const role = roleOf(id, item);
      return h("tr", {dataset: {release: id}},
        h("th", {scope: "row"}, code(id), role ? h("span", {class: "role"}, ` ${role}`) : null),
        h("td", {class: "share"},
          h("span", {class: "bar", "aria-hidden": "true"},
            h("span", {class: "fill", style: {width: `${weight}%`, "--hue": hueOf(id)}})),
          h("span", {class: "weight"}, `${weight}%`)),
        h("td", {class: "num"}, count(s.requests)),
        h("td", {class: "num"}, count(s.errors_5xx)),
        h("td", {class: "num"}, s.requests ? percent(s.errors_5xx / s.requests) : "—"),
        h("td", {class: "num"}, s.requests ? ms(s.p99_ms) : "—"));
    })));
}

function analysis(record) {
  const verdict = record.verdict || {};
  const decision = record.decision || {};
  const numbers = verdict.numbers || {};
  const result = verdict.result || "unknown";
  const kind = result === "pass" ? "ok" : result === "fail" ? "bad" : "warn";
  const row = (name, release) => h("tr", {},
    h("th", {scope: "row"}, `${name} `, code(release)),
    h("td", {class: "num"}, count(numbers[`${name}_requests`])),
    h("td", {class: "num"}, count(numbers[`${name}_errors_5xx`])),
    h("td", {class: "num"}, percent(numbers[`${name}_error_rate`])),
    h("td", {class: "num"}, ms(numbers[`${name}_p99_ms`])));
  return h("div", {class: "analysis"},
    h("h4", {}, "Analysis"),
    h("p", {class: "verdict"}, `Window ${record.window ?? "?"}: `, badge(result, kind),
      decision.action ? ` Next: ${decision.action}${decision.reason ? ` (${decision.reason})` : ""}.` : ""),
    h("table", {class: "data"},
      h("caption", {}, "Numbers of the latest analysis window"),
      h("thead", {}, h("tr", {},
        h("th", {scope: "col"}, "Release"),
        h("th", {scope: "col", class: "num"}, "Requests"),
        h("th", {scope: "col", class: "num"}, "5xx"),
        h("th", {scope: "col", class: "num"}, "Error rate"),
        h("th", {scope: "col", class: "num"}, "p99"))),
      h("tbody", {}, row("canary", record.canary), row("stable", record.stable))),
    detailList(verdict.reasons));
}

function controls(item, onAction) {
  const dep = item.deployment;
  const manual = dep.step && dep.step.detail && dep.step.detail.manual;
  const button = (action, label, extra) => h("button", {
    type: "button", class: extra || "", dataset: {focusKey: `control:${item.service}:${action}`, action},
    on: {click: () => onAction(item, action)},
  }, label);
  return h("div", {class: "controls", role: "group", "aria-label": `Steer the rollout of ${item.service}`},
    manual || dep.paused_by ? button("resume", `Resume ${item.service}`) : null,
    dep.paused_by ? null : button("pause", `Pause ${item.service}`),
    button("abort", `Abort ${item.service}`, "danger"));
}

/** One sentence per service for the live region: what changes step by step, not the counters. */
export function rolloutSummary(item) {
  const weights = orderedReleases(item).map((id) => `${id} ${Number((item.weights || {})[id] || 0)}%`).join(", ");
  const dep = item.deployment;
  if (!dep) {
    return item.verifying ? `${item.service}: verifying ${item.verifying.release}; traffic ${weights}.`
      : `${item.service}: no rollout in progress; traffic ${weights}.`;
  }
  const step = dep.step && dep.step.detail ? dep.step.detail.description : "starting";
  const total = dep.steps_total ? ` of ${dep.steps_total}` : "";
  // Not the analysis verdict: it can change every interval, and this is read out each time it changes.
  const paused = dep.paused_by ? " Paused." : "";
  return `${item.service}: step ${dep.step_number}${total}, ${step}; traffic ${weights}.${paused}`;
}

// ---- release history ---------------------------------------------------------------------------
export function history(rows, env, {rollback, live, details, toggled}) {
  if (!rows.length) return empty(`No deployments in ${env} yet.`);
  const offered = new Set();
  // The live releases are part of what is drawn (the rollback buttons depend on them), so a change redraws.
  return h("table", {class: "data history-table", dataset: {live: JSON.stringify([...live])}},
    h("caption", {}, `Deployments in ${env}, newest first`),
    h("thead", {}, h("tr", {},
      h("th", {scope: "col"}, "Started"),
      h("th", {scope: "col"}, "Service"),
      h("th", {scope: "col"}, "Kind"),
      h("th", {scope: "col"}, "Release"),
      h("th", {scope: "col"}, "From"),
      h("th", {scope: "col"}, "Outcome"),
      h("th", {scope: "col"}, "By"),
      h("th", {scope: "col"}, "Action"))),
    h("tbody", {}, rows.map((row) => {
      const current = live.has(row.service) ? live.get(row.service)
        : (rows.find((r) => r.service === row.service && r.live) || {}).release;
      // One rollback per earlier release that once went live: its newest successful deployment.
      const key = `${row.service}:${row.release}`;
      const canRollBack = row.outcome === "succeeded" && !row.live && row.release !== current && !offered.has(key);
      if (canRollBack) offered.add(key);
      return h("tr", {dataset: {deployment: row.deployment, release: row.release}},
        h("td", {}, when(row.at)),
        h("td", {}, row.service),
        h("td", {}, row.kind),
        h("td", {}, code(row.release), row.live ? [" ", badge("live", "ok")] : null),
        h("td", {}, row.from ? code(row.from) : "—"),
        h("td", {}, outcomeBadge(row.outcome), stepsDisclosure(row, details, toggled)),
        h("td", {}, row.actor),
        h("td", {}, canRollBack ? h("button", {
          type: "button", class: "rollback",
          dataset: {focusKey: `rollback:${row.service}:${row.release}`, release: row.release},
          on: {click: () => rollback(row, current)},
        }, `Roll back to ${row.release}`) : null));
    })));
}

function outcomeBadge(outcome) {
  const kind = outcome === "succeeded" ? "ok" : outcome === "running" ? "warn" : "bad";
  return badge(outcome, kind);
}

function stepsDisclosure(row, details, toggled) {
  const detail = details.get(row.deployment);
  const box = h("details", {class: "steps", dataset: {focusKey: `steps:${row.deployment}`}},
    h("summary", {dataset: {focusKey: `steps-summary:${row.deployment}`}}, "Steps"),
    detail ? stepsList(detail) : h("p", {class: "muted"}, "Loading…"));
  box.addEventListener("toggle", () => toggled(row.deployment, box.open));
  return box;
}

function stepsList(detail) {
  const verdicts = detail.analysis || [];
  return [
    h("ol", {class: "step-list"}, detail.steps.map((s) => h("li", {},
      when(s.at), ` ${s.name} ${s.status}`,
      s.detail && s.detail.description ? `: ${s.detail.description}` : "",
      s.detail && s.detail.error ? `: ${s.detail.error}` : ""))),
    verdicts.length ? h("p", {}, `${verdicts.length} analysis verdict(s); the last: `,
      (verdicts[verdicts.length - 1].verdict || {}).result || "unknown", ".") : null,
  ];
}

// ---- drift --------------------------------------------------------------------------------------
export function drift(findings, env) {
  const checked = ["Checked at ", when(Date.now() / 1000), "."];
  if (!findings.length) {
    return h("p", {class: "ok-text"}, badge("no drift", "ok"),
      ` What runs in ${env} matches the live releases. `, checked);
  }
  return [
    h("p", {}, badge(`${findings.length} finding(s)`, "bad"),
      ` in ${env}. 'ingot reconcile' repairs each one by replacement. `, checked),
    h("ul", {class: "findings"}, findings.map((f) => h("li", {},
      h("strong", {}, f.kind), ` ${f.service}`,
      f.instance ? [": instance ", h("span", {class: "instance-id"}, f.instance)] : "",
      f.release ? [" of ", code(f.release)] : "",
      h("dl", {class: "evidence"}, Object.entries(f.evidence || {}).flatMap(([k, v]) => [
        h("dt", {}, k), h("dd", {}, typeof v === "string" ? v : JSON.stringify(v))])),
      h("p", {class: "repair"}, `Repair: ${f.repair}`)))),
  ];
}

// ---- the ledger ---------------------------------------------------------------------------------
export function ledger(entries) {
  if (!entries.length) return empty("No entries.");
  return h("table", {class: "data ledger-table"},
    h("caption", {}, "Ledger entries, newest first"),
    h("thead", {}, h("tr", {},
      h("th", {scope: "col", class: "num"}, "Seq"),
      h("th", {scope: "col"}, "Time"),
      h("th", {scope: "col"}, "Actor"),
      h("th", {scope: "col"}, "Action"),
      h("th", {scope: "col"}, "Where"),
      h("th", {scope: "col"}, "Subject"),
      h("th", {scope: "col"}, "Details"))),
    h("tbody", {}, [...entries].reverse().map((e) => h("tr", {dataset: {seq: e.seq, action: e.action}},
      h("td", {class: "num"}, e.seq),
      h("td", {}, when(e.at)),
      h("td", {}, e.actor),
      h("td", {class: "action"}, e.action),
      h("td", {class: "where"}, [e.environment, e.service].filter(Boolean).join(" / ") || "—"),
      h("td", {class: "subject"}, e.subject ? code(e.subject) : "—"),
      h("td", {class: "payload-cell"}, payload(e))))));
}

function payload(entry) {
  const text = JSON.stringify(entry.payload ?? {});
  if (text === "{}") return "—";
  const short = text.length > 90 ? `${text.slice(0, 89)}…` : text;
  return h("details", {class: "payload", dataset: {focusKey: `payload:${entry.seq}`}},
    h("summary", {dataset: {focusKey: `payload-summary:${entry.seq}`}}, short),
    h("pre", {}, JSON.stringify(entry.payload, null, 2)));
}

export function verification(report) {
  if (report.ok) {
    const text = `Intact: the hash chain of ${report.entries_checked} entries and the signatures of `
      + `${report.releases_checked} releases check out.`;
    return {text, nodes: [badge("intact", "ok"), ` ${text.slice("Intact: ".length)}`]};
  }
  const problems = report.problems || [];
  const text = `Tampered with: ${problems.length} problem(s). ${problems.join(" ")}`;
  return {text, nodes: [badge("tampered with", "bad"), ` ${problems.length} problem(s) found:`,
    h("ul", {class: "details"}, problems.map((p) => h("li", {}, String(p))))]};
}

function capitalise(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

// ---- an operation's progress (the same lines the CLI prints) --------------------------------------
function operationStepLine(service, event) {
  const label = `[${event.index}/${event.total}] ${(event.step || {}).description || ""}`;
  if (event.status === "started") return `${service}: ${label}…`;
  if (event.status === "done") {
    const seconds = typeof event.seconds === "number" ? ` (${event.seconds.toFixed(2)}s)` : "";
    return `${service}: ✓ ${label}${seconds}`;
  }
  return `${service}: ✗ ${label}: ${event.error || ""}`;
}

/** One event of an operation's stream as a line of text; null for those not shown. */
export function operationLine(event) {
  const service = event.service || "";
  switch (event.event) {
    case "build": return `${service}: building`;
    case "built": return `${service}: artifact ${shortDigest(event.digest)} (${event.reused ? "unchanged, reused" : "built"})`;
    case "release": return `${service}: release ${event.release} (${event.created ? "new, signed" : "already exists"})`;
    case "plan": return `${service}: deployment ${event.deployment}, ${((event.plan || {}).steps || []).length} steps`;
    case "waiting": return `${service}: ${event.message}`;
    case "step": return operationStepLine(service, event);
    case "output": return `  | ${event.line}`;
    case "end": return event.state === "succeeded" ? "Succeeded."
      : `${capitalised(event.state)}: ${(event.error || {}).message || "see the history"}`;
    default: return null;
  }
}

const shortDigest = (digest) => String(digest || "").split(":").pop().slice(0, 12);
const capitalised = (text) => String(text).charAt(0).toUpperCase() + String(text).slice(1);
