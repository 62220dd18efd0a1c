// One task: its facts, its timeline, its steps, and its output — live while it runs.
"use strict";

const MAX_LOG_CHARS = 2_000_000; // while following, older output leaves the page beyond this
const taskId = decodeURIComponent(location.pathname.split("/").pop());
const logView = document.getElementById("log");
const follow = document.getElementById("follow");
const earlier = document.getElementById("earlier");
const encoder = new TextEncoder();
// One streaming decoder per stream: a character split across two fragments is decoded whole.
const liveDecoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
let task = null;
let firstSeq = null; // the oldest fragment on the page
let lastSeq = -1; // the newest
let logChars = 0;
let events = null;

async function main() {
  try {
    task = await api(`/api/tasks/${encodeURIComponent(taskId)}`);
  } catch (error) {
    showNotice(error instanceof ApiError ? error.detail : String(error));
    return;
  }
  render();
  const page = await api(`/api/tasks/${task.id}/logs?tail=true`);
  appendFragments(page.fragments);
  earlier.hidden = !page.more;
  if (TERMINAL.has(task.state)) {
    setLog("the task has ended");
  } else {
    listen();
  }
  setInterval(tick, 1000);
}

// While the task runs, its runtime and its current state's bar grow.
function tick() {
  if (TERMINAL.has(task.state)) return;
  setText("fact-runtime", duration(runtime(task)));
  renderBar();
}

function listen() {
  events = new EventSource(`/api/tasks/${task.id}/logs/stream?after_seq=${lastSeq}`);
  events.addEventListener("open", () => { setLog("following"); setStatus("live"); });
  events.addEventListener("task", (event) => { task = JSON.parse(event.data); render(); });
  events.addEventListener("log", (event) => appendFragments([JSON.parse(event.data)]));
  events.addEventListener("end", () => {
    events.close();
    setLog("the task has ended");
    setStatus("");
  });
  events.addEventListener("error", () => setStatus("reconnecting…", false));
}

// -- facts, timeline, steps ---------------------------------------------------------------

// A task event comes whenever anything changes, output size included: only what changed is
// redrawn, so text selected elsewhere on the page stays selected.
const drawn = {};

function changed(part, value) {
  const json = JSON.stringify(value);
  if (drawn[part] === json) return false;
  drawn[part] = json;
  return true;
}

function setText(id, text) {
  const node = document.getElementById(id);
  if (node.textContent !== text) node.textContent = text;
}

function render() {
  const title = task.name ?? task.id.slice(0, 12);
  if (changed("title", title)) {
    document.title = `Oneshot · ${title}`;
    document.getElementById("crumb").textContent = task.id.slice(0, 12);
    document.getElementById("name").textContent = title;
  }
  if (changed("state", task.state)) {
    document.getElementById("state").replaceWith(Object.assign(badge(task.state), { id: "state" }));
    document.getElementById("cancel").hidden = TERMINAL.has(task.state);
  }
  const facts = [
    ["id", task.id], ["kind", task.kind], [task.kind === "workflow" ? "workflow" : "command", commandLine(task)],
    ["exit", exitText(task.exit_code)], ["attempt", String(task.attempt)],
    ["created", when(task.created_at)], ["started", when(task.started_at)],
    ["finished", when(task.finished_at)], ["runtime", duration(runtime(task))],
    ["output", outputText(task.output)],
  ];
  if (task.error) facts.push(["error", errorText(task.error)]);
  if (changed("facts", facts.map(([key]) => key))) {
    document.getElementById("facts").replaceChildren(...facts.flatMap(([key]) =>
      [el("dt", { textContent: key }), el("dd", { id: `fact-${key}` })]));
  }
  for (const [key, value] of facts) setText(`fact-${key}`, value);
  renderBar();
  if (changed("transitions", task.transitions)) renderTransitions();
  if (changed("steps", task.steps)) renderSteps();
}

function outputText(output) {
  const dropped = output.dropped_bytes ? ` (${output.dropped_bytes} older bytes dropped by retention)` : "";
  return `${output.bytes} bytes in ${output.fragments} fragments${dropped}`;
}

// The span the timeline covers: from creation to the end, or to now while the task runs.
function span() {
  const rows = task.transitions;
  const last = rows[rows.length - 1].at;
  return { start: rows[0].at, end: TERMINAL.has(task.state) ? last : Math.max(Date.now() / 1000, last) };
}

