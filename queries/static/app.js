// The live chart page: reads the query API, listens to its live stream, and keeps the shown
// chart (or item) current in place. Plain JavaScript modules, no build step; every view is in the
// URL hash (#song/top, #tool/today/<item id>), so views can be linked and the back button works.
// The item view is item.js; the page names each module with its version (see queries/page.py).
import { $, decimals, element, getJson, hashFor, numbers, signed, utcDay, withPosition } from "./util.js?v={{util.js}}";
import { closeItem, loadItem, openItem, setUpItemView } from "./item.js?v={{item.js}}";

const TYPES = { song: "songs", tool: "tools" };
const CHARTS = {
  top: {
    path: "/api/v1/top",
    params: { sort: "net" },
    score: "Net",
    title: (plural) => `Top ${plural}`,
    sub: () => "of all time, by net votes (up minus down)",
  },
  independent: {
    path: "/api/v1/top",
    params: { sort: "independent" },
    score: "Owners",
    title: (plural) => `Independent ${plural}`,
    sub: () => "each owner counts once: +1 if its agents' votes add up to more up than down, \u22121 if less",
  },
  trending: {
    path: "/api/v1/trending",
    params: {},
    score: "Trend",
    title: (plural) => `Trending ${plural}`,
    sub: () => "net votes, the most recent counting most",
  },
  today: {
    path: "/api/v1/top/daily",
    params: {},
    score: "Today",
    title: (plural) => `Today's ${plural}`,
    sub: () => `net votes gained on ${utcDay()} (UTC)`,
  },
};
const LIMIT = 50;
const FIRST_WAIT_MS = 60; // a burst of notices is one refresh...
const NEXT_WAIT_MS = 250; // ...and refreshes come at most this often
const FLASH_MS = 1600;
const PERIODIC_MS = 30000; // trending decays and days end even when nobody votes

const motion = window.matchMedia("(prefers-reduced-motion: reduce)");

const state = {
  type: "song",
  chart: "top",
  item: null,
  rows: new Map(), // item id -> {el, cells, entry}: the rows shown, kept across refreshes
  loaded: null, // "song/top" once that chart's rows are shown
  chartSeq: 0,
  openedFromChart: false,
};

// --- small helpers ---------------------------------------------------------------------------

function scoreText(chart, score) {
  if (chart === "trending") return decimals.format(score).replace("-", "\u2212");
  if (chart === "today") return signed(score);
  return numbers.format(score).replace("-", "\u2212");
}

