// Demo widget that proves the front-end plumbing end to end: synced traits both ways,
// model data shown as text only (never innerHTML), and a bundled, offline vega-lite chart.
// Python side: steerwidgets/widgets/hello.py (HelloWidget).
import { destroyChart, renderChart } from "./chart.js";

/**
 * @typedef {object} HelloModel
 * @property {number} count
 * @property {string} text
 * @property {Record<string, any>} spec  a vega-lite spec (e.g. from `altair.Chart.to_dict()`)
 */

/** @type {import("@anywidget/types").Render<HelloModel>} */
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "sw-root sw-hello";

  const row = document.createElement("div");
  row.className = "sw-row";

  const button = document.createElement("button");
  button.type = "button";
  button.className = "sw-button sw-button-primary";
  button.setAttribute("aria-label", "Increment");
  button.textContent = "+1";

  const countLabel = document.createElement("span");
  countLabel.className = "sw-label";
  countLabel.textContent = "count";

  const count = document.createElement("span");
  count.className = "sw-count sw-mono";
  count.setAttribute("aria-live", "polite");

  row.append(button, countLabel, count);

  const text = document.createElement("span");
  text.className = "sw-text";

  const chart = document.createElement("div");
  chart.className = "sw-chart";

  const error = document.createElement("div");
  error.className = "sw-error";
  error.hidden = true;

  root.append(row, text, chart, error);
  el.appendChild(root);

  const showCount = () => {
    count.textContent = String(model.get("count"));
  };
  const showText = () => {
    // textContent, never innerHTML: model data is untrusted.
    text.textContent = model.get("text") ?? "";
  };
  const showChart = () => {
    error.hidden = true;
    renderChart(chart, model.get("spec")).catch((err) => {
      error.textContent = `Chart failed to render: ${err?.message ?? err}`;
      error.hidden = false;
    });
  };
  const onClick = () => {
    model.set("count", (model.get("count") ?? 0) + 1);
    model.save_changes();
  };

  button.addEventListener("click", onClick);
  model.on("change:count", showCount);
  model.on("change:text", showText);
  model.on("change:spec", showChart);
  showCount();
  showText();
  showChart();

  return () => {
    button.removeEventListener("click", onClick);
    model.off("change:count", showCount);
    model.off("change:text", showText);
    model.off("change:spec", showChart);
    destroyChart(chart);
  };
}

export default { render };
