// The item view: counts and ranks, net votes per day, and for one chart at a time (the focus) the
// item's rank history from the daily snapshots and why it has the score it has.
import {
  $,
  decimals,
  element,
  getJson,
  hashFor,
  numbers,
  plain,
  signed,
  svg,
  utcDay,
  withPosition,
} from "./util.js?v={{util.js}}";

const SERIES_DAYS = 30;
// The charts an item can be traced on (the API's sort names), and the focus each page chart gives.
const FOCUS = { net: "Net", independent: "Independent", confidence: "Confidence", trending: "Trending" };
const FOCUS_OF = { top: "net", independent: "independent", trending: "trending", today: "net" };
const STATS = ["net", "independent", "owners", "up", "down", "confidence", "trending"];

const view = {
  id: null,
  focus: "net",
  seq: 0,
  history: null, // {key, body}: the last history read; snapshots change once a day at most
  explainable: true, // false once the API says it has no explanation route
  changed: () => {},
};

// `changed(position)` asks the page for a refresh at (at least) that ledger position.
export function setUpItemView(changed) {
  view.changed = changed;
  $("focus-switch").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-focus]");
    if (!button || button.dataset.focus === view.focus) return;
    view.focus = button.dataset.focus;
    renderFocus();
    loadItem(0);
  });
}

// Show `id` (blank until loaded if it is another item), tracing it on the focus of `chart`.
export function openItem(id, chart) {
  if (id !== view.id) {
    view.id = id;
    view.focus = FOCUS_OF[chart] || "net";
    $("item-title").textContent = "Loading…";
    $("item-meta").hidden = true;
    for (const stat of STATS) $(`stat-${stat}`).textContent = "–";
    for (const box of ["daily-chart", "history-chart", "explain-rows", "explain-total"]) {
      $(box).replaceChildren();
    }
    $("explain").hidden = true;
  }
  renderFocus();
}

export function closeItem() {
  view.seq++; // answers still on their way are for a view no longer shown
}

export async function loadItem(position) {
  const seq = ++view.seq;
  const { id, focus } = view;
  const path = `/api/v1/items/${encodeURIComponent(id)}`;
  const range = { from: utcDay(-SERIES_DAYS), to: utcDay(-1) }; // the closed days
  const historyKey = `${id}/${range.from}/${range.to}`;
  const [detail, series, history, explained] = await Promise.all([
    getJson(withPosition(path, position)),
    getJson(withPosition(`${path}/daily?days=${SERIES_DAYS}`, position)),
    view.history?.key === historyKey
      ? { status: 200, body: view.history.body }
      : getJson(`${path}/history?${new URLSearchParams(range)}`),
    view.explainable
      ? getJson(withPosition(`${path}/explain?sort=${focus}`, position))
      : { status: 0, body: null },
  ]);
  if (seq !== view.seq) return;
  if ([detail, series, explained].some((answer) => answer.status === 425)) {
    view.changed(position);
    return;
  }
  $("item-missing").hidden = detail.status !== 404;
  $("item-body").hidden = detail.status !== 200;
  $("item-meta").hidden = detail.status !== 200;
  if (detail.status === 404) {
    $("item-title").textContent = "Not found";
    $("item-missing").textContent = `There is no item ${id}.`;
    return;
  }
  if (detail.status !== 200 || series.status !== 200) {
    setTimeout(() => view.changed(0), 3000);
    return;
  }
  renderItem(detail.body);
  drawDaily(series.body.days);
  if (history.status === 200) view.history = { key: historyKey, body: history.body };
  drawHistory(history.status === 200 ? history.body : null);
  renderExplanation(explained);
}

function renderItem(item) {
  $("item-title").textContent = item.title || item.item_id;
  document.title = `${item.title || item.item_id} · voteledger charts`;
  $("item-type").textContent = item.item_type;
  $("item-id").textContent = item.item_id;
  setStat("stat-net", signed(item.net));
  setStat("stat-independent", signed(item.independent));
  setStat("stat-owners", numbers.format(item.owners));
  setStat("stat-up", numbers.format(item.up));
  setStat("stat-down", numbers.format(item.down));
  setStat("stat-confidence", `${Math.round(item.confidence * 100)}%`);
  setStat("stat-trending", decimals.format(item.trending).replace("-", "\u2212"));
  const ranks = {
    top: item.rank_top,
    independent: item.rank_independent,
    trending: item.rank_trending,
    today: item.rank_daily,
  };
  for (const [chart, rank] of Object.entries(ranks)) {
    $(`rank-${chart}`).href = hashFor(item.item_type, chart);
    $(`rank-${chart}-value`).textContent = rank ? `#${numbers.format(rank)}` : "–";
  }
}

