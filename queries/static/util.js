// Small helpers shared by the chart page's modules: elements, numbers, dates and reading the API.

export const $ = (id) => document.getElementById(id);
export const numbers = new Intl.NumberFormat("en");
export const decimals = new Intl.NumberFormat("en", {
  minimumFractionDigits: 1,
  maximumFractionDigits: 1,
});
const fine = new Intl.NumberFormat("en", { maximumFractionDigits: 3 });
const SVG = "http://www.w3.org/2000/svg";

export function signed(n) {
  if (n > 0) return `+${numbers.format(n)}`;
  if (n < 0) return `\u2212${numbers.format(-n)}`;
  return "0";
}

// Any number as people write it: a real minus sign, at most three decimals.
export function plain(n) {
  return fine.format(n).replace("-", "\u2212");
}

// The UTC date `days` from today, as YYYY-MM-DD.
export function utcDay(days = 0) {
  return new Date(Date.now() + days * 86400000).toISOString().slice(0, 10);
}

export function hashFor(type, chart, item) {
  return `#${type}/${chart}${item ? `/${encodeURIComponent(item)}` : ""}`;
}

export function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

export function svg(tag, attributes) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) el.setAttribute(name, value);
  return el;
}

export function withPosition(url, position) {
  if (!position) return url;
  const joiner = url.includes("?") ? "&" : "?";
  return `${url}${joiner}min_position=${position}&wait_ms=2000`;
}

// {status, body}: a problem+json answer is a body too; a network failure is status 0.
export async function getJson(url) {
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await response.json().catch(() => null);
    return { status: response.status, body };
  } catch (error) {
    return { status: 0, body: null };
  }
}
