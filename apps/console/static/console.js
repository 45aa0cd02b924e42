// Vigil console: polls the console's own API once a second and draws what it returns.
"use strict";

const $ = (sel) => document.querySelector(sel);
let selected = null; // the account whose case is open
const openFeatures = new Set(); // alerts whose feature list is unfolded (kept across refreshes)

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick") node.onclick = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

function when(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "";
}

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${await response.text()}`);
  return response.json();
}

function chart(svg, series) {
  // bars: events per second; lines: latency p50 and p99 on their own scale
  const W = 600, H = 160, n = series.length || 1, bw = W / n;
  const maxCount = Math.max(1, ...series.map((s) => s.count));
  const lat = series.flatMap((s) => [s.p50_ms, s.p99_ms]).filter((v) => v !== null);
  const maxLat = Math.max(1, ...lat);
  const parts = series.map((s, i) => {
    const h = (s.count / maxCount) * (H - 20);
    return `<rect x="${i * bw}" y="${H - h}" width="${Math.max(bw - 1, 1)}" height="${h}" fill="#9db4e8"/>`;
  });
  for (const [key, colour] of [["p50_ms", "#2a7a3a"], ["p99_ms", "#b3261e"]]) {
    const points = series
      .map((s, i) => (s[key] === null ? null : `${i * bw + bw / 2},${H - (s[key] / maxLat) * (H - 20)}`))
      .filter((p) => p !== null);
    if (points.length) parts.push(`<polyline points="${points.join(" ")}" fill="none" stroke="${colour}" stroke-width="1.5"/>`);
  }
  const last = series.slice(-5).reduce((a, s) => a + s.count, 0) / 5;
  parts.push(`<text x="4" y="14" font-size="12">${last.toFixed(0)}/s · max ${maxCount}/s · latency max ${maxLat.toFixed(0)} ms</text>`);
  svg.innerHTML = parts.join("");
}

function fillRows(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))));
}

async function refreshOverview() {
  const o = await getJSON("/api/overview");
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  $("#summary").textContent = `${plural(o.alerts, "alert")} · ${plural(o.open_cases, "open case")}`;
  $("#errors").textContent = Object.keys(o.errors).length ? `waiting for: ${Object.keys(o.errors).join(", ")}` : "";
  chart($("#risk-chart"), o.risk);
  chart($("#inspection-chart"), o.inspection);
  fillRows($("#dlq tbody"), Object.entries(o.dlq).map(([reason, n]) => [reason, String(n)]));
  fillRows($("#versions tbody"), o.versions.map((v) => [v.worker, String(v.partition), v.model_version, v.ruleset_version, v.rates_version]));
  fillRows($("#releases tbody"), o.releases.map((r) => [r.name, r.version + (r.latest ? " *" : ""), String(r.bits ?? ""), when(r.published_ms), r.status]));
  fillRows($("#rulesets tbody"), o.rulesets.map((r) => [r.ruleset, r.version, r.mode, String(r.rules), when(r.published_ms)]));
}

async function refreshCases() {
  const query = new URLSearchParams(new FormData($("#filters"))).toString();
  const cases = await getJSON(`/api/cases?${query}`);
  $("#case-list tbody").replaceChildren(
    ...cases.map((c) => {
      const row = el(
        "tr",
        { "data-account": c.account_id, class: c.account_id === selected ? "selected" : "" },
        el("td", {}, c.account_id), el("td", {}, String(c.alerts)), el("td", {}, String(c.undecided)),
        el("td", {}, c.max_score.toFixed(3)), el("td", {}, c.decisions.join(", ")), el("td", {}, when(c.last_ms)),
      );
      row.onclick = () => { selected = c.account_id; refreshCase(); refreshCases(); };
      return row;
    }),
  );
}

async function label(txId, fraud) {
  const response = await fetch("/api/labels", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ tx_id: txId, fraud }),
  });
  if (!response.ok) alert(`not labelled: ${await response.text()}`);
  await refreshCase();
  await refreshCases();
}

function features(a) {
  if (!a.features) return el("p", { class: "hint" }, "no score record seen for it (it came before the console)");
  const names = a.feature_names || a.features.map((_, i) => `#${i}`);
  const open = openFeatures.has(a.tx_id) ? { open: "" } : {};
  const details = el("details", { "data-testid": "features", ...open },
    el("summary", {}, `features (${names.length})`),
    el("div", { class: "features" },
      ...names.map((name, i) => el("div", {}, `${name}: ${a.features[i] === null ? "–" : Number(a.features[i]).toPrecision(4)}`))));
  details.addEventListener("toggle", () => (details.open ? openFeatures.add(a.tx_id) : openFeatures.delete(a.tx_id)));
  return details;
}

async function refreshCase() {
  if (selected === null) return;
  const c = await getJSON(`/api/cases/${encodeURIComponent(selected)}`);
  const cards = c.alerts.map((a) => {
    const decided = a.label
      ? el("span", { class: "label", "data-testid": "disposition" }, a.label.label === 1 ? "fraud" : "legitimate")
      : el("span", {},
          el("button", { class: "fraud", "data-testid": `fraud-${a.tx_id}`, onclick: () => label(a.tx_id, true) }, "Fraud"), " ",
          el("button", { class: "legit", "data-testid": `legit-${a.tx_id}`, onclick: () => label(a.tx_id, false) }, "Legitimate"));
    return el("div", { class: "alert", "data-tx": a.tx_id },
      el("div", {}, el("span", { class: `decision-${a.decision}` }, a.decision), ` ${a.score.toFixed(3)} · ${a.tx_id} · ${when(a.ts_ms)} · model ${a.model_version} · ruleset ${a.ruleset_version ?? ""} `, decided),
      el("ul", {}, ...a.reasons.map((r) => el("li", {}, `${r.code}: ${r.detail} (${r.weight})`))),
      el("div", {}, "rule hits: ", a.rule_hits.map((h) => `${h.rule} (${h.typology}, ${h.score})`).join(", ") || "none"),
      features(a));
  });
  $("#case").replaceChildren(el("h2", {}, `Case ${c.account_id}`), ...cards);
}

async function refreshInspection() {
  const alerts = await getJSON("/api/inspection");
  $("#inspection-alerts").replaceChildren(
    ...alerts.map((a) => el("div", { class: "thumb", "data-alert": a.alert_id },
      a.has_frame ? el("img", { src: `/api/thumb/${encodeURIComponent(a.alert_id)}.png`, alt: `frame ${a.ref_seq}` }) : el("p", { class: "hint" }, "frame not held"),
      el("div", {}, `${a.camera_id} · seq ${a.seq_start}-${a.seq_end} · ${a.score.toFixed(3)}`))),
  );
}

async function tick() {
  for (const step of [refreshOverview, refreshCases, refreshCase, refreshInspection]) {
    try { await step(); } catch (e) { $("#errors").textContent = String(e); }
  }
}

$("#filters").addEventListener("input", refreshCases);
tick();
setInterval(tick, 1000);