function setStat(id, text) {
  const el = $(id);
  if (el.textContent === text) return;
  const first = el.textContent === "–";
  el.textContent = text;
  if (first) return;
  el.classList.remove("changed");
  void el.offsetWidth;
  el.classList.add("changed");
}

// Net votes per day as bars above (gained) and below (lost) a zero line.
function drawDaily(days) {
  const width = 600;
  const height = 160;
  const pad = 6;
  const high = Math.max(0, ...days.map((d) => d.net));
  const low = Math.max(0, ...days.map((d) => -d.net));
  const scale = (height - 2 * pad) / Math.max(1, high + low);
  const zero = high + low === 0 ? height - pad : pad + high * scale;
  const slot = width / days.length;
  const total = days.reduce((sum, d) => sum + d.net, 0);
  const active = days.filter((d) => d.net !== 0).length;
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    preserveAspectRatio: "none",
    role: "img",
    "aria-labelledby": "daily-svg-title daily-svg-desc",
    class: "daily-svg",
  });
  const title = svg("title", { id: "daily-svg-title" });
  title.textContent = `Net votes per day, the last ${days.length} days`;
  const desc = svg("desc", { id: "daily-svg-desc" });
  desc.textContent =
    `${signed(total)} in all; votes on ${active} of ${days.length} days; ` +
    `today ${signed(days[days.length - 1].net)}.`;
  chart.append(title, desc);
  chart.append(svg("rect", { x: 0, y: zero - 0.5, width, height: 1, class: "zero" }));
  days.forEach((day, i) => {
    const size = Math.max(2, Math.abs(day.net) * scale); // a quiet day is a small tick
    const kind = day.net > 0 ? "gain" : day.net < 0 ? "loss" : "none";
    const bar = svg("rect", {
      x: i * slot + slot * 0.15,
      y: day.net > 0 ? zero - size : day.net < 0 ? zero : zero - size / 2,
      width: slot * 0.7,
      height: size,
      rx: 1.5,
      class: `bar ${kind}${i === days.length - 1 ? " today" : ""}`,
    });
    const tip = svg("title", {});
    tip.textContent = `${day.date}: ${signed(day.net)}`;
    bar.append(tip);
    chart.append(bar);
  });
  $("daily-chart").replaceChildren(chart);
  const peak = high || low ? `; most in a day ${signed(high >= low ? high : -low)}` : "";
  $("daily-sub").textContent = `The last ${days.length} days (UTC): ${signed(total)} in all${peak}`;
  $("daily-first").textContent = days[0].date;
  $("daily-last").textContent = `${days[days.length - 1].date} (today)`;
}

// --- the focus: rank history and explanation -------------------------------------------------

function renderFocus() {
  for (const button of $("focus-switch").querySelectorAll("button[data-focus]")) {
    button.setAttribute("aria-pressed", String(button.dataset.focus === view.focus));
  }
  const label = FOCUS[view.focus];
  $("history-heading").textContent = `Rank history: ${label}`;
  $("explain-heading").textContent = `Why this ${label.toLowerCase()} score?`;
  if (view.history) drawHistory(view.history.body);
}

function scoreText(focus, score) {
  if (focus === "confidence") return `${plain(score * 100)}%`;
  if (focus === "trending") return decimals.format(score).replace("-", "\u2212");
  return signed(score);
}