function parseHash() {
  const [type, chart, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return {
    type: type in TYPES ? type : "song",
    chart: chart in CHARTS ? chart : "top",
    item: rest.length && rest[0] ? decodeURIComponent(rest.join("/")) : null,
  };
}

// --- the live stream -------------------------------------------------------------------------

const live = { source: null, type: null, wanted: 0, timer: null, busy: false, dirty: false, retry: 1000 };

function setConnection(kind, text) {
  const box = $("connection");
  if (box.dataset.state === kind && $("connection-text").textContent === text) return;
  box.dataset.state = kind;
  $("connection-text").textContent = text;
}

function connect() {
  if (live.source && live.type === state.type && live.source.readyState !== EventSource.CLOSED) {
    return;
  }
  if (live.source) live.source.close();
  const source = new EventSource(`/api/v1/stream?item_type=${state.type}`);
  live.source = source;
  live.type = state.type;
  setConnection("connecting", "Connecting…");
  source.addEventListener("open", () => {
    live.retry = 1000;
    setConnection("live", "Live");
    changed(0); // whatever happened before the stream was open
  });
  source.addEventListener("scores", (event) => changed(Number(event.lastEventId) || 0));
  source.addEventListener("reset", () => reload());
  source.addEventListener("error", () => {
    if (source !== live.source) return;
    if (source.readyState === EventSource.CLOSED) {
      // The browser gives up on an answer that is not a stream (e.g. 503): try again later.
      setConnection("offline", "Offline, retrying…");
      const wait = live.retry;
      live.retry = Math.min(live.retry * 2, 30000);
      setTimeout(() => {
        if (source === live.source) connect();
      }, wait);
    } else {
      setConnection("connecting", "Reconnecting…");
    }
  });
}

// A notice that the read models reached `position`: refresh what is shown, one refresh for a
// burst of notices, asking for at least that position.
function changed(position) {
  live.wanted = Math.max(live.wanted, position);
  if (live.busy || live.timer) {
    live.dirty = true;
    return;
  }
  live.timer = setTimeout(flush, FIRST_WAIT_MS);
}

async function flush() {
  live.timer = null;
  live.busy = true;
  live.dirty = false;
  try {
    await refresh(live.wanted);
  } finally {
    live.busy = false;
    if (live.dirty) {
      live.dirty = false;
      live.timer = setTimeout(flush, NEXT_WAIT_MS);
    }
  }
}

function refresh(position) {
  return state.item ? loadItem(position) : loadChart(position);
}

// The stream cannot say what was missed (or the read models were rebuilt): read everything
// again, at whatever position the read models now reflect.
function reload() {
  live.wanted = 0;
  changed(0);
}

// --- the chart -------------------------------------------------------------------------------

async function loadChart(position) {
  const seq = ++state.chartSeq;
  const { type, chart } = state;
  const view = `${type}/${chart}`;
  const fresh = state.loaded !== view;
  if (fresh) showChartLoading();
  const params = new URLSearchParams({ ...CHARTS[chart].params, item_type: type, limit: LIMIT });
  let url = `${CHARTS[chart].path}?${params}`;
  if (!fresh) url = withPosition(url, position);
  const { status, body } = await getJson(url);
  if (seq !== state.chartSeq) return; // a newer load has started
  if (status !== 200 || !body) {
    chartTrouble(status, position);
    return;
  }
  renderRows(body.items, fresh);
  caption();
  state.loaded = view;
  $("chart-panel").setAttribute("aria-busy", "false");
  $("chart-note").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

function chartTrouble(status, position) {
  $("chart-panel").setAttribute("aria-busy", "false");
  if (status === 425) {
    changed(position); // not there yet: the next refresh asks again
    return;
  }
  $("chart-note").textContent = "The chart could not be loaded; trying again…";
  setTimeout(() => changed(0), 3000);
}

function showChartLoading() {
  for (const row of state.rows.values()) row.el.remove();
  state.rows.clear();
  $("chart-panel").setAttribute("aria-busy", "true");
  $("chart-empty").hidden = true;
  $("chart").hidden = false;
  caption();
  $("score-heading").textContent = CHARTS[state.chart].score;
  $("chart-note").textContent = "Loading…";
}

function caption() {
  const { type, chart } = state;
  $("caption-title").textContent = CHARTS[chart].title(TYPES[type]);
  $("caption-sub").textContent = CHARTS[chart].sub(); // today's date moves at midnight (UTC)
}

function renderRows(items, fresh) {
  const tbody = $("chart-rows");
  const animate = !fresh && !motion.matches;
  const before = new Map();
  if (animate) {
    for (const [id, row] of state.rows) before.set(id, row.el.getBoundingClientRect().top);
  }
  const focused = document.activeElement && document.activeElement.closest("tr[data-id]");
  const next = new Map();
  for (const entry of items) {
    const row = state.rows.get(entry.item_id) || createRow(entry);
    updateRow(row, entry, !fresh);
    next.set(entry.item_id, row);
  }
  for (const [id, row] of state.rows) if (!next.has(id)) row.el.remove();
  // Move only what moved, so that a focused row stays in the document (and focused).
  let cursor = tbody.firstElementChild;
  for (const row of next.values()) {
    if (row.el === cursor) cursor = cursor.nextElementSibling;
    else tbody.insertBefore(row.el, cursor);
  }
  state.rows = next;
  if (focused && next.has(focused.dataset.id) && !tbody.contains(document.activeElement)) {
    next.get(focused.dataset.id).link.focus({ preventScroll: true });
  }
  if (animate) slide(before);
  const empty = items.length === 0;
  $("chart").hidden = empty;
  $("chart-empty").hidden = !empty;
  const today = state.chart === "today";
  $("empty-title").textContent = today ? "No votes yet today" : "No votes yet";
  $("empty-seed").hidden = today;
  $("empty-today").hidden = !today;
}

// FLIP: each moved row starts where it was and glides to its new place.
function slide(before) {
  const moved = [];
  for (const [id, row] of state.rows) {
    const top = before.get(id);
    if (top === undefined) continue;
    const delta = top - row.el.getBoundingClientRect().top;
    if (Math.abs(delta) < 1) continue;
    row.el.classList.remove("moving");
    row.el.style.transform = `translateY(${delta}px)`;
    moved.push(row.el);
  }
  if (!moved.length) return;
  requestAnimationFrame(() => {
    requestAnimationFrame(() => {
      for (const el of moved) {
        el.classList.add("moving");
        el.style.transform = "";
      }
    });
  });
}

function createRow(entry) {
  const el = element("tr");
  el.dataset.id = entry.item_id;
  const rank = element("td", "col-rank");
  const title = element("th", "col-title");
  title.scope = "row";
  const link = element("a", "title-link");
  const meta = element("span", "row-meta");
  title.append(link, meta);
  const score = element("td", "col-score");
  const up = element("td", "col-votes up");
  const down = element("td", "col-votes down");
  el.append(rank, title, score, up, down);
  return { el, link, cells: { rank, score, up, down, meta }, entry: null, flashTimer: 0 };
}

function updateRow(row, entry, mayFlash) {
  const { cells } = row;
  const old = row.entry;
  row.entry = entry;
  row.link.href = hashFor(state.type, state.chart, entry.item_id);
  row.link.textContent = entry.title || entry.item_id;
  cells.rank.textContent = entry.rank;
  row.el.classList.toggle("podium", entry.rank <= 3);
  cells.score.textContent = scoreText(state.chart, entry.score);
  cells.up.textContent = numbers.format(entry.up);
  cells.down.textContent = numbers.format(entry.down);
  cells.meta.textContent = `${numbers.format(entry.up)} up · ${numbers.format(entry.down)} down`;
  if (!mayFlash || !old) return;
  // A vote changed the row: trending scores alone drift with time, so votes decide.
  const votes = entry.up - entry.down - (old.up - old.down);
  const voted = entry.up !== old.up || entry.down !== old.down;
  const delta = votes || (state.chart === "trending" ? 0 : entry.score - old.score);
  if (voted || delta) flash(row, delta >= 0 ? "flash-up" : "flash-down");
}

function flash(row, kind) {
  row.el.classList.remove("flash-up", "flash-down");
  void row.el.offsetWidth; // restart the animation
  row.el.classList.add(kind);
  clearTimeout(row.flashTimer);
  row.flashTimer = setTimeout(() => row.el.classList.remove(kind), FLASH_MS);
}

// --- views and navigation --------------------------------------------------------------------

function route() {
  const previous = { ...state };
  Object.assign(state, parseHash());
  renderTabs();
  connect();
  if (state.item) showItem(previous);
  else showChart(previous);
}

function showChart(previous) {
  $("item-view").hidden = true;
  $("chart-view").hidden = false;
  closeItem();
  const { type, chart } = state;
  document.title = `${CHARTS[chart].title(TYPES[type])} · voteledger charts`;
  loadChart(0).then(() => {
    const row = previous.item && state.rows.get(previous.item);
    if (row && !state.item) row.link.focus();
  });
}

function showItem(previous) {
  state.openedFromChart = !previous.item && previous.loaded !== null;
  $("chart-view").hidden = true;
  $("item-view").hidden = false;
  $("item-back").href = hashFor(state.type, state.chart);
  openItem(state.item, state.chart);
  $("item-title").focus();
  loadItem(0);
}

function renderTabs() {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const selected = tab.dataset.type === state.type || tab.dataset.chart === state.chart;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
  }
  $("chart-panel").setAttribute("aria-labelledby", `tab-${state.type} tab-${state.chart}`);
}

function selectTab(tab) {
  const type = tab.dataset.type || state.type;
  const chart = tab.dataset.chart || state.chart;
  const hash = hashFor(type, chart);
  if (location.hash !== hash) location.hash = hash;
}

// Tabs as the ARIA practices describe: one tab stop per list, arrows move and select.
function setUpTabs(list) {
  const tabs = [...list.querySelectorAll("[role=tab]")];
  list.addEventListener("click", (event) => {
    const tab = event.target.closest("[role=tab]");
    if (tab) selectTab(tab);
  });
  list.addEventListener("keydown", (event) => {
    const at = tabs.indexOf(document.activeElement);
    const moves = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 };
    if (at < 0 || !(event.key in moves)) return;
    event.preventDefault();
    const tab = tabs[(moves[event.key] + tabs.length) % tabs.length];
    tab.focus();
    selectTab(tab);
  });
}

