// The model: a .safetensors file picked, dropped or offered by the server, parsed once per load
// by the extraction pool (extract.js), which keeps it for every later drop.
import { $, state, status, setStage } from "./state.js";
import * as extract from "./extract.js";

async function sha256Hex(bytes) {
  if (!crypto.subtle) return "";
  const h = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(h), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The number of extraction workers the page asks for (1 to 8). */
export function workersWanted() { return Math.max(1, Math.min(8, Number($("workers").value) || 1)); }

/** Load the model file `bytes` (named `name`) into the extraction workers. */
export async function loadModel(bytes, name) {
  status("model-status", `Loading ${name} (${(bytes.byteLength / 1e6).toFixed(1)} MB)…`);
  try {
    const { card, extensions } = await extract.loadModel(bytes, workersWanted());
    state.modelBytes = bytes; state.modelName = name; state.card = card; state.extensions = extensions;
    state.modelSha256 = await sha256Hex(bytes);
    $("files-input").accept = extensions.map((x) => `.${x}`).join(",");
    const ex = card.export;
    const tasks = ex && ex.tasks && ex.tasks.length ? `; pre-trained on ${ex.tasks.map((t) => t.name || t).join(", ")}` : "";
    status("model-status", `Loaded ${name}: ${card.architecture}, ${card.feature_dim}-d features, ` +
      `resize ${card.resize_shorter} → crop ${card.input_size}${card.folded ? ", BatchNorm folded" : ""}${tasks}.`);
    setStage("model-loaded");
    if (state.items.length) status("input-status", "Model changed: drop the tiles again to embed them with it.");
  } catch (err) {
    status("model-status", `Could not load ${name}: ${err.message}. Use a .safetensors file from mtpath export, an mtpath checkpoint or a torchvision state dict.`, true);
  }
}

async function fetchModel(url) {
  status("model-status", `Downloading ${url} from this site…`);
  const r = await fetch(url);
  if (!r.ok) { status("model-status", `${url}: HTTP ${r.status}`, true); return; }
  await loadModel(new Uint8Array(await r.arrayBuffer()), url.split("/").pop());
}

/** List the models the server offers (models/index.json) and load the first, or `?model=`. */
export async function offerServerModels() {
  try {
    const r = await fetch("models/index.json", { cache: "no-store" });
    if (!r.ok) return;
    const { models } = await r.json();
    if (!models || !models.length) return;
    const sel = $("model-server");
    for (const m of models) {
      const o = document.createElement("option");
      o.value = m.url; o.textContent = `${m.name} (${(m.bytes / 1e6).toFixed(1)} MB)`;
      sel.appendChild(o);
    }
    sel.hidden = false;
    sel.onchange = () => sel.value && fetchModel(sel.value);
    const auto = new URLSearchParams(location.search).get("model") ?? models[0].url;
    sel.value = auto;
    await fetchModel(auto);
  } catch { /* no server models: fine */ }
}

/** Wire the model panel: the file picker and drops onto the panel. */
export function wireModelPanel() {
  $("model-file").onchange = async (e) => {
    const f = e.target.files[0];
    if (f) await loadModel(new Uint8Array(await f.arrayBuffer()), f.name);
  };
  const panel = $("model-panel");
  panel.addEventListener("dragover", (e) => { e.preventDefault(); panel.classList.add("over"); });
  panel.addEventListener("dragleave", () => panel.classList.remove("over"));
  panel.addEventListener("drop", async (e) => {
    e.preventDefault(); e.stopPropagation(); panel.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) await loadModel(new Uint8Array(await f.arrayBuffer()), f.name);
  });
}
