// LayerSweep front end. Python side: steerwidgets/widgets/reliability.py (LayerSweep).
//
// Draws the layer × strength heatmaps (mean propensity, KL side effects), steerability and the
// anti-steerable fraction per layer, the suggested layer with its reason, a progress bar and Cancel.
// A click on a heatmap cell (a vega view click listener) sends {type: "open", layer, strength} to
// Python, which opens that setting in a Playground shown below. Text is set with textContent only.
import {
  button,
  clickableChart,
  ensureStyle,
  fmt,
  h,
  labChrome,
  pct,
  runBar,
  signed,
} from "./reliability.js";

/**
 * @typedef {object} SweepJson
 * @property {number[]} layers
 * @property {number[]} strengths
 * @property {number[]} steerability
 * @property {number[]} anti_steerable_fraction
 * @property {number[][]} mean_propensity
 * @property {number[][]} kl
 * @property {number | null} suggested_layer
 * @property {string} reason
 *
 * @typedef {object} SweepModel
 * @property {string} model_name
 * @property {string} positions
 * @property {number[]} strengths
 * @property {string} vector_method
 * @property {string} status
 * @property {string} stage
 * @property {number} progress
 * @property {boolean} running
 * @property {string} error
 * @property {string} message
 * @property {string | null} opened_playground
 * @property {number[]} layers
 * @property {number} n_test
 * @property {number} n_train
 * @property {SweepJson | Record<string, never>} sweep
 * @property {Record<string, any>} heatmap_spec
 * @property {Record<string, any>} anti_spec
 * @property {number | null} suggested_layer
 * @property {string} reason
 * @property {{notice: number, warning: number}} thresholds
 */

/**
 * The {layer, strength} a clicked mark stands for, or null (e.g. a threshold rule).
 * Heatmap cells carry both; per-layer bars carry only the layer (strength then stays null).
 * @param {Record<string, any>} datum
 * @returns {{layer: number, strength: number | null} | null}
 */
export function cellFromDatum(datum) {
  if (!datum || !Number.isInteger(datum.layer)) return null;
  const strength = typeof datum.strength === "number" && Number.isFinite(datum.strength) ? datum.strength : null;
  return { layer: datum.layer, strength };
}

/**
 * Index of the largest |λ| (the first one on ties, like numpy's argmax in the suggestion's KL check).
 * @param {number[]} strengths
 */
export function topIndex(strengths) {
  let best = 0;
  strengths.forEach((s, i) => {
    if (Math.abs(s) > Math.abs(strengths[best])) best = i;
  });
  return best;
}

