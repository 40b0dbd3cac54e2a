// ReliabilityReport front end. Python side: steerwidgets/widgets/reliability.py (ReliabilityReport).
//
// Thin by design: Python runs the engine on a background thread and writes results to synced traits;
// this module draws them and sends button clicks as custom messages ({type: "run" | "cancel" |
// "export" | "open"}). Model output and dataset text are shown with textContent only, never innerHTML.
// The named exports (h, clickableChart, labChrome, ...) are shared with layersweep.js.
import { destroyChart, renderChart, themeConfig } from "./chart.js";

/**
 * @typedef {object} ListedItem
 * @property {"backfires" | "anti-steerable" | "non-monotonic"} kind
 * @property {number} index       position in the test items
 * @property {number} slope       OLS slope of the propensity over the strengths
 * @property {string} question    dataset text (untrusted)
 * @property {string} matching    the behaviour-matching letter
 * @property {number} propensity_min
 * @property {number} propensity_max
 *
 * @typedef {object} ReportModel
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
 * @property {Record<string, number>} timings
 * @property {string | null} opened_playground   "anywidget:<model id>" of the opened Playground
 * @property {number} layer
 * @property {number} n_test
 * @property {number} n_train
 * @property {string} shift_prefix
 * @property {number} open_strength
 * @property {Record<string, any>} precheck
 * @property {Record<string, any>} report
 * @property {{fraction: number, count: number, n_items: number, level: string, message: string}} anti
 * @property {ListedItem[]} items
 * @property {Record<string, any>} propensity_spec
 * @property {Record<string, any>} slopes_spec
 * @property {Record<string, any>} generalisation
 * @property {Record<string, any>} context_effects  protocol -> ContextEffect summary ({} when not asked)
 */

const STYLE_ID = "sw-reliability-style";
// Styles for both reliability widgets; only `--jp-*` variables (with fallbacks) for colours.
const STYLE = `
.sw-rl .sw-rl-title { font-weight: 600; font-size: var(--jp-ui-font-size2, 15px); }
.sw-rl .sw-rl-progress { min-width: 160px; accent-color: var(--jp-brand-color1, #1976d2); }
.sw-rl .sw-rl-grid { display: flex; flex-wrap: wrap; gap: 6px 18px; align-items: baseline; }
.sw-rl .sw-rl-num { font-variant-numeric: tabular-nums; font-weight: 600; }
.sw-rl .sw-rl-table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 4px 0; }
.sw-rl .sw-rl-table th, .sw-rl .sw-rl-table td { padding: 2px 8px; text-align: left;
  border-bottom: 1px solid var(--jp-border-color2, #ddd); }
.sw-rl .sw-rl-light { display: inline-block; width: 12px; height: 12px; border-radius: 50%;
  vertical-align: middle; margin-right: 4px; border: 1px solid var(--jp-border-color1, #999); }
.sw-rl .sw-rl-green { background: var(--jp-success-color1, #388e3c); }
.sw-rl .sw-rl-amber { background: var(--jp-warn-color1, #f57c00); }
.sw-rl .sw-rl-red { background: var(--jp-error-color1, #d32f2f); }
.sw-rl .sw-rl-badge { border-radius: 3px; padding: 0 6px; font-size: var(--jp-ui-font-size0, 11px);
  border: 1px solid var(--jp-border-color2, #ccc); white-space: nowrap; }
.sw-rl .sw-rl-badge.sw-rl-warning { color: var(--jp-ui-inverse-font-color1, #fff);
  background: var(--jp-error-color1, #d32f2f); border-color: var(--jp-error-color1, #d32f2f); }
.sw-rl .sw-rl-badge.sw-rl-notice { color: var(--jp-ui-font-color1, #222);
  background: var(--jp-warn-color2, #ffcc80); border-color: var(--jp-warn-color1, #f57c00); }
.sw-rl .sw-rl-badge.sw-rl-ok { color: var(--jp-success-color1, #388e3c); }
.sw-rl .sw-rl-note { color: var(--jp-ui-font-color1, #222); background: rgba(2, 136, 209, 0.08);
  border-left: 3px solid var(--jp-info-color1, #0288d1); padding: 4px 8px; white-space: pre-wrap; }
.sw-rl .sw-rl-charts { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.sw-rl .sw-rl-list { list-style: none; margin: 0; padding: 0; display: flex; flex-direction: column; gap: 4px;
  max-height: 360px; overflow-y: auto; }
.sw-rl .sw-rl-item { display: grid; grid-template-columns: auto 1fr auto; gap: 2px 8px; align-items: center;
  padding: 4px 6px; border-bottom: 1px solid var(--jp-border-color3, #eee); }
.sw-rl .sw-rl-item .sw-text { grid-column: 1 / -1; max-height: 6.5em; overflow-y: auto; }
.sw-rl h3 { font-size: var(--jp-ui-font-size1, 13px); margin: 6px 0 2px; }
.sw-rl .sw-rl-playground:empty { display: none; }
.sw-rl .sw-rl-playground { border-top: 2px solid var(--jp-brand-color1, #1976d2); padding-top: 4px; }
.sw-rl .sw-rl-input { width: 6em; }
.sw-rl .sw-chart .mark-rect path, .sw-rl .sw-chart .mark-symbol path { cursor: pointer; }
`;

