// Exports: features (safetensors, CSV), the map (CSV), predictions (CSV) and the probe (JSON),
// as downloads made in the page.
import { $, state } from "./state.js";
import { ask } from "./analysis.js";
import { predictionRows } from "./probe.js";

function download(name, data, type) {
  const url = URL.createObjectURL(new Blob([data], { type }));
  const a = document.createElement("a");
  a.href = url; a.download = name; document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
const csvField = (s) => (/[",\n]/.test(String(s)) ? `"${String(s).replace(/"/g, '""')}"` : String(s));

/** The features as a safetensors file, written by the analysis worker's wasm instance (which
 * already holds the matrix) in the layout `mtpath features` writes. */
export async function featuresSafetensorsBytes() {
  const names = state.items.map((it) => it.name);
  const meta = {
    architecture: state.card.architecture,
    weights: state.modelName,
    weights_sha256: state.modelSha256,
    labels: JSON.stringify(state.items.map((it) => it.label)),
    groups: JSON.stringify(state.items.map((it) => it.group)),
    preprocess: JSON.stringify({ resize_shorter: state.card.resize_shorter, crop: state.card.input_size, mean: state.card.mean, std: state.card.std, transform: state.evalTransform || "resize" }),
  };
  const { bytes } = await ask("features-safetensors", { names, meta: JSON.stringify(meta) });
  return bytes;
}
window.mtpathFeaturesSafetensors = featuresSafetensorsBytes;

$("export-features").onclick = async () => download("features.safetensors", await featuresSafetensorsBytes(), "application/octet-stream");
$("export-features-csv").onclick = () => {
  const d = state.dim;
  let out = "file,label,group," + Array.from({ length: d }, (_, j) => `f${j}`).join(",") + "\n";
  state.items.forEach((it, i) => {
    out += `${csvField(it.name)},${csvField(it.label ?? "")},${csvField(it.group)},` + Array.from(state.features.subarray(i * d, (i + 1) * d), (v) => v.toPrecision(8)).join(",") + "\n";
  });
  download("features.csv", out, "text/csv");
};
$("export-map").onclick = () => {
  let out = `file,label,${state.projection}_x,${state.projection}_y\n`;
  state.items.forEach((it, i) => { out += `${csvField(it.name)},${csvField(it.label ?? "")},${state.xy[2 * i]},${state.xy[2 * i + 1]}\n`; });
  download(`map-${state.projection}.csv`, out, "text/csv");
};
export function predictionsCsv() {
  const { classes, kind } = state.probe;
  const rows = predictionRows();
  const w = rows[0]?.scores.length ?? 0;
  const cols = kind === "logistic" ? classes.map((c) => `p_${c}`) : (w === 1 ? [`decision_${classes[1]}`] : classes.map((c) => `decision_${c}`));
  let out = "file,predicted," + cols.map(csvField).join(",") + ",label\n";
  for (const r of rows) out += `${csvField(r.name)},${csvField(r.predicted)},${r.scores.map((v) => v.toFixed(6)).join(",")},${csvField(r.label ?? "")}\n`;
  return out;
}
window.mtpathPredictionsCsv = predictionsCsv;
$("export-predictions").onclick = () => download("predictions.csv", predictionsCsv(), "text/csv");
$("export-probe").onclick = () => download("probe.json", state.probe.json, "application/json");