/** @type {import("@anywidget/types").Render<SweepModel>} */
function render({ model, el, host }) {
  ensureStyle();
  const root = h("div", "sw-root sw-rl sw-layersweep");
  const top = runBar("Layer sweep");
  const settings = h("div", "sw-label sw-ls-settings");
  const error = h("div", "sw-error sw-ls-error");
  error.hidden = true;
  const suggestion = h("div", "sw-panel sw-ls-suggestion", { role: "status", "aria-label": "Suggested layer" });
  suggestion.hidden = true;
  const heatEl = h("div", "sw-chart sw-ls-heatmap", {
    "aria-label": "Layer by strength heatmaps: click a cell to open it in the Playground",
  });
  const antiEl = h("div", "sw-chart sw-ls-anti-chart", { "aria-label": "Anti-steerable fraction per layer" });
  const hint = h(
    "div",
    "sw-label",
    {},
    "Click a heatmap cell (or a layer's bar) to open that layer and strength in the Playground, on the " +
      "test item with the lowest slope at that layer.",
  );

  const openRow = h("div", "sw-row sw-ls-open");
  const layerSelect = h("select", "sw-select sw-ls-layer", { "aria-label": "Layer to open in the Playground" });
  const strengthSelect = h("select", "sw-select sw-ls-strength", {
    "aria-label": "Strength to open in the Playground",
  });
  const openButton = button("Open in Playground", "Open the chosen layer and strength in the Playground", "sw-ls-open-button");
  openRow.append(h("span", "sw-label", {}, "layer"), layerSelect, h("span", "sw-label", {}, "strength"), strengthSelect, openButton);
  const message = h("div", "sw-label sw-ls-message", { "aria-live": "polite" });
  const pgBox = h("div", "sw-rl-playground", { "aria-label": "Opened Playground" });
  const results = h("div", "sw-ls-results");
  results.append(suggestion, heatEl, antiEl, hint, openRow);
  results.hidden = true;

  root.append(top.bar, settings, error, results, message, pgBox);
  el.appendChild(root);

  const showError = (/** @type {string} */ text) => {
    error.textContent = text;
    error.hidden = !text;
  };
  /** @param {number} layer @param {number | null} strength */
  const open = (layer, strength) => model.send({ type: "open", layer, strength });
  const onDatum = (/** @type {Record<string, any>} */ datum) => {
    const cell = cellFromDatum(datum);
    if (cell) open(cell.layer, cell.strength);
  };
  const heat = clickableChart(heatEl, onDatum, showError);
  const antiChart = clickableChart(antiEl, onDatum, showError);

  const drawSettings = () => {
    const layers = model.get("layers") ?? [];
    const strengths = model.get("strengths") ?? [];
    const train = model.get("n_train") ? `, CAA vectors from ${model.get("n_train")} training items` : "";
    settings.textContent =
      `${model.get("model_name")} · ${model.get("vector_method")} vector${train} · ${layers.length} layers · ` +
      `positions ${model.get("positions")} · ${model.get("n_test")} test items · strengths ` +
      strengths.map(signed).join(", ");
    const keepLayer = layerSelect.value;
    layerSelect.replaceChildren(...layers.map((l) => h("option", "", { value: String(l) }, String(l))));
    if (keepLayer) layerSelect.value = keepLayer;
    const keepStrength = strengthSelect.value;
    strengthSelect.replaceChildren(...strengths.map((s) => h("option", "", { value: String(s) }, signed(s))));
    strengthSelect.value = keepStrength || String(Math.max(...strengths));
  };

  const drawResults = () => {
    /** @type {any} */
    const sweep = model.get("sweep") ?? {};
    const ready = Object.keys(sweep).length > 0;
    results.hidden = !ready;
    suggestion.replaceChildren();
    if (!ready) return;
    suggestion.hidden = false;
    const layer = model.get("suggested_layer");
    const head = h("b", "", {}, layer === null ? "No layer passes the checks" : `Suggested layer: ${layer}`);
    suggestion.append(head, h("div", "sw-text", {}, model.get("reason") ?? ""));
    const t = model.get("thresholds") ?? { notice: 0.1, warning: 0.3 };
    const i = layer === null ? -1 : sweep.layers.indexOf(layer);
    if (i >= 0) {
      suggestion.append(
        h(
          "div",
          "sw-label",
          {},
          `steerability ${fmt(sweep.steerability[i])}, anti-steerable ${pct(sweep.anti_steerable_fraction[i])} ` +
            `(notice ≥ ${pct(t.notice)}, warning ≥ ${pct(t.warning)}), KL at the largest strength ` +
            `${fmt(sweep.kl[i][topIndex(sweep.strengths)] ?? null, 2)} nats`,
        ),
      );
      layerSelect.value = String(layer);
    }
  };

  const onOpen = () => open(parseInt(layerSelect.value, 10), parseFloat(strengthSelect.value));
  openButton.addEventListener("click", onOpen);

  const drawHeat = () => heat.draw(model.get("heatmap_spec"));
  const drawAnti = () => antiChart.draw(model.get("anti_spec"));
  /** @type {[string, () => void][]} */
  const handlers = [
    ["change:layers", drawSettings],
    ["change:vector_method", drawSettings],
    ["change:sweep", drawResults],
    ["change:suggested_layer", drawResults],
    ["change:reason", drawResults],
    ["change:heatmap_spec", drawHeat],
    ["change:anti_spec", drawAnti],
  ];
  for (const [name, handler] of handlers) model.on(name, handler);
  const chromeDown = labChrome(model, host, { top, root, message, playgroundBox: pgBox, showError });
  drawSettings();
  drawResults();
  drawHeat();
  drawAnti();

  return () => {
    chromeDown();
    openButton.removeEventListener("click", onOpen);
    for (const [name, handler] of handlers) model.off(name, handler);
    heat.destroy();
    antiChart.destroy();
  };
}

export default { render };