// Each state the task was in is a bar as long as it lasted; the current one grows.
function renderBar() {
  const rows = task.transitions;
  const ended = TERMINAL.has(task.state);
  const { start, end } = span();
  const total = Math.max(end - start, 0.001);
  const bar = document.getElementById("timeline");
  bar.replaceChildren(...rows.map((row, i) => {
    const until = i + 1 < rows.length ? rows[i + 1].at : end;
    const lasted = until - row.at;
    const segment = el("div", {
      className: `segment state-${row.to_state}`,
      title: `${row.to_state} at ${when(row.at, true)}` +
        (i + 1 < rows.length || !ended ? ` for ${duration(lasted)}` : "") +
        (row.reason ? ` — ${row.reason}` : ""),
    }, el("span", { textContent: row.to_state }));
    segment.style.flexGrow = String(lasted / total);
    return segment;
  }));
  document.getElementById("axis-start").textContent = when(start);
  document.getElementById("axis-total").textContent = `${duration(end - start)}${ended ? "" : " so far"}`;
  document.getElementById("axis-end").textContent = ended ? when(end) : "now";
}

// The transitions as a table: when, how long after creation, how long the state lasted, why.
function renderTransitions() {
  const rows = task.transitions;
  const start = rows[0].at;
  document.getElementById("transitions").replaceChildren(...rows.map((row, i) => {
    const until = i + 1 < rows.length ? rows[i + 1].at : null;
    return el("tr", {},
      el("td", { className: "nowrap mono" }, when(row.at, true)),
      el("td", { className: "num" }, duration(row.at - start)),
      el("td", { className: "nowrap" }, row.from_state ? badge(row.from_state) : "", row.from_state ? " → " : "", badge(row.to_state)),
      el("td", { className: "num" }, until === null ? "" : duration(until - row.at)),
      el("td", {}, row.reason ?? ""),
      el("td", { className: "mono muted" }, row.worker ?? ""));
  }));
}

function renderSteps() {
  document.getElementById("steps-section").hidden = task.steps.length === 0;
  document.getElementById("steps").replaceChildren(...task.steps.map((step) => el("tr", {},
    el("td", { className: "num" }, String(step.seq)),
    el("td", { className: "mono" }, step.name),
    el("td", {}, el("span", { className: `badge step-${step.status}`, textContent: step.status })),
    el("td", { className: "num" }, String(step.attempts)),
    el("td", { className: "num" }, duration(step.finished_at - step.started_at)),
    el("td", {}, errorText(step.error)))));
}

// -- output -------------------------------------------------------------------------------

function bytesOf(fragment) {
  if (fragment.base64 === null) return encoder.encode(fragment.text);
  return Uint8Array.from(atob(fragment.base64), (c) => c.charCodeAt(0));
}

function fragmentNode(fragment, decoders) {
  const text = decoders[fragment.stream].decode(bytesOf(fragment), { stream: true });
  const node = el("span", { className: fragment.stream, textContent: text });
  node.dataset.seq = fragment.seq;
  return node;
}

function appendFragments(fragments) {
  if (fragments.length === 0) return;
  const nodes = fragments.map((fragment) => fragmentNode(fragment, liveDecoders));
  logView.append(...nodes);
  for (const node of nodes) logChars += node.textContent.length;
  firstSeq ??= fragments[0].seq;
  lastSeq = fragments[fragments.length - 1].seq;
  while (logChars > MAX_LOG_CHARS && logView.childElementCount > 1) {
    logChars -= logView.firstElementChild.textContent.length;
    logView.firstElementChild.remove();
    firstSeq = Number(logView.firstElementChild.dataset.seq);
    earlier.hidden = false;
  }
  if (follow.checked) logView.scrollTop = logView.scrollHeight;
}

async function loadEarlier() {
  earlier.disabled = true;
  try {
    const page = await api(`/api/tasks/${task.id}/logs?before_seq=${firstSeq}`);
    const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    const nodes = page.fragments.map((fragment) => fragmentNode(fragment, decoders));
    const fromBottom = logView.scrollHeight - logView.scrollTop;
    logView.prepend(...nodes);
    for (const node of nodes) logChars += node.textContent.length;
    logView.scrollTop = logView.scrollHeight - fromBottom;
    if (page.fragments.length) firstSeq = page.fragments[0].seq;
    earlier.hidden = !page.more;
  } catch (error) {
    showNotice(error instanceof ApiError ? error.detail : String(error));
  } finally {
    earlier.disabled = false;
  }
}

function setLog(text) {
  document.getElementById("logstatus").textContent = text;
}

// -- cancel -------------------------------------------------------------------------------

async function cancelTask() {
  if (!confirm(`Cancel task ${task.name ?? task.id}?`)) return;
  const button = document.getElementById("cancel");
  button.disabled = true;
  button.textContent = "Cancelling…";
  try {
    task = await api(`/api/tasks/${task.id}/cancel`, { method: "POST" });
    render();
    showNotice("");
  } catch (error) {
    showNotice(error instanceof ApiError ? error.detail : String(error));
  } finally {
    button.disabled = false;
    button.textContent = "Cancel task";
  }
}

earlier.addEventListener("click", loadEarlier);
document.getElementById("cancel").addEventListener("click", cancelTask);
logView.addEventListener("scroll", () => {
  follow.checked = logView.scrollHeight - logView.scrollTop - logView.clientHeight < 4;
});
main();