/** Add the reliability styles to the document once. */
export function ensureStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = STYLE;
  document.head.appendChild(style);
}

/**
 * Create an element with a class and attributes (attributes only; text goes in via textContent).
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {string} [className]
 * @param {Record<string, string>} [attrs]
 * @param {string} [text]
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, className, attrs = {}, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * A button with a visible label and an aria-label.
 * @param {string} text
 * @param {string} aria
 * @param {string} [extra]  extra classes
 */
export function button(text, aria, extra = "") {
  return h("button", `sw-button ${extra}`.trim(), { type: "button", "aria-label": aria }, text);
}

/**
 * @param {number | null | undefined} x
 * @param {number} [digits]
 */
export function fmt(x, digits = 3) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  return x.toFixed(digits);
}

/**
 * @param {number | null | undefined} x
 */
export function pct(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  return `${Math.round(x * 100)}%`;
}

/**
 * @param {number} x
 */
export function signed(x) {
  return `${x >= 0 ? "+" : ""}${x}`;
}

/**
 * Draws a vega-lite spec into `el` with a click listener on its marks, re-drawn (and re-wired) when the
 * JupyterLab theme changes. chart.js's own theme following would replace the view and drop the
 * listener, so the theme is handled here.
 * @param {HTMLElement} el
 * @param {(datum: Record<string, any>) => void} onClick  called with the clicked mark's data row
 * @param {(message: string) => void} onError
 * @returns {{ draw: (spec: Record<string, any>) => void, destroy: () => void }}
 */
export function clickableChart(el, onClick, onError) {
  /** @type {Record<string, any> | null} */
  let current = null;
  /** @param {any} _event @param {any} item */
  const listener = (_event, item) => {
    const datum = item && item.datum;
    if (datum && typeof datum === "object") onClick(datum);
  };
  const draw = (/** @type {Record<string, any>} */ spec) => {
    current = spec;
    if (!spec || Object.keys(spec).length === 0) {
      destroyChart(el);
      return;
    }
    renderChart(el, spec, { followTheme: false, embedOptions: { config: themeConfig(el) } })
      .then((handle) => {
        if (handle.view) handle.view.addEventListener("click", listener);
      })
      .catch((err) => onError(`Chart failed to render: ${err?.message ?? err}`));
  };
  const observer = new MutationObserver(() => {
    // JupyterLab swaps its CSS variables about when it sets these attributes: redraw a little later.
    requestAnimationFrame(() => requestAnimationFrame(() => current && draw(current)));
  });
  observer.observe(document.body, {
    attributes: true,
    attributeFilter: ["data-jp-theme-name", "data-jp-theme-light"],
  });
  return {
    draw,
    destroy() {
      observer.disconnect();
      destroyChart(el);
    },
  };
}

