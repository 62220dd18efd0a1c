// Helpers shared by the dashboard's pages: API calls, formatting, small DOM builders.
"use strict";

const TERMINAL = new Set(["COMPLETED", "FAILED", "INTERRUPTED"]);
const STATES = ["CREATED", "RUNNING", "IDLE", "RECOVERING", "COMPLETED", "FAILED", "INTERRUPTED"];

class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

// fetch a JSON API path; throws ApiError with the server's `detail` on a refusal.
async function api(path, options = {}) {
  const response = await fetch(path, { headers: { Accept: "application/json" }, ...options });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON: keep the status text */ }
    throw new ApiError(response.status, detail);
  }
  return response.json();
}

// el("td", {className: "x"}, "text", otherNode): a new element with properties and children.
function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}

// An epoch time as local "YYYY-MM-DD HH:MM:SS" (with milliseconds if asked).
function when(seconds, millis = false) {
  if (seconds === null || seconds === undefined) return "–";
  const d = new Date(seconds * 1000);
  const text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return millis ? `${text}.${pad(d.getMilliseconds(), 3)}` : text;
}

// Seconds as "850ms", "12.3s", "4m05s" or "1h02m03s" (as `oneshot show` writes them).
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)}ms`;
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const total = Math.floor(seconds);
  const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
  return h ? `${h}h${pad(m)}m${pad(s)}s` : `${m}m${pad(s)}s`;
}

function runtime(task) {
  if (task.started_at === null) return null;
  const end = task.finished_at ?? (TERMINAL.has(task.state) ? task.updated_at : Date.now() / 1000);
  return Math.max(0, end - task.started_at);
}

function badge(state) {
  return el("span", { className: `badge state-${state}`, textContent: state });
}

// A command line as a shell would need it quoted (close to Python's shlex.join).
function commandLine(task) {
  if (!task.argv) return task.workflow ?? "";
  return task.argv.map((arg) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'"'"'`)}'`)).join(" ");
}

const SIGNALS = { 1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 15: "SIGTERM" };

// An exit code as `oneshot show` writes it: "exit 3", "killed by SIGTERM".
function exitText(code) {
  if (code === null || code === undefined) return "–";
  return code < 0 ? `killed by ${SIGNALS[-code] ?? `signal ${-code}`}` : `exit ${code}`;
}

// A stored error: workflow errors are JSON ({"type", "message", ...}), command errors text.
function errorText(error) {
  if (!error) return "";
  try {
    const data = JSON.parse(error);
    return `${data.type}: ${data.message}`;
  } catch (_) {
    return error;
  }
}

function showNotice(message) {
  const notice = document.getElementById("notice");
  notice.textContent = message;
  notice.hidden = !message;
}

function setStatus(text, ok = true) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("offline", !ok);
}
