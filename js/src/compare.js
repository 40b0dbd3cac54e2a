// CompareWidget front end: a sortable table of steering methods and their baselines, a chart of one
// metric against the random band, a progress bar, Run and Cancel.
// Python side: steerwidgets/widgets/compare.py. Model data is shown with textContent only.
import { destroyChart, renderChart } from "./chart.js";

/**
 * @typedef {object} Column
 * @property {string} key
 * @property {string} label
 * @property {string} [title]
 * @property {[string, string]} [band]  keys of the min and max shown beside the value
 * @property {boolean} [optional]  shown only when some row has the key (compare's contexts / capability)
 */

/**
 * @typedef {object} CompareModel
 * @property {Record<string, any>[]} rows
 * @property {Column[]} columns
 * @property {Record<string, any>} spec
 * @property {string} metric
 * @property {string[]} metrics
 * @property {number} progress
 * @property {string} status
 * @property {boolean} running
 * @property {string} error
 */

/** @param {any} value */
export function formatValue(value) {
  if (value === null || value === undefined) {
    return "–";
  }
  if (Array.isArray(value)) {
    return `[${value.map(formatValue).join(", ")}]`;
  }
  if (typeof value === "number") {
    if (!Number.isFinite(value)) {
      return String(value);
    }
    if (Number.isInteger(value)) {
      return String(value);
    }
    const abs = Math.abs(value);
    return abs !== 0 && (abs < 0.001 || abs >= 1e5) ? value.toExponential(2) : value.toFixed(3);
  }
  return String(value);
}

/** Sort key: numbers numerically, missing values last, everything else as text. */
function compareValues(a, b) {
  const missingA = a === null || a === undefined;
  const missingB = b === null || b === undefined;
  if (missingA || missingB) {
    return missingA === missingB ? 0 : missingA ? 1 : -1;
  }
  if (Array.isArray(a)) a = a[0];
  if (Array.isArray(b)) b = b[0];
  if (typeof a === "number" && typeof b === "number") {
    return a - b;
  }
  return String(a).localeCompare(String(b));
}

/**
 * Rows sorted by a column; missing values stay last in both directions.
 * @param {Record<string, any>[]} rows
 * @param {string | null} key
 * @param {number} direction  1 ascending, -1 descending
 */
export function sortRows(rows, key, direction) {
  const copy = rows.map((row, index) => ({ row, index }));
  if (key) {
    copy.sort((x, y) => {
      const a = x.row[key];
      const b = y.row[key];
      const missing = (a === null || a === undefined) - (b === null || b === undefined);
      if (missing !== 0) return missing;
      return direction * compareValues(a, b) || x.index - y.index;
    });
  }
  return copy.map((entry) => entry.row);
}

/**
 * The columns to draw: every column, except optional ones that no row has.
 * @param {Column[]} columns
 * @param {Record<string, any>[]} rows
 */
export function visibleColumns(columns, rows) {
  return columns.filter((column) => !column.optional || rows.some((row) => column.key in row));
}

/** Verdicts that call for attention, drawn in the warning colour (the text says it too). */
const WARNING_VERDICTS = new Set(["costs capability", "weaker in context"]);