/**
 * Renders the widget referenced by `ref` ("anywidget:<id>", the opened Playground) into `box`,
 * replacing what was there; returns a function that removes it.
 * @param {import("@anywidget/types").Host} host
 * @param {HTMLElement} box
 * @param {string | null} ref
 * @param {(message: string) => void} onError
 */
export function mountPlayground(host, box, ref, onError) {
  const controller = new AbortController();
  box.replaceChildren();
  if (!ref) return () => controller.abort();
  const inner = h("div", "sw-rl-playground-inner");
  box.append(inner);
  host
    .getWidget(ref)
    .then((widget) => {
      if (controller.signal.aborted) return undefined;
      return widget.render({ el: inner, signal: controller.signal });
    })
    .catch((err) => {
      if (!controller.signal.aborted) onError(`Could not show the Playground: ${err?.message ?? err}`);
    });
  return () => {
    controller.abort();
    inner.remove();
  };
}

/**
 * The shared top bar: title, Run, Cancel, progress bar and status line.
 * @param {string} title
 */
export function runBar(title) {
  const bar = h("div", "sw-row");
  const titleEl = h("span", "sw-rl-title", {}, title);
  const run = button("Run", "Run the computation", "sw-button-primary sw-rl-run");
  const cancel = button("Cancel", "Cancel the run", "sw-rl-cancel");
  const progress = h("progress", "sw-rl-progress", { max: "1", "aria-label": "Progress" });
  const stage = h("span", "sw-label sw-rl-stage", { "aria-live": "polite" });
  bar.append(titleEl, run, cancel, progress, stage);
  return { bar, titleEl, run, cancel, progress, stage };
}

/**
 * What both lab widgets share: Run / Cancel wired to Python, the progress and status line, errors, the
 * message line and the opened Playground. Registers its trait handlers; returns the teardown.
 * @param {any} model
 * @param {import("@anywidget/types").Host} host
 * @param {{top: ReturnType<typeof runBar>, root: HTMLElement, message: HTMLElement,
 *          playgroundBox: HTMLElement, showError: (text: string) => void}} parts
 */
export function labChrome(model, host, { top, root, message, playgroundBox, showError }) {
  let unmount = () => {};
  const drawStatus = () => {
    const running = Boolean(model.get("running"));
    top.run.disabled = running;
    top.cancel.disabled = !running;
    top.progress.value = model.get("progress") ?? 0;
    top.stage.textContent = model.get("stage") ?? "";
    root.dataset.status = model.get("status") ?? "";
    showError(model.get("error") ?? "");
  };
  const drawPlayground = () => {
    unmount();
    unmount = mountPlayground(host, playgroundBox, model.get("opened_playground"), showError);
  };
  const drawMessage = () => {
    message.textContent = model.get("message") ?? "";
  };
  const onRun = () => model.send({ type: "run" });
  const onCancel = () => model.send({ type: "cancel" });
  top.run.addEventListener("click", onRun);
  top.cancel.addEventListener("click", onCancel);
  /** @type {[string, () => void][]} */
  const handlers = [
    ...["running", "status", "stage", "progress", "error"].map(
      (name) => /** @type {[string, () => void]} */ ([`change:${name}`, drawStatus]),
    ),
    ["change:opened_playground", drawPlayground],
    ["change:message", drawMessage],
  ];
  for (const [name, handler] of handlers) model.on(name, handler);
  drawStatus();
  drawPlayground();
  drawMessage();
  return () => {
    top.run.removeEventListener("click", onRun);
    top.cancel.removeEventListener("click", onCancel);
    for (const [name, handler] of handlers) model.off(name, handler);
    unmount();
  };
}

