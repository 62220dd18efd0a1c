// The task list: filters in the URL, pages by cursor, refreshed every two seconds.
"use strict";

const REFRESH_MS = 2000;
const PAGE_SIZE = 50;
const params = new URLSearchParams(location.search);
const cursors = [null]; // the `before` of each page visited; the last one is shown
let shown = ""; // the JSON of the tasks on screen, to rebuild the rows only when it changes
let timer = null;

function setUpFilters() {
  const select = document.getElementById("state");
  for (const state of STATES) select.append(el("option", { value: state, textContent: state }));
  select.value = params.get("state") ?? "";
  document.getElementById("name").value = params.get("name") ?? "";
  document.getElementById("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if (select.value) query.set("state", select.value);
    const name = document.getElementById("name").value.trim();
    if (name) query.set("name", name);
    location.search = query.toString();
  });
  document.getElementById("older").addEventListener("click", () => turn(+1));
  document.getElementById("newer").addEventListener("click", () => turn(-1));
}

function turn(direction) {
  if (direction < 0) cursors.pop();
  else cursors.push(document.getElementById("older").dataset.next);
  refresh();
}

function row(task) {
  const link = () => el("a", { href: `/tasks/${task.id}`, textContent: task.name ?? task.id.slice(0, 12) });
  const tr = el("tr", {},
    el("td", { className: "mono" }, el("a", { href: `/tasks/${task.id}`, textContent: task.id.slice(0, 12) })),
    el("td", {}, task.name === null ? "" : link()),
    el("td", {}, badge(task.state)),
    el("td", { className: "num" }, exitText(task.exit_code)),
    el("td", { className: "nowrap" }, when(task.created_at)),
    el("td", { className: "num runtime" }, duration(runtime(task))),
    el("td", { className: "mono command", title: commandLine(task), textContent: commandLine(task) }));
  tr.dataset.id = task.id;
  return tr;
}

async function refresh() {
  clearTimeout(timer);
  const query = new URLSearchParams({ limit: PAGE_SIZE });
  if (params.get("state")) query.set("state", params.get("state"));
  if (params.get("name")) query.set("name", params.get("name"));
  const before = cursors[cursors.length - 1];
  if (before) query.set("before", before);
  try {
    const page = await api(`/api/tasks?${query}`);
    const json = JSON.stringify(page);
    if (json !== shown) {
      shown = json;
      document.getElementById("rows").replaceChildren(...page.tasks.map(row));
      document.getElementById("empty").hidden = page.tasks.length > 0;
      const older = document.getElementById("older");
      older.disabled = page.next === null;
      older.dataset.next = page.next ?? "";
      document.getElementById("newer").disabled = cursors.length === 1;
    } else {
      tickRuntimes(page.tasks);
    }
    showNotice("");
    setStatus(`live · ${when(Date.now() / 1000).slice(11)}`);
  } catch (error) {
    if (error instanceof ApiError) showNotice(error.detail);
    setStatus("offline", false);
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

// Running tasks' runtimes grow between refreshes even when nothing else changed.
function tickRuntimes(tasks) {
  const rows = document.getElementById("rows").children;
  tasks.forEach((task, i) => {
    if (rows[i] && !TERMINAL.has(task.state)) {
      rows[i].querySelector(".runtime").textContent = duration(runtime(task));
    }
  });
}

setUpFilters();
refresh();
