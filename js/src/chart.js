// Shared chart helper for the steerwidgets front end.
//
// vega, vega-lite and vega-embed are bundled from npm into each widget module:
// nothing is fetched from a CDN, so charts render offline.
//
// Usage from a widget module:
//
//   import { renderChart } from "./chart.js";
//   const chart = await renderChart(el, spec);   // el: HTMLElement, spec: vega-lite dict
//   ...
//   chart.destroy();                              // in the widget's cleanup
//
// Rendering into an element that already holds a chart replaces (and finalizes) the old one,
// and a stale render that finishes after a newer one is discarded, so it is safe to call
// renderChart on every `change:spec` event.
import embed from "vega-embed";
import * as vegaLite from "vega-lite";

/** The vega-lite version bundled into this module, e.g. "6.5.0". */
export const VEGA_LITE_VERSION = vegaLite.version;

const VL_SCHEMA = `https://vega.github.io/schema/vega-lite/v${vegaLite.version}.json`;
const VL_SCHEMA_RE = /^https?:\/\/vega\.github\.io\/schema\/vega-lite\/v[0-9][^/]*\.json$/;

/**
 * @typedef {object} ChartHandle
 * @property {import("vega").View | null} view  the vega View (null once destroyed or if superseded)
 * @property {() => void} destroy               finalize the view and empty the element
 */

/**
 * @typedef {object} ChartOptions
 * @property {boolean} [followTheme=true]  derive axis/legend/title colours from JupyterLab's
 *   `--jp-*` CSS variables and re-render when the JupyterLab theme changes
 * @property {import("vega-embed").EmbedOptions} [embedOptions]  extra vega-embed options, merged
 *   over the defaults (`actions: false`, `renderer: "svg"`, the theme `config`)
 */

/**
 * Return a shallow copy of a vega-lite spec whose `$schema` points at the bundled vega-lite
 * version. Altair 6 emits e.g. `.../vega-lite/v6.4.1.json`; vega-embed only warns on a mismatch,
 * but a spec from an older/newer Altair (v5 or v7 schema) would log a noisy warning for every
 * render. Pure Vega specs (`.../schema/vega/...`) are returned unchanged.
 * @param {Record<string, any>} spec
 * @returns {Record<string, any>}
 */
export function normalizeSpec(spec) {
  if (!spec || typeof spec !== "object") {
    return spec;
  }
  const schema = spec.$schema;
  if (typeof schema === "string" && VL_SCHEMA_RE.test(schema) && schema !== VL_SCHEMA) {
    return { ...spec, $schema: VL_SCHEMA };
  }
  return spec;
}

/**
 * @param {Record<string, any> | null | undefined} spec
 * @returns {spec is null | undefined}
 */
function isEmptySpec(spec) {
  return !spec || typeof spec !== "object" || Object.keys(spec).length === 0;
}

/**
 * Read a CSS custom property as seen from `el`, with a fallback.
 * @param {Element} el
 * @param {string} name
 * @param {string} fallback
 */
function cssVar(el, name, fallback) {
  const value = getComputedStyle(el).getPropertyValue(name).trim();
  return value || fallback;
}

/**
 * A vega-lite `config` whose colours follow the current JupyterLab theme. SVG presentation
 * attributes cannot use `var(--jp-...)`, so the variables are resolved at render time.
 * The spec's own `config` still takes precedence over these values.
 * @param {Element} el
 * @returns {Record<string, any>}
 */
export function themeConfig(el) {
  const fg = cssVar(el, "--jp-ui-font-color1", "#222");
  const fg2 = cssVar(el, "--jp-ui-font-color2", "#555");
  const border = cssVar(el, "--jp-border-color2", "#ccc");
  const grid = cssVar(el, "--jp-border-color3", "#eee");
  const font = cssVar(el, "--jp-ui-font-family", "sans-serif");
  const axis = {
    labelColor: fg2,
    titleColor: fg,
    domainColor: border,
    tickColor: border,
    gridColor: grid,
    labelFont: font,
    titleFont: font,
  };
  return {
    background: "transparent",
    font,
    axis,
    legend: { labelColor: fg2, titleColor: fg, labelFont: font, titleFont: font },
    title: { color: fg, subtitleColor: fg2, font },
    header: { labelColor: fg2, titleColor: fg },
    view: { stroke: border },
    text: { color: fg },
  };
}

