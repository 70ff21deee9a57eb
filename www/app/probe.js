// The linear probe: grouped cross-validation over C, the final fit (in the analysis worker),
// its confusion matrix, and the predictions table for unlabelled tiles.
import { $, state, status, setStage, escapeHtml, drawThumb } from "./state.js";
import { ask } from "./analysis.js";
import { requestDraw } from "./map.js";
import { offerHeatmaps } from "./slide.js";

function groupOf(it) {
  const by = $("group-by").value;
  if (by === "none") return "";
  if (by === "prefix") { const base = it.name.split("/").pop(); const m = base.match(/^([^_-]+)[_-]/); return m ? m[1] : ""; }
  return it.group || "";
}

$("run-probe").onclick = async () => {
  const rows = [], labels = [], groups = [];
  const classes = [...new Set(state.items.map((it) => it.label).filter((l) => l !== null))].sort();
  const index = new Map(classes.map((c, i) => [c, i]));
  state.items.forEach((it, i) => { if (it.label !== null) { rows.push(i); labels.push(index.get(it.label)); groups.push(groupOf(it)); } });
  const cGrid = $("c-grid").value.split(",").map(Number).filter((c) => c > 0 && Number.isFinite(c));
  const kind = $("probe-kind").value;
  status("probe-status", `Cross-validating ${kind === "svm" ? "a linear SVM" : "logistic regression"} on ${rows.length} labelled tiles, ${classes.length} classes…`);
  $("run-probe").disabled = true;
  const run = state.run;
  try {
    const r = await ask("probe", {
      rows, labels, groups, classes, cGrid, folds: Number($("folds").value) || 5, seed: 0, kind,
      card: JSON.stringify({ ...state.card, transform: state.evalTransform || "resize" }), sha256: state.modelSha256,
    });
    if (run !== state.run) return; // new tiles arrived meanwhile: this probe was of the old ones
    state.probe = { classes, kind, ...r, rows };
    showProbe();
    $("export-predictions").disabled = false; $("export-probe").disabled = false;
    if ($("colour-by").value === "prediction") requestDraw();
    setStage("probe-done");
    offerHeatmaps();
  } catch (err) {
    if (run !== state.run) return;
    status("probe-status", `Probe failed: ${err.message}`, true);
  }
  // (A probe of older tiles leaves the button to the newer extraction, which sets it.)
  $("run-probe").disabled = false;
};


function showProbe() {
  const { cv, classes, cvMs, fitMs, threads } = state.probe;
  const chance = 1 / classes.length;
  status("probe-status", `Grouped ${cv.folds}-fold cross-validation: accuracy ${(100 * cv.accuracy).toFixed(1)}%, ` +
    `balanced accuracy ${(100 * cv.balanced_accuracy).toFixed(1)}% (chance ${(100 * chance).toFixed(1)}%) at C = ${cv.best_c}; ` +
    `CV ${(cvMs / 1000).toFixed(1)} s${threads > 1 ? ` (folds on ${threads} threads)` : ""}, final fit ${(fitMs / 1000).toFixed(2)} s.` +
    (cv.widened && cv.widened.length
      ? ` The best C was at the edge of the grid, so the grid was widened to ${cv.widened.join(", ")}.`
      : ""));
  let html = "<table id='cv-table'><tr><th>C</th><th>balanced accuracy</th><th>accuracy</th><th>folds used</th></tr>";
  for (const s of cv.scores) {
    const best = s.c === cv.best_c ? " class='best'" : "";
    html += `<tr><td${best}>${s.c}</td><td${best}>${(100 * s.balanced_accuracy).toFixed(1)}%</td><td${best}>${(100 * s.accuracy).toFixed(1)}%</td><td>${s.folds_used}</td></tr>`;
  }
  html += "</table><table id='confusion'><tr><th class='name'>true \\ predicted (out of fold)</th>" + classes.map((c) => `<th>${escapeHtml(c)}</th>`).join("") + "</tr>";
  cv.confusion.forEach((row, t) => {
    html += `<tr><th class='name'>${escapeHtml(classes[t])}</th>` + row.map((v, p) => `<td${p === t ? " class='best'" : ""}>${v}</td>`).join("") + "</tr>";
  });
  $("probe-results").innerHTML = html + "</table>";
  showPredictions("confidence", false);
}

/** One row per tile: name, label, predicted class, scores and confidence. */
export function predictionRows() {
  const { scores, pred, classes, kind } = state.probe;
  const n = state.items.length, w = scores.length / n;
  const rows = [];
  for (let i = 0; i < n; i++) {
    const it = state.items[i];
    const s = Array.from(scores.slice(i * w, (i + 1) * w));
    rows.push({ i, name: it.name, label: it.label, predicted: classes[pred[i]], scores: s,
      confidence: kind === "logistic" ? Math.max(...s) : Math.max(...s.map(Math.abs)) });
  }
  return rows;
}

let sortKey = "confidence", sortDesc = false;
function showPredictions(key = sortKey, toggle = true) {
  if (toggle && key === sortKey) sortDesc = !sortDesc; else if (toggle) sortDesc = key === "confidence" ? false : false;
  sortKey = key;
  const { classes, kind } = state.probe;
  const unl = predictionRows().filter((r) => r.label === null);
  const box = $("predictions");
  if (!unl.length) { box.innerHTML = "<p class='hint'>No unlabelled tiles to classify: drop loose files or a folder named <code>unlabelled</code> with the labelled ones.</p>"; return; }
  const val = (r) => (key === "name" ? r.name : key === "predicted" ? r.predicted : key === "confidence" ? r.confidence : r.scores[Number(key)]);
  unl.sort((a, b) => { const x = val(a), y = val(b); const c = typeof x === "string" ? x.localeCompare(y) : x - y; return sortDesc ? -c : c; });
  const scoreCols = kind === "logistic" ? classes : (unl[0].scores.length === 1 ? [`decision (${classes[1]})`] : classes);
  const table = document.createElement("table"); table.id = "predictions-table";
  const head = document.createElement("tr");
  const th = (text, k, cls = "") => { const h = document.createElement("th"); h.textContent = text + (k === sortKey ? (sortDesc ? " ▼" : " ▲") : ""); h.className = `sortable ${cls}`; h.onclick = () => showPredictions(k); return h; };
  head.append(document.createElement("th"), th("tile", "name", "name"), th("predicted", "predicted"), th("confidence", "confidence"),
    ...scoreCols.map((c, j) => th(kind === "logistic" ? `p(${c})` : c, String(j))));
  table.appendChild(head);
  for (const r of unl.slice(0, 2000)) {
    const tr = document.createElement("tr");
    const tdT = document.createElement("td");
    const it = state.items[r.i];
    tdT.appendChild(drawThumb(it, document.createElement("canvas"), 40));
    const td = (t, cls = "") => { const d = document.createElement("td"); d.textContent = t; d.className = cls; return d; };
    tr.append(tdT, td(r.name, "name"), td(r.predicted, "name"), td(r.confidence.toFixed(3)), ...r.scores.map((v) => td(v.toFixed(3))));
    table.appendChild(tr);
  }
  box.innerHTML = `<p>${unl.length} unlabelled tiles classified${unl.length > 2000 ? " (first 2,000 shown; export for all)" : ""}; click a column to sort.</p>`;
  box.appendChild(table);
}