/**
 * @param {ListedItem} item
 * @param {(index: number) => void} onOpen
 */
function itemRow(item, onOpen) {
  const li = h("li", `sw-rl-item sw-rl-${item.kind === "non-monotonic" ? "nonmono" : "anti"}`);
  li.dataset.index = String(item.index);
  const badge = h(
    "span",
    `sw-rl-badge ${item.kind === "backfires" ? "sw-rl-warning" : "sw-rl-notice"}`,
    {},
    item.kind,
  );
  const meta = h(
    "span",
    "sw-mono sw-label",
    {},
    `#${item.index} slope ${fmt(item.slope)} · m ∈ [${fmt(item.propensity_min, 2)}, ${fmt(item.propensity_max, 2)}] · matching (${item.matching})`,
  );
  const question = h("div", "sw-text sw-rl-question");
  question.textContent = item.question; // dataset text: never innerHTML
  const open = button("Open in Playground", `Open item ${item.index} in the Playground`, "sw-rl-open");
  open.addEventListener("click", () => onOpen(item.index));
  li.append(badge, meta, open, question);
  return li;
}

/** @type {import("@anywidget/types").Render<ReportModel>} */
function render({ model, el, host }) {
  ensureStyle();
  const root = h("div", "sw-root sw-rl sw-reliability");
  const top = runBar("Reliability report");
  const exportHtml = button("Export HTML", "Export the report as a standalone HTML file", "sw-rl-export-html");
  const exportJson = button("Export JSON", "Export the report as JSON", "sw-rl-export-json");
  top.bar.append(exportHtml, exportJson);
  const settings = h("div", "sw-label sw-rl-settings");
  const message = h("div", "sw-label sw-rl-message", { "aria-live": "polite" });
  const error = h("div", "sw-error sw-rl-error");
  error.hidden = true;

  const pre = h("div", "sw-panel sw-rl-precheck", { "aria-label": "Pre-check" });
  pre.hidden = true;
  const summary = h("div", "sw-panel sw-rl-grid sw-rl-summary", { "aria-label": "Summary" });
  summary.hidden = true;
  const antiBox = h("div", "sw-rl-anti", { role: "status" });
  const warnings = h("div", "sw-rl-warnings");
  const charts = h("div", "sw-rl-charts");
  const propChartEl = h("div", "sw-chart sw-rl-propensity-chart", { "aria-label": "Mean propensity chart" });
  const slopeChartEl = h("div", "sw-chart sw-rl-slopes-chart", {
    "aria-label": "Per-example slopes: click a point to open that item in the Playground",
  });
  charts.append(propChartEl, slopeChartEl);
  const gen = h("div", "sw-panel sw-rl-generalisation", { "aria-label": "Generalisation" });
  gen.hidden = true;
  const ctxBox = h("div", "sw-panel sw-rl-contexts", { "aria-label": "Effect in realistic contexts" });
  ctxBox.hidden = true;

  const itemsBox = h("div", "sw-rl-items");
  const openRow = h("div", "sw-row");
  const strengthId = `sw-rl-strength-${Math.random().toString(36).slice(2)}`;
  const strengthLabel = h("label", "sw-label", { for: strengthId }, "Open in the Playground at strength");
  const strengthInput = h("input", "sw-input sw-rl-input sw-rl-open-strength", {
    id: strengthId,
    type: "number",
    step: "0.5",
    "aria-label": "Strength for opening items in the Playground",
  });
  openRow.append(strengthLabel, strengthInput);
  const antiHead = h(
    "h3",
    "",
    {},
    "Inputs that backfire beyond random directions, then those with slope ≤ 0 (raw), worst first",
  );
  const antiList = h("ul", "sw-rl-list sw-rl-anti-list", { "aria-label": "Anti-steerable items" });
  const monoHead = h("h3", "", {}, "Non-monotonic inputs (the effect changes direction along λ)");
  const monoList = h("ul", "sw-rl-list sw-rl-nonmono-list", { "aria-label": "Non-monotonic items" });
  itemsBox.append(openRow, antiHead, antiList, monoHead, monoList);
  itemsBox.hidden = true;
  const pgBox = h("div", "sw-rl-playground", { "aria-label": "Opened Playground" });

  root.append(top.bar, settings, message, error, pre, summary, antiBox, warnings, charts, gen, ctxBox, itemsBox, pgBox);
  el.appendChild(root);

  const showError = (/** @type {string} */ text) => {
    error.textContent = text;
    error.hidden = !text;
  };
  const open = (/** @type {number} */ index) => model.send({ type: "open", index });
  const propChart = clickableChart(propChartEl, () => {}, showError);
  const slopeChart = clickableChart(
    slopeChartEl,
    (datum) => {
      if (Number.isInteger(datum.index)) open(datum.index);
    },
    showError,
  );

  const drawExports = () => {
    const ready = Object.keys(model.get("report") ?? {}).length > 0;
    exportHtml.disabled = Boolean(model.get("running")) || !ready;
    exportJson.disabled = exportHtml.disabled;
  };

  const drawSettings = () => {
    const strengths = (model.get("strengths") ?? []).map(signed).join(", ");
    const train = model.get("n_train") ? `, vector built from ${model.get("n_train")} training items` : "";
    settings.textContent =
      `${model.get("model_name")} · ${model.get("vector_method")} vector${train} · layer ${model.get("layer")} · ` +
      `positions ${model.get("positions")} · ${model.get("n_test")} test items · strengths ${strengths}`;
    if (document.activeElement !== strengthInput) strengthInput.value = String(model.get("open_strength"));
  };

  const drawPrecheck = () => {
    const p = model.get("precheck") ?? {};
    pre.replaceChildren();
    pre.hidden = Object.keys(p).length === 0;
    if (pre.hidden) return;
    const light = h("span", `sw-rl-light sw-rl-${p.level}`, { role: "img", "aria-label": `pre-check ${p.level}` });
    const head = h("div", "");
    head.append(light, h("b", "", {}, `Pre-check: ${String(p.level).toUpperCase()}`));
    const nums = h("div", "sw-rl-grid");
    nums.append(
      h("span", "", {}, `mean cosine of differences `),
      h("span", "sw-rl-num", {}, fmt(p.mean_cosine, 2)),
      h("span", "", {}, "separation along v "),
      h("span", "sw-rl-num", {}, pct(p.separation)),
      h("span", "", {}, "effect size d "),
      h("span", "sw-rl-num", {}, fmt(p.effect_size, 2)),
    );
    const reason = h("div", "sw-label", {}, `${p.reason} (Braun et al. 2025; thresholds are our defaults)`);
    pre.append(head, nums, reason);
  };

  const drawReport = () => {
    const rep = model.get("report") ?? {};
    const ready = Object.keys(rep).length > 0;
    summary.hidden = !ready;
    itemsBox.hidden = !ready;
    summary.replaceChildren();
    antiBox.replaceChildren();
    warnings.replaceChildren();
    if (!ready) return;
    const anti = model.get("anti") ?? {};
    const stat = (/** @type {string} */ name, /** @type {string} */ value, /** @type {string} */ title) => {
      const span = h("span", "", { title });
      span.append(`${name} `, h("span", "sw-rl-num", {}, value));
      summary.append(span);
    };
    stat("steerability", fmt(rep.steerability), "mean per-item OLS slope of the propensity over λ");
    stat("verdict", String(rep.verdict ?? "").replaceAll("_", " "), "letter protocol, against random directions");
    stat("backfires", `${anti.backfires ?? 0}/${anti.n_items}`, "slope below the item's random-direction band");
    const raw = `${pct(rep.anti_steerable_fraction)} (${anti.count}/${anti.n_items})`;
    stat("anti-steerable (s ≤ 0)", raw, "raw, Tan et al.; not compared with the null");
    stat("non-monotonic", pct(rep.non_monotonic_fraction), "the propensity changes direction along λ");
    stat("A/B-bias R²", fmt(rep.ab_bias_r2, 2), "R² of the slopes regressed on 1[matching letter is A]");
    const level = anti.level ?? "ok";
    const badge = h("span", `sw-rl-badge sw-rl-${level}`, {}, level === "ok" ? "ok" : level);
    const line = h("div", level === "warning" ? "sw-warning" : level === "notice" ? "sw-rl-note" : "sw-label");
    line.append(badge, " ", anti.message ?? "");
    antiBox.append(line);
    for (const w of rep.warnings ?? []) {
      if (String(w.message).includes("anti-steerable")) continue; // shown above with its numbers
      warnings.append(h("div", w.level === "warning" ? "sw-warning" : "sw-rl-note", {}, w.message));
    }
  };

  const drawItems = () => {
    /** @type {ListedItem[]} */
    const items = model.get("items") ?? [];
    const anti = items.filter((i) => i.kind !== "non-monotonic");
    const mono = items.filter((i) => i.kind === "non-monotonic");
    antiList.replaceChildren(...anti.map((i) => itemRow(i, open)));
    monoList.replaceChildren(...mono.map((i) => itemRow(i, open)));
    if (!anti.length) antiList.append(h("li", "sw-muted", {}, "None: every input moves with the vector."));
    if (!mono.length) monoList.append(h("li", "sw-muted", {}, "None."));
  };

  const drawGeneralisation = () => {
    const g = model.get("generalisation") ?? {};
    gen.replaceChildren();
    gen.hidden = Object.keys(g).length === 0;
    if (gen.hidden) return;
    gen.append(h("b", "", {}, "Generalisation (Tan et al. 2024)"));
    if (g.skipped) {
      gen.append(h("div", "sw-label", {}, `Skipped: ${g.skipped}`));
      return;
    }
    const prefix = h("div", "");
    prefix.append("Every question prefixed with ", h("code", "sw-mono", {}, JSON.stringify(g.prefix)));
    const nums = h("div", "sw-rl-grid");
    const rel = g.relative_steerability;
    nums.append(
      h("span", "", {}, `in distribution s(v_A, D_A) ${fmt(g.steerability_in_distribution)}`),
      h("span", "", {}, `shifted s(v_A, D_B) ${fmt(g.steerability_shifted_vA)}`),
      h("span", "", {}, `shifted-trained s(v_B, D_B) ${fmt(g.steerability_shifted_vB)}`),
      h("span", "sw-rl-num", {}, `relative steerability ${rel === null ? "skipped (s(v_B, D_B) < 0.25)" : fmt(rel, 2)}`),
    );
    gen.append(prefix, nums, h("div", "sw-label", {}, g.definition ?? ""));
  };

  const drawContexts = () => {
    const all = model.get("context_effects") ?? {};
    ctxBox.replaceChildren();
    ctxBox.hidden = Object.keys(all).length === 0;
    if (ctxBox.hidden) return;
    ctxBox.append(h("b", "", {}, "In realistic contexts (the same items after a dialogue or a tool call)"));
    for (const [protocol, c] of Object.entries(all)) {
      const table = h("table", "sw-rl-table sw-rl-context-table", {
        "aria-label": `Effect in context, ${protocol.replace("_", "-")} protocol`,
      });
      const head = h("tr");
      for (const name of ["format", "steerability", "vs random directions", "ratio to bare", "change (95 % CI)"]) {
        head.append(h("th", "", {}, name));
      }
      table.append(head);
      const judged = c.judged ?? {};
      const row = (format, effect, verdict, ratio, change) => {
        const tr = h("tr");
        for (const cell of [format, effect, verdict, ratio, change]) tr.append(h("td", "", {}, cell));
        table.append(tr);
      };
      row("bare", fmt(c.bare), judged.bare?.verdict ?? "no null run", "", "");
      for (const [kind, k] of Object.entries(c.contexts ?? {})) {
        const ci = (k.difference_ci ?? []).map((x) => fmt(x, 2)).join(", ");
        row(
          kind.replace("_", "-"),
          fmt(k.effect),
          judged[kind]?.verdict ?? "no null run",
          k.ratio_to_bare === null ? "not reported (bare < 0.25)" : fmt(k.ratio_to_bare, 2),
          `${k.verdict} [${ci}]`,
        );
      }
      ctxBox.append(h("div", "sw-label", {}, `${protocol.replace("_", "-")} protocol, ${c.items_compared ?? c.n_items} items`), table);
      ctxBox.append(h("div", "sw-label", {}, c.verdict ?? ""));
    }
  };

  const onExportHtml = () => model.send({ type: "export", format: "html" });
  const onExportJson = () => model.send({ type: "export", format: "json" });
  // Enter (inside JupyterLab it fires no `change` in a number input), change and blur (Tab, a click
  // elsewhere) commit what the user typed; on blur the box shows the trait again.
  let strengthEdited = false;
  const onStrengthInput = () => {
    strengthEdited = true;
  };
  const onStrength = () => {
    if (!strengthEdited) return;
    strengthEdited = false;
    const value = parseFloat(strengthInput.value);
    if (Number.isFinite(value) && value !== model.get("open_strength")) {
      model.set("open_strength", value);
      model.save_changes();
    }
  };
  const onStrengthKey = (/** @type {KeyboardEvent} */ e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      onStrength();
    }
  };
  const onStrengthBlur = () => {
    onStrength();
    strengthInput.value = String(model.get("open_strength"));
  };
  exportHtml.addEventListener("click", onExportHtml);
  exportJson.addEventListener("click", onExportJson);
  strengthInput.addEventListener("input", onStrengthInput);
  strengthInput.addEventListener("change", onStrength);
  strengthInput.addEventListener("keydown", onStrengthKey);
  strengthInput.addEventListener("blur", onStrengthBlur);

  const drawPropChart = () => propChart.draw(model.get("propensity_spec"));
  const drawSlopeChart = () => slopeChart.draw(model.get("slopes_spec"));
  /** @type {[string, () => void][]} */
  const handlers = [
    ["change:running", drawExports],
    ["change:report", drawExports],
    ["change:report", drawReport],
    ["change:anti", drawReport],
    ["change:items", drawItems],
    ["change:precheck", drawPrecheck],
    ["change:generalisation", drawGeneralisation],
    ["change:context_effects", drawContexts],
    ["change:propensity_spec", drawPropChart],
    ["change:slopes_spec", drawSlopeChart],
    ["change:open_strength", drawSettings],
    ["change:layer", drawSettings],
    ["change:vector_method", drawSettings],
  ];
  for (const [name, handler] of handlers) model.on(name, handler);
  const chromeDown = labChrome(model, host, { top, root, message, playgroundBox: pgBox, showError });
  drawExports();
  drawSettings();
  drawPrecheck();
  drawReport();
  drawItems();
  drawGeneralisation();
  drawContexts();
  drawPropChart();
  drawSlopeChart();

  return () => {
    chromeDown();
    exportHtml.removeEventListener("click", onExportHtml);
    exportJson.removeEventListener("click", onExportJson);
    strengthInput.removeEventListener("input", onStrengthInput);
    strengthInput.removeEventListener("change", onStrength);
    strengthInput.removeEventListener("keydown", onStrengthKey);
    strengthInput.removeEventListener("blur", onStrengthBlur);
    for (const [name, handler] of handlers) model.off(name, handler);
    propChart.destroy();
    slopeChart.destroy();
  };
}

export default { render };