/** @type {import("@anywidget/types").Render<CompareModel>} */
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "sw-root sw-compare";

  const bar = document.createElement("div");
  bar.className = "sw-row";
  const runButton = document.createElement("button");
  runButton.type = "button";
  runButton.className = "sw-button sw-button-primary sw-compare-run";
  runButton.textContent = "Run";
  runButton.setAttribute("aria-label", "Run the comparison");
  const cancelButton = document.createElement("button");
  cancelButton.type = "button";
  cancelButton.className = "sw-button sw-compare-cancel";
  cancelButton.textContent = "Cancel";
  cancelButton.setAttribute("aria-label", "Cancel the comparison");
  const progress = document.createElement("progress");
  progress.className = "sw-compare-progress";
  progress.max = 1;
  progress.style.minWidth = "160px";
  const status = document.createElement("span");
  status.className = "sw-label sw-compare-status";
  status.setAttribute("aria-live", "polite");
  bar.append(runButton, cancelButton, progress, status);

  const error = document.createElement("div");
  error.className = "sw-error";
  error.hidden = true;

  const tableWrap = document.createElement("div");
  tableWrap.style.overflowX = "auto";
  const table = document.createElement("table");
  table.className = "sw-compare-table sw-mono";
  table.style.borderCollapse = "collapse";
  table.style.fontSize = "12px";
  const thead = document.createElement("thead");
  const tbody = document.createElement("tbody");
  table.append(thead, tbody);
  tableWrap.append(table);

  const chartBar = document.createElement("div");
  chartBar.className = "sw-row";
  const chartLabel = document.createElement("label");
  chartLabel.className = "sw-label";
  chartLabel.textContent = "chart metric";
  const metricSelect = document.createElement("select");
  metricSelect.className = "sw-select sw-compare-metric";
  metricSelect.setAttribute("aria-label", "Chart metric");
  chartLabel.append(" ", metricSelect);
  chartBar.append(chartLabel);
  const chart = document.createElement("div");
  chart.className = "sw-chart sw-compare-chart";

  root.append(bar, error, tableWrap, chartBar, chart);
  el.appendChild(root);

  let sortKey = null;
  let sortDir = 1;

  const cellStyle = (cell) => {
    cell.style.padding = "2px 8px";
    cell.style.borderBottom = "1px solid var(--jp-border-color2, #ddd)";
    cell.style.textAlign = "right";
    cell.style.whiteSpace = "nowrap";
  };

  const drawTable = () => {
    const allRows = model.get("rows") ?? [];
    const columns = visibleColumns(model.get("columns") ?? [], allRows);
    const rows = sortRows(allRows, sortKey, sortDir);
    thead.replaceChildren();
    tbody.replaceChildren();
    const head = document.createElement("tr");
    for (const column of columns) {
      const th = document.createElement("th");
      cellStyle(th);
      th.style.cursor = "pointer";
      th.style.userSelect = "none";
      th.dataset.key = column.key;
      th.title = column.title ?? "";
      th.tabIndex = 0;
      const arrow = sortKey === column.key ? (sortDir > 0 ? " ▲" : " ▼") : "";
      th.textContent = `${column.label}${arrow}`;
      th.setAttribute("aria-label", `${column.label}: sort by this column`);
      th.setAttribute(
        "aria-sort",
        sortKey === column.key ? (sortDir > 0 ? "ascending" : "descending") : "none",
      );
      const onSort = () => {
        if (sortKey === column.key) {
          sortDir = -sortDir;
        } else {
          sortKey = column.key;
          sortDir = 1;
        }
        drawTable();
      };
      th.addEventListener("click", onSort);
      th.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          onSort();
        }
      });
      head.append(th);
    }
    thead.append(head);
    for (const row of rows) {
      const tr = document.createElement("tr");
      for (const column of columns) {
        const td = document.createElement("td");
        cellStyle(td);
        td.dataset.key = column.key;
        if (typeof row[column.key] === "string") {
          td.style.textAlign = "left";
        }
        let text = formatValue(row[column.key]);
        if (column.band && row[column.band[0]] !== undefined && row[column.key] !== null) {
          text += ` [${formatValue(row[column.band[0]])}, ${formatValue(row[column.band[1]])}]`;
        }
        if (WARNING_VERDICTS.has(row[column.key])) {
          td.style.color = "var(--jp-warn-color1, #b45309)";
        }
        // textContent, never innerHTML: method names and notes are user-provided.
        td.textContent = text;
        tr.append(td);
      }
      tbody.append(tr);
    }
  };

  const drawMetrics = () => {
    const metrics = model.get("metrics") ?? [];
    metricSelect.replaceChildren(
      ...metrics.map((name) => {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = name;
        return option;
      }),
    );
    metricSelect.value = model.get("metric");
  };

  const drawChart = () => {
    const spec = model.get("spec");
    if (!spec || Object.keys(spec).length === 0) {
      destroyChart(chart);
      return;
    }
    renderChart(chart, spec).catch((err) => {
      error.textContent = `Chart failed to render: ${err?.message ?? err}`;
      error.hidden = false;
    });
  };

  const drawStatus = () => {
    const running = Boolean(model.get("running"));
    progress.value = model.get("progress") ?? 0;
    status.textContent = model.get("status") ?? "";
    runButton.disabled = running;
    cancelButton.disabled = !running;
    const message = model.get("error") ?? "";
    if (message) {
      error.textContent = message;
      error.hidden = false;
    } else if (!running) {
      error.hidden = true;
    }
  };

  const onRun = () => model.send({ type: "run" });
  const onCancel = () => model.send({ type: "cancel" });
  const onMetric = () => {
    model.set("metric", metricSelect.value);
    model.save_changes();
  };

  runButton.addEventListener("click", onRun);
  cancelButton.addEventListener("click", onCancel);
  metricSelect.addEventListener("change", onMetric);
  const handlers = [
    ["change:rows", drawTable],
    ["change:columns", drawTable],
    ["change:spec", drawChart],
    ["change:metrics", drawMetrics],
    ["change:metric", drawMetrics],
    ["change:progress", drawStatus],
    ["change:status", drawStatus],
    ["change:running", drawStatus],
    ["change:error", drawStatus],
  ];
  for (const [name, handler] of handlers) {
    model.on(name, handler);
  }
  drawTable();
  drawMetrics();
  drawStatus();
  drawChart();

  return () => {
    runButton.removeEventListener("click", onRun);
    cancelButton.removeEventListener("click", onCancel);
    metricSelect.removeEventListener("change", onMetric);
    for (const [name, handler] of handlers) {
      model.off(name, handler);
    }
    destroyChart(chart);
  };
}

export default { render };