/**
 * Per-element state: the latest render token, the live embed result, and what to re-render
 * on a theme change.
 * @type {WeakMap<HTMLElement, {token: number, result: any, spec: any, options: ChartOptions}>}
 */
const state = new WeakMap();
/** Elements whose charts follow the JupyterLab theme. @type {Set<HTMLElement>} */
const themed = new Set();
/** @type {MutationObserver | null} */
let themeObserver = null;
/** Global (not per element) so a render that outlives destroyChart() is recognised as stale. */
let renderCounter = 0;

function ensureThemeObserver() {
  if (themeObserver || typeof MutationObserver === "undefined" || !document.body) {
    return;
  }
  // JupyterLab sets data-jp-theme-name / data-jp-theme-light on <body> when the theme changes;
  // its CSS variables are swapped at about the same time, so re-render a couple of frames later.
  themeObserver = new MutationObserver(() => {
    requestAnimationFrame(() =>
      requestAnimationFrame(() => {
        for (const el of [...themed]) {
          const s = state.get(el);
          if (!el.isConnected || !s) {
            themed.delete(el);
            continue;
          }
          renderChart(el, s.spec, s.options).catch((err) => console.error(err));
        }
      }),
    );
  });
  themeObserver.observe(document.body, {
    attributes: true,
    attributeFilter: ["data-jp-theme-name", "data-jp-theme-light"],
  });
}

/**
 * Finalize the chart in `el` (if any), cancel any render in flight, and empty the element.
 * @param {HTMLElement} el
 */
export function destroyChart(el) {
  const s = state.get(el);
  s?.result?.finalize();
  state.delete(el);
  themed.delete(el);
  el.replaceChildren();
}

/**
 * Render a vega-lite (or vega) spec into `el` with the bundled vega-embed: SVG renderer,
 * no action menu, colours that follow the JupyterLab theme. An empty spec (`{}`, null) just
 * clears the element. The chart is drawn into a fresh child `<div class="sw-chart-inner">`
 * that replaces the previous chart only once it has rendered (no flicker, no interleaving of
 * concurrent renders).
 * @param {HTMLElement} el
 * @param {Record<string, any> | null | undefined} spec
 * @param {ChartOptions} [options]
 * @returns {Promise<ChartHandle>}
 */
export async function renderChart(el, spec, options = {}) {
  const followTheme = options.followTheme !== false;
  const prev = state.get(el);
  const token = ++renderCounter;
  const entry = { token, result: prev?.result ?? null, spec, options };
  state.set(el, entry);
  el.classList.add("sw-chart");

  /** @type {ChartHandle} */
  const handle = {
    view: null,
    destroy() {
      handle.view = null;
      destroyChart(el);
    },
  };

  if (isEmptySpec(spec)) {
    entry.result?.finalize();
    entry.result = null;
    themed.delete(el);
    el.replaceChildren();
    return handle;
  }

  const inner = document.createElement("div");
  inner.className = "sw-chart-inner sw-chart-pending";
  el.appendChild(inner);
  /** @type {import("vega-embed").EmbedOptions} */
  const embedOptions = {
    actions: false,
    renderer: "svg",
    ...(followTheme ? { config: themeConfig(el) } : {}),
    ...(options.embedOptions ?? {}),
  };
  let result;
  try {
    result = await embed(inner, normalizeSpec(spec), embedOptions);
  } catch (err) {
    inner.remove();
    throw err;
  }
  const current = state.get(el);
  if (!current || current.token !== token) {
    // A newer render (or destroy) happened while this one was running.
    result.finalize();
    inner.remove();
    return handle;
  }
  if (current.result && current.result !== result) {
    current.result.finalize();
  }
  current.result = result;
  for (const child of [...el.children]) {
    if (child !== inner) {
      child.remove();
    }
  }
  inner.classList.remove("sw-chart-pending");
  handle.view = result.view;
  if (followTheme) {
    themed.add(el);
    ensureThemeObserver();
  } else {
    themed.delete(el);
  }
  return handle;
}