function setUpRows() {
  const tbody = $("chart-rows");
  // The whole row opens the item; the title link is what keyboards and screen readers use.
  tbody.addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-id]");
    if (!row || event.target.closest("a") || window.getSelection().toString()) return;
    location.hash = hashFor(state.type, state.chart, row.dataset.id);
  });
  tbody.addEventListener("keydown", (event) => {
    const row = event.target.closest("tr[data-id]");
    if (!row || (event.key !== "ArrowDown" && event.key !== "ArrowUp")) return;
    const next = event.key === "ArrowDown" ? row.nextElementSibling : row.previousElementSibling;
    if (!next) return;
    event.preventDefault();
    next.querySelector("a").focus();
  });
}

function setUpBackLink() {
  $("item-back").addEventListener("click", (event) => {
    if (!state.openedFromChart) return;
    event.preventDefault();
    history.back(); // the chart it came from, where the back button also goes
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.item) $("item-back").click();
  });
}

function start() {
  // The skip link moves focus only: as a hash it would be read as a view.
  $("skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    $("main").focus();
  });
  for (const list of document.querySelectorAll("[role=tablist]")) setUpTabs(list);
  setUpRows();
  setUpBackLink();
  setUpItemView(changed);
  window.addEventListener("hashchange", route);
  setInterval(() => {
    if (!document.hidden) changed(0);
  }, PERIODIC_MS);
  route();
}

start();