// The item's daily rank on the focus chart as a line (first place at the top), one dot a day.
function drawHistory(body) {
  const placed = body ? body.days.filter((day) => day[view.focus]) : [];
  const empty = $("history-empty");
  empty.hidden = placed.length > 0;
  $("history-axis").hidden = placed.length === 0;
  if (!placed.length) {
    $("history-chart").replaceChildren();
    $("history-sub").textContent = "The last 30 closed days (UTC)";
    empty.textContent = !body
      ? "The rank history could not be loaded."
      : body.days.length
        ? `Not on the ${FOCUS[view.focus].toLowerCase()} chart on any closed day yet.`
        : "No closed day yet for this item: a day's ranks are kept once it ends (UTC).";
    return;
  }
  const first = Date.parse(body.from);
  const span = Math.max(1, (Date.parse(body.to) - first) / 86400000);
  const lowest = Math.max(2, ...placed.map((day) => day[view.focus].rank));
  const [width, height, pad] = [600, 72, 8];
  const x = (day) => pad + ((Date.parse(day.date) - first) / 86400000 / span) * (width - 2 * pad);
  const y = (rank) => pad + ((rank - 1) / (lowest - 1)) * (height - 2 * pad);
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-labelledby": "history-svg-title history-svg-desc",
    class: "history-svg",
  });
  const title = svg("title", { id: "history-svg-title" });
  title.textContent = `Daily rank on the ${FOCUS[view.focus].toLowerCase()} chart`;
  const desc = svg("desc", { id: "history-svg-desc" });
  desc.textContent = historySummary(placed);
  const top = svg("line", { x1: 0, x2: width, y1: y(1), y2: y(1), class: "guide" });
  chart.append(title, desc, top, svg("path", { d: linePath(placed, x, y), class: "line" }));
  for (const [i, day] of placed.entries()) {
    const { rank, score } = day[view.focus];
    const last = i === placed.length - 1;
    const dot = svg("circle", { cx: x(day), cy: y(rank), r: last ? 5 : 3.5, class: last ? "dot last" : "dot" });
    const tip = svg("title", {});
    tip.textContent = `${day.date}: #${numbers.format(rank)}, score ${scoreText(view.focus, score)}`;
    dot.append(tip);
    chart.append(dot);
  }
  $("history-chart").replaceChildren(chart);
  $("history-sub").textContent = historySummary(placed);
  $("history-first").textContent = body.from;
  $("history-last").textContent = body.to;
}

// A line through consecutive days; a day without a place breaks it.
function linePath(placed, x, y) {
  let path = "";
  let previous = null;
  for (const day of placed) {
    const next = previous !== null && Date.parse(day.date) - Date.parse(previous.date) === 86400000;
    path += `${next ? "L" : "M"}${x(day).toFixed(1)} ${y(day[view.focus].rank).toFixed(1)} `;
    previous = day;
  }
  return path.trim();
}

function historySummary(placed) {
  const start = placed[0][view.focus];
  const end = placed[placed.length - 1][view.focus];
  const days = placed.length === 1 ? "1 closed day" : `${placed.length} closed days`;
  const score = scoreText(view.focus, end.score);
  return `#${numbers.format(start.rank)} → #${numbers.format(end.rank)} over ${days}; score ${score} at the last close`;
}

// Each chart's components as table columns: [field, heading, format].
const COLUMNS = {
  net: [["label", "Votes", String], ["value", "Counts", signed]],
  confidence: [["label", "Input", String], ["value", "Value", plain]],
  independent: [
    ["owner", "Owner", String],
    ["agents", "Agents", (n) => numbers.format(n)],
    ["sum", "Sum of votes", signed],
    ["sign", "Counts", signed],
  ],
  trending: [
    ["date", "Day", String],
    ["net", "Net", signed],
    ["factor", "Factor", plain],
    ["contribution", "Counts", plain],
  ],
};

// The explanation as a table whose last row is the total; hidden for good when the API has no
// explanation route (a 404 that is not about the item, or a 405).
function renderExplanation({ status, body }) {
  const missingRoute = status === 405 || (status === 404 && body?.type !== "/problems/unknown-item");
  if (missingRoute) view.explainable = false;
  const columns = status === 200 && body ? COLUMNS[body.sort] : null;
  $("explain").hidden = !columns;
  if (!columns) return;
  $("explain-formula").textContent = body.formula || "";
  $("explain-formula").hidden = !body.formula;
  $("explain-caption").textContent = `The ${FOCUS[body.sort].toLowerCase()} score, part by part`;
  $("explain-head").replaceChildren(...columns.map(([, heading]) => header("col", heading)));
  const rows = body.components.map((part) => {
    const row = element("tr");
    columns.forEach(([field, , format], i) => {
      const value = part[field] ?? "";
      const cell = i === 0 ? header("row", format(value)) : element("td", "", format(value));
      row.append(cell);
    });
    return row;
  });
  $("explain-rows").replaceChildren(...rows);
  const total = header("row", "Total");
  total.colSpan = columns.length - 1;
  // Fractional totals as precise as their parts (confidence: the bound itself, as in the formula).
  const whole = body.sort === "net" || body.sort === "independent";
  const sum = whole ? signed(body.total) : plain(body.total);
  $("explain-total").replaceChildren(total, element("td", "", sum));
  const more = body.components_truncated;
  $("explain-note").hidden = !more;
  $("explain-note").textContent = more
    ? `Only the first ${numbers.format(body.components.length)} rows are listed; the total counts them all.`
    : "";
}

function header(scope, text) {
  const cell = element("th", "", text);
  cell.scope = scope;
  return cell;
}
