// Steering playground front end. Python side: steerwidgets/widgets/playground.py (Playground).
//
// Thin by design: this module draws synced traits and writes control traits; all model work
// happens in Python. Every piece of model output (continuations, tokens, warnings, errors) is
// shown with textContent / DOM nodes, never innerHTML.
import { destroyChart, renderChart } from "./chart.js";

/**
 * @typedef {object} Chip      one prompt token
 * @property {number} i        its position in the templated prompt
 * @property {string} text     its text
 * @property {boolean} user    whether it belongs to the user's own text (not the chat template)
 *
 * @typedef {object} TokenShift  one steered token and its likelihood shift
 * @property {string} text
 * @property {number | null} shift        log p_steered − log p_base
 * @property {number | null} lp_steered
 * @property {number | null} lp_base
 *
 * @typedef {object} TopKRow
 * @property {string} token
 * @property {number} p_base
 * @property {number} p_steered
 * @property {number} delta
 *
 * @typedef {object} StackRow  one extra steering, applied together with the main vector
 * @property {string} vector_name
 * @property {number} layer
 * @property {number} strength
 * @property {string} positions
 * @property {boolean} relative
 *
 * @typedef {object} PlaygroundModel
 * @property {string} prompt
 * @property {number} layer
 * @property {number} strength
 * @property {boolean} relative
 * @property {string} positions
 * @property {number} max_new_tokens
 * @property {number} seed
 * @property {string} vector_name
 * @property {string} actadd_positive
 * @property {string} actadd_negative
 * @property {StackRow[]} stack
 * @property {number} capability   items per capability set for the side-effect line; 0: off
 * @property {number} n_layers
 * @property {string} model_name
 * @property {string[]} vector_names
 * @property {number[]} vector_norms
 * @property {Chip[]} prompt_tokens
 * @property {boolean[]} steer_mask
 * @property {boolean} steer_generated
 * @property {string[]} targets
 * @property {number} n_ab_items
 * @property {string} status
 * @property {string} error
 * @property {string} base_text
 * @property {string} steered_text
 * @property {TokenShift[]} steered_tokens
 * @property {number | null} norm_ratio
 * @property {(number | null)[]} norm_ratios   one per steering: the main vector, then each stack row
 * @property {TopKRow[]} topk
 * @property {Record<string, any>} chart_spec
 * @property {{level: string, message: string}[]} warnings
 * @property {Record<string, number>} timings
 * @property {string} code
 */

const PRESETS = ["all", "prompt", "last", "generated"];
const CAPABILITY_N = 10; // items per capability set when the check is switched on from the page
const LIST_RE = /^\s*-?\d+(\s*,\s*-?\d+)*\s*$/;
const PROMPT_DEBOUNCE_MS = 500;

/**
 * Create an element with a class and optional attributes.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {string} [className]
 * @param {Record<string, string>} [attrs]
 * @returns {HTMLElementTagNameMap[K]}
 */
function h(tag, className, attrs = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/**
 * A label element with text (never HTML).
 * @param {string} text
 * @param {string} [forId]
 */
function label(text, forId) {
  const node = h("label", "sw-label");
  node.textContent = text;
  if (forId) node.htmlFor = forId;
  return node;
}

/**
 * The explicit index list in a position spec ("3,4,-1"), or null for presets and slices.
 * @param {string} spec
 * @returns {number[] | null}
 */
export function parseIndexList(spec) {
  if (typeof spec !== "string" || !LIST_RE.test(spec)) return null;
  return spec.split(",").map((s) => parseInt(s.trim(), 10));
}

/**
 * Where steering applies over the prompt's n tokens, computed locally so a click shows at once
 * (Python's mask replaces it when it arrives). Null when only Python can tell (slices).
 * @param {string} spec
 * @param {number} n
 * @returns {boolean[] | null}
 */
export function localMask(spec, n) {
  const mask = new Array(n).fill(false);
  if (spec === "all" || spec === "prompt") return mask.fill(true);
  if (spec === "generated") return mask;
  if (spec === "last") {
    if (n > 0) mask[n - 1] = true;
    return mask;
  }
  const list = parseIndexList(spec);
  if (!list) return null;
  for (const i of list) {
    const j = i < 0 ? n + i : i;
    if (j >= 0 && j < n) mask[j] = true;
  }
  return mask;
}

/**
 * Background colour for a likelihood shift: blue when steering made the token more likely,
 * red when less; the alpha grows with |shift| (saturating at 4 nats).
 * @param {number | null} shift
 */
export function shiftColor(shift) {
  if (shift === null || shift === undefined || !Number.isFinite(shift)) return "transparent";
  const a = Math.min(Math.abs(shift) / 4, 1) * 0.55;
  return shift >= 0 ? `rgba(25, 118, 210, ${a.toFixed(3)})` : `rgba(211, 47, 47, ${a.toFixed(3)})`;
}

/** @param {number} x @param {number} [digits] */
function signed(x, digits = 2) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "n/a";
  return (x >= 0 ? "+" : "") + x.toFixed(digits);
}

/** @param {number | undefined} ms */
function fmtMs(ms) {
  if (ms === undefined || ms === null || !Number.isFinite(ms)) return "";
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

/** @type {import("@anywidget/types").Render<PlaygroundModel>} */
function render({ model, el }) {
  const uid = `sw-pg-${Math.random().toString(36).slice(2, 9)}`;
  const root = h("div", "sw-root sw-playground");
  /** @type {Array<() => void>} */
  const cleanups = [];

  /**
   * Listen to a DOM event and remember to remove the listener.
   * @param {EventTarget} target @param {string} type @param {(e: any) => void} fn
   */
  const on = (target, type, fn) => {
    target.addEventListener(type, fn);
    cleanups.push(() => target.removeEventListener(type, fn));
  };
  /**
   * Listen to a trait change and remember to remove the listener.
   * @param {string} names space separated trait names @param {() => void} fn
   */
  const watch = (names, fn) => {
    for (const name of names.split(" ")) {
      model.on(`change:${name}`, fn);
      cleanups.push(() => model.off(`change:${name}`, fn));
    }
  };

  // ---- timing of one committed change, for the status line and the browser tests ----
  let commitAt = 0;
  let sawStart = false;
  let sawFirst = false;
  /** @param {Record<string, any>} values */
  const commit = (values) => {
    for (const [k, v] of Object.entries(values)) model.set(k, v);
    commitAt = performance.now();
    sawStart = false;
    sawFirst = false;
    root.dataset.commitAt = String(commitAt);
    delete root.dataset.firstTokenMs;
    delete root.dataset.chartsMs;
    delete root.dataset.totalMs;
    model.save_changes();
  };

  /**
   * Commit what the user typed into a number box to `trait` on Enter, on `change` and when the
   * box loses focus (Tab, a click elsewhere). Inside JupyterLab, Enter in a number input fires no
   * `change` (its keyboard handling prevents the key's default action), hence the keydown handler.
   * Only an edited, valid value that differs from the trait is committed, so Enter then Tab runs
   * once and a box that was merely focused never writes back a stale value; on blur the box shows
   * the trait again (an invalid entry, e.g. empty, is dropped).
   * @param {HTMLInputElement} input
   * @param {string} trait
   * @param {(x: number) => number | null} parse  the value to commit, or null when invalid
   */
  const numberField = (input, trait, parse) =>
    numberInput(input, () => model.get(trait), (v) => commit({ [trait]: v }), parse, on);

  /**
   * The same Enter / change / blur handling for any number box: `read` gives the committed value,
   * `write` commits a new one, `listen` registers the listeners (so a stack row can drop its own).
   * @param {HTMLInputElement} input
   * @param {() => any} read
   * @param {(v: number) => void} write
   * @param {(x: number) => number | null} parse  the value to commit, or null when invalid
   * @param {(target: EventTarget, type: string, fn: (e: any) => void) => void} listen
   */
  function numberInput(input, read, write, parse, listen) {
    let edited = false;
    const commitValue = () => {
      if (!edited) return;
      edited = false;
      const raw = input.value.trim();
      const v = raw === "" ? null : parse(Number(raw));
      if (v !== null && v !== read()) write(v);
    };
    listen(input, "input", () => {
      edited = true;
    });
    listen(input, "keydown", (/** @type {KeyboardEvent} */ e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        commitValue();
      }
    });
    listen(input, "change", commitValue);
    listen(input, "blur", () => {
      commitValue();
      input.value = String(read() ?? "");
    });
  }

  // ---------------------------------------------------------------------------------------
  // Controls
  // ---------------------------------------------------------------------------------------
  const controls = h("div", "sw-pg-controls sw-panel");

  // Prompt
  const promptBox = h("textarea", "sw-textarea sw-pg-prompt", {
    "aria-label": "Prompt",
    rows: "2",
    id: `${uid}-prompt`,
  });
  let promptTimer = 0;
  const commitPrompt = () => {
    clearTimeout(promptTimer);
    if (promptBox.value !== model.get("prompt")) commit({ prompt: promptBox.value });
  };
  on(promptBox, "input", () => {
    clearTimeout(promptTimer);
    promptTimer = window.setTimeout(commitPrompt, PROMPT_DEBOUNCE_MS);
  });
  on(promptBox, "change", commitPrompt);
  on(promptBox, "keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) commitPrompt();
  });
  cleanups.push(() => clearTimeout(promptTimer));
  const promptRow = h("div", "sw-pg-field sw-pg-prompt-field");
  promptRow.append(label("Prompt (the user turn)", promptBox.id), promptBox);

  // Vector chooser + ActAdd phrases
  const vectorSelect = h("select", "sw-select sw-pg-vector", { "aria-label": "Vector" });
  on(vectorSelect, "change", () => commit({ vector_name: vectorSelect.value }));
  const actaddPos = h("input", "sw-input sw-pg-actadd-pos", {
    type: "text",
    "aria-label": "ActAdd positive phrase",
    placeholder: "positive phrase",
    size: "12",
  });
  const actaddNeg = h("input", "sw-input sw-pg-actadd-neg", {
    type: "text",
    "aria-label": "ActAdd negative phrase",
    placeholder: "negative phrase",
    size: "12",
  });
  const actaddBtn = h("button", "sw-button sw-pg-actadd-build", {
    type: "button",
    "aria-label": "Use ActAdd vector from the two phrases",
  });
  actaddBtn.textContent = "ActAdd";
  on(actaddBtn, "click", () =>
    commit({
      vector_name: "actadd",
      actadd_positive: actaddPos.value,
      actadd_negative: actaddNeg.value,
    }),
  );
  for (const input of [actaddPos, actaddNeg]) {
    on(input, "keydown", (e) => {
      if (e.key === "Enter") actaddBtn.click();
    });
  }
  const actaddBox = h("span", "sw-pg-actadd");
  const minus = h("span", "sw-muted");
  minus.textContent = "−";
  actaddBox.append(actaddPos, minus, actaddNeg, actaddBtn);
  const vectorRow = h("div", "sw-row");
  vectorRow.append(label("Vector"), vectorSelect, label("or quick ActAdd"), actaddBox);

  // Layer slider, the vector's norm per layer, and the norm-ratio readout
  const layerSlider = h("input", "sw-pg-layer", { type: "range", "aria-label": "Layer", min: "0", step: "1" });
  const layerValue = h("span", "sw-mono sw-pg-layer-value");
  on(layerSlider, "input", () => {
    layerValue.textContent = layerSlider.value;
    drawNormStrip(Number(layerSlider.value));
  });
  on(layerSlider, "change", () => commit({ layer: Number(layerSlider.value) }));
  const normStrip = h("div", "sw-pg-normstrip", {
    role: "img",
    "aria-label": "Steering vector norm per layer",
  });
  on(normStrip, "click", (e) => {
    const bar = /** @type {HTMLElement} */ (e.target).closest?.(".sw-pg-normbar");
    if (bar instanceof HTMLElement && bar.dataset.layer !== undefined) {
      commit({ layer: Number(bar.dataset.layer) });
    }
  });
  const ratio = h("span", "sw-mono sw-pg-ratio", { "aria-label": "Norm ratio" });
  const layerRow = h("div", "sw-row");
  layerRow.append(label("Layer"), layerSlider, layerValue, normStrip, ratio);

  // Strength slider + exact value + relative checkbox
  const strengthSlider = h("input", "sw-pg-strength", { type: "range", "aria-label": "Strength" });
  const strengthNumber = h("input", "sw-input sw-pg-strength-value", {
    type: "number",
    "aria-label": "Strength value",
    step: "any",
    style: "width: 6em",
  });
  on(strengthSlider, "input", () => {
    strengthNumber.value = strengthSlider.value;
  });
  on(strengthSlider, "change", () => commit({ strength: Number(strengthSlider.value) }));
  numberField(strengthNumber, "strength", (x) => (Number.isFinite(x) ? x : null));
  const relativeBox = h("input", "sw-pg-relative", {
    type: "checkbox",
    id: `${uid}-relative`,
    "aria-label": "Strength relative to residual norm",
  });
  let lastAbsolute = 4;
  on(relativeBox, "change", () => {
    // A relative strength is a multiple of mean‖h‖: start from the current ‖λv‖/mean‖h‖ so the
    // steering keeps its size, and going back restores the last absolute strength.
    const rel = relativeBox.checked;
    const s = Number(model.get("strength"));
    let strength;
    if (rel) {
      lastAbsolute = s;
      const r = model.get("norm_ratio");
      const size = r !== null && r !== undefined && Number.isFinite(r) ? r : 0.3;
      strength = Math.round((s < 0 ? -size : size) * 100) / 100;
    } else {
      strength = lastAbsolute;
    }
    commit({ relative: rel, strength });
  });
  const strengthRow = h("div", "sw-row");
  strengthRow.append(
    label("Strength"),
    strengthSlider,
    strengthNumber,
    relativeBox,
    label("relative to residual norm", relativeBox.id),
  );

  // Positions: presets, the prompt's tokens as chips, and the applied-steering overlay
  const presetBox = h("span", "sw-pg-presets", { role: "group", "aria-label": "Position presets" });
  /** @type {Record<string, HTMLButtonElement>} */
  const presetButtons = {};
  for (const p of PRESETS) {
    const b = h("button", "sw-button sw-pg-preset", {
      type: "button",
      "aria-label": `Steer ${p} positions`,
      "data-preset": p,
    });
    b.textContent = p;
    on(b, "click", () => commit({ positions: p }));
    presetButtons[p] = b;
    presetBox.append(b);
  }
  const positionsText = h("span", "sw-mono sw-muted sw-pg-positions-text", {
    "aria-label": "Current position spec",
  });
  const positionsRow = h("div", "sw-row");
  positionsRow.append(label("Positions"), presetBox, positionsText);
  const chips = h("div", "sw-pg-chips", {
    role: "group",
    "aria-label": "Prompt tokens: click to steer that position",
  });
  on(chips, "click", (e) => {
    const chip = /** @type {HTMLElement} */ (e.target).closest?.(".sw-pg-chip");
    if (!(chip instanceof HTMLElement)) return;
    const i = Number(chip.dataset.index);
    const current = parseIndexList(model.get("positions")) ?? [];
    const n = model.get("prompt_tokens").length;
    const absolute = current.map((j) => (j < 0 ? n + j : j));
    const next = absolute.includes(i) ? absolute.filter((j) => j !== i) : [...absolute, i];
    next.sort((a, b) => a - b);
    const spec = next.length ? next.join(",") : "all";
    const mask = localMask(spec, n);
    if (mask) drawOverlay(mask, spec);
    commit({ positions: spec });
  });

  // Max new tokens, seed
  const maxNew = h("input", "sw-input sw-pg-max-new", {
    type: "number",
    min: "1",
    max: "1024",
    step: "1",
    "aria-label": "Max new tokens",
    style: "width: 5em",
  });
  numberField(maxNew, "max_new_tokens", (x) => (Number.isFinite(x) && x >= 1 ? Math.round(x) : null));
  const seedInput = h("input", "sw-input sw-pg-seed", {
    type: "number",
    step: "1",
    "aria-label": "Seed",
    style: "width: 5em",
  });
  numberField(seedInput, "seed", (x) => (Number.isFinite(x) ? Math.round(x) : null));
  const genRow = h("div", "sw-row");
  genRow.append(label("Max new tokens"), maxNew, label("Seed"), seedInput);

  // The stack: extra vectors applied together with the main one, one line each
  const stackBox = h("div", "sw-pg-stack", { role: "group", "aria-label": "Stack of extra vectors" });
  const stackRows = h("div", "sw-pg-stack-rows");
  const addRowBtn = h("button", "sw-button sw-pg-stack-add", {
    type: "button",
    "aria-label": "Add vector to the stack",
  });
  addRowBtn.textContent = "Add vector";
  const stackHead = h("div", "sw-row");
  const stackNote = h("span", "sw-label sw-muted");
  stackNote.textContent = "applied together with the vector above; chart and A/B check keep them on as background";
  stackHead.append(label("Stack"), addRowBtn, stackNote);
  stackBox.append(stackHead, stackRows);
  /** @returns {StackRow[]} */
  const stackValue = () => model.get("stack") ?? [];
  /** @param {number} i @param {Partial<StackRow>} patch */
  const setRow = (i, patch) =>
    commit({ stack: stackValue().map((r, j) => (j === i ? { ...r, ...patch } : r)) });
  on(addRowBtn, "click", () => {
    // A new row starts at strength 0, so adding it changes nothing until its strength is set.
    const names = (model.get("vector_names") ?? []).filter((n) => n !== "actadd");
    const main = model.get("vector_name");
    const name = names.find((n) => n !== main) ?? names[0] ?? "sentiment";
    const row = { vector_name: name, layer: model.get("layer"), strength: 0, positions: "all", relative: false };
    commit({ stack: [...stackValue(), row] });
  });
  /**
   * One drawn stack row: its controls, an update from the trait, and its own listeners' cleanup.
   * @typedef {{node: HTMLElement, draw: () => void, drop: () => void}} RowView
   * @type {RowView[]}
   */
  const rowViews = [];

  /** @param {number} i @returns {RowView} */
  const makeRow = (i) => {
    /** @type {Array<() => void>} */
    const mine = [];
    /** @param {EventTarget} target @param {string} type @param {(e: any) => void} fn */
    const listen = (target, type, fn) => {
      target.addEventListener(type, fn);
      mine.push(() => target.removeEventListener(type, fn));
    };
    const n = i + 1;
    const row = () => stackValue()[i] ?? /** @type {StackRow} */ ({});
    const line = h("div", "sw-row sw-pg-stack-row");
    line.dataset.row = String(i);
    const plus = h("span", "sw-muted");
    plus.textContent = "+";
    const select = h("select", "sw-select sw-pg-stack-vector", { "aria-label": `Stack row ${n} vector` });
    listen(select, "change", () => setRow(i, { vector_name: select.value }));
    const layer = h("input", "sw-input sw-pg-stack-layer", {
      type: "number",
      min: "0",
      step: "1",
      "aria-label": `Stack row ${n} layer`,
      style: "width: 4em",
    });
    numberInput(
      layer,
      () => row().layer,
      (v) => setRow(i, { layer: v }),
      (x) => (Number.isFinite(x) && x >= 0 ? Math.round(x) : null),
      listen,
    );
    const strength = h("input", "sw-input sw-pg-stack-strength", {
      type: "number",
      step: "any",
      "aria-label": `Stack row ${n} strength`,
      style: "width: 5em",
    });
    numberInput(
      strength,
      () => row().strength,
      (v) => setRow(i, { strength: v }),
      (x) => (Number.isFinite(x) ? x : null),
      listen,
    );
    const positions = h("input", "sw-input sw-pg-stack-positions", {
      type: "text",
      "aria-label": `Stack row ${n} positions`,
      placeholder: "all",
      size: "6",
    });
    const commitPositions = () => {
      const spec = positions.value.trim() || "all";
      if (spec !== row().positions) setRow(i, { positions: spec });
    };
    listen(positions, "keydown", (/** @type {KeyboardEvent} */ e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        commitPositions();
      }
    });
    listen(positions, "change", commitPositions);
    const relative = h("input", "sw-pg-stack-relative", {
      type: "checkbox",
      id: `${uid}-stack-rel-${i}`,
      "aria-label": `Stack row ${n} strength relative to residual norm`,
    });
    let rowAbsolute = 0;
    listen(relative, "change", () => {
      // As for the main vector: a relative strength starts from the row's ‖λv‖/mean‖h‖.
      const rel = relative.checked;
      const s = Number(row().strength);
      let next;
      if (rel) {
        rowAbsolute = s;
        const r = (model.get("norm_ratios") ?? [])[i + 1];
        const size = r !== null && r !== undefined && Number.isFinite(r) && r > 0 ? r : 0.3;
        next = Math.round((s < 0 ? -size : size) * 100) / 100;
      } else {
        next = rowAbsolute;
      }
      setRow(i, { relative: rel, strength: next });
    });
    const relLabel = label("relative", relative.id);
    const ratioOut = h("span", "sw-mono sw-pg-stack-ratio", { "aria-label": `Stack row ${n} norm ratio` });
    const remove = h("button", "sw-button sw-pg-stack-remove", {
      type: "button",
      "aria-label": `Remove stack row ${n}`,
      title: "Remove this row",
    });
    remove.textContent = "×";
    listen(remove, "click", () => commit({ stack: stackValue().filter((_, j) => j !== i) }));
    line.append(
      plus,
      select,
      label("layer"),
      layer,
      label("strength"),
      strength,
      label("positions"),
      positions,
      relative,
      relLabel,
      ratioOut,
      remove,
    );
    const draw = () => {
      const r = row();
      const names = (model.get("vector_names") ?? []).filter((x) => x !== "actadd");
      const all = names.includes(r.vector_name) ? names : [...names, r.vector_name];
      if (select.options.length !== all.length || [...select.options].some((o, k) => o.value !== all[k])) {
        select.replaceChildren();
        for (const name of all) {
          const opt = h("option");
          opt.value = name;
          opt.textContent = name;
          select.append(opt);
        }
      }
      select.value = r.vector_name;
      layer.max = String(Math.max(0, model.get("n_layers") - 1));
      if (document.activeElement !== layer) layer.value = String(r.layer ?? "");
      if (document.activeElement !== strength) strength.value = String(r.strength ?? "");
      if (document.activeElement !== positions) positions.value = r.positions ?? "all";
      relative.checked = !!r.relative;
      const x = (model.get("norm_ratios") ?? [])[i + 1];
      ratioOut.textContent =
        x === null || x === undefined || !Number.isFinite(x) ? "‖λv‖/mean‖h‖ = –" : `‖λv‖/mean‖h‖ = ${x.toFixed(2)}`;
      ratioOut.title = "This row's added vector relative to the mean residual-stream norm at its layer.";
    };
    return { node: line, draw, drop: () => mine.forEach((fn) => fn()) };
  };

  const drawStack = () => {
    const rows = stackValue();
    while (rowViews.length > rows.length) {
      const view = /** @type {RowView} */ (rowViews.pop());
      view.drop();
      view.node.remove();
    }
    while (rowViews.length < rows.length) {
      const view = makeRow(rowViews.length);
      rowViews.push(view);
      stackRows.append(view.node);
    }
    for (const view of rowViews) view.draw();
  };
  cleanups.push(() => rowViews.forEach((view) => view.drop()));

  controls.append(promptRow, vectorRow, layerRow, strengthRow, positionsRow, chips, genRow, stackBox);

  // ---------------------------------------------------------------------------------------
  // Outputs
  // ---------------------------------------------------------------------------------------
  const errorBox = h("div", "sw-error sw-pg-error", { role: "alert" });
  errorBox.hidden = true;
  const statusLine = h("div", "sw-label sw-pg-status", { "aria-live": "polite" });

  const outputs = h("div", "sw-pg-outputs");
  const basePanel = h("div", "sw-panel sw-pg-panel");
  const baseTitle = h("div", "sw-pg-panel-title");
  baseTitle.textContent = "Unsteered";
  const baseText = h("div", "sw-text sw-pg-base-text", { "aria-label": "Unsteered continuation" });
  basePanel.append(baseTitle, baseText);
  const steeredPanel = h("div", "sw-panel sw-pg-panel");
  const steeredTitle = h("div", "sw-pg-panel-title");
  steeredTitle.textContent = "Steered";
  const steeredNote = h("span", "sw-label sw-pg-steered-note");
  steeredTitle.append(" ", steeredNote);
  const steeredText = h("div", "sw-text sw-pg-steered-text", { "aria-label": "Steered continuation" });
  const legend = h("div", "sw-label sw-pg-legend");
  legend.textContent =
    "Colour: log p(token) under steering − under the unsteered model (blue: more likely, red: less); hover for numbers.";
  steeredPanel.append(steeredTitle, steeredText, legend);
  outputs.append(basePanel, steeredPanel);

  const lower = h("div", "sw-pg-lower");
  const topkBox = h("div", "sw-pg-topk-box");
  const topkTitle = h("div", "sw-pg-panel-title");
  topkTitle.textContent = "First new token: largest probability shifts";
  const topkTable = h("table", "sw-pg-topk", { "aria-label": "Top next-token probability shifts" });
  topkBox.append(topkTitle, topkTable);
  const chartBox = h("div", "sw-pg-chart-box");
  const chartTitle = h("div", "sw-pg-panel-title");
  const chart = h("div", "sw-chart sw-pg-chart");
  chartBox.append(chartTitle, chart);
  lower.append(topkBox, chartBox);

  const warningsBox = h("div", "sw-pg-warnings", { "aria-live": "polite" });

  // The capability side-effect line: accuracy on the built-in capability sets, unsteered vs steered
  const capabilityBox = h("input", "sw-pg-capability", {
    type: "checkbox",
    id: `${uid}-capability`,
    "aria-label": "Capability check: accuracy on the built-in capability sets, unsteered vs steered",
  });
  let lastCapability = CAPABILITY_N;
  on(capabilityBox, "change", () => {
    const n = Number(model.get("capability")) || 0;
    if (n > 0) lastCapability = n;
    commit({ capability: capabilityBox.checked ? lastCapability : 0 });
  });
  const capabilityLabel = label("", capabilityBox.id);
  const capabilityRow = h("div", "sw-row sw-pg-capability-row");
  capabilityRow.append(capabilityBox, capabilityLabel);

  const codeRow = h("div", "sw-row");
  const codeBtn = h("button", "sw-button sw-pg-copy", { type: "button", "aria-label": "Copy as code" });
  codeBtn.textContent = "Copy as code";
  const codeNote = h("span", "sw-label sw-pg-copy-note");
  codeRow.append(codeBtn, codeNote);
  const codeBox = h("pre", "sw-mono sw-panel sw-pg-code", {
    tabindex: "0",
    "aria-label": "Python code reproducing this steering",
  });
  codeBox.hidden = true;
  on(codeBtn, "click", () => {
    const code = model.get("code") || "";
    codeBox.textContent = code;
    codeBox.hidden = false;
    const range = document.createRange();
    range.selectNodeContents(codeBox);
    const sel = window.getSelection();
    sel?.removeAllRanges();
    sel?.addRange(range);
    const clip = navigator.clipboard;
    if (clip && window.isSecureContext) {
      clip.writeText(code).then(
        () => (codeNote.textContent = "copied to the clipboard"),
        () => (codeNote.textContent = "selected: press Ctrl+C to copy"),
      );
    } else {
      codeNote.textContent = "selected: press Ctrl+C to copy";
    }
  });

  root.append(controls, errorBox, statusLine, outputs, lower, warningsBox, capabilityRow, codeRow, codeBox);
  el.appendChild(root);

  // ---------------------------------------------------------------------------------------
  // Drawing traits
  // ---------------------------------------------------------------------------------------
  const drawControls = () => {
    if (document.activeElement !== promptBox) promptBox.value = model.get("prompt");
    const n = Math.max(1, model.get("n_layers"));
    layerSlider.max = String(n - 1);
    layerSlider.value = String(model.get("layer"));
    layerValue.textContent = String(model.get("layer"));
    const rel = model.get("relative");
    const s = Number(model.get("strength"));
    const limit = rel ? Math.max(2, Math.abs(s)) : Math.max(16, Math.ceil(Math.abs(s) * 2));
    strengthSlider.min = String(-limit);
    strengthSlider.max = String(limit);
    strengthSlider.step = rel ? "0.05" : "0.5";
    strengthSlider.value = String(s);
    // A box being typed into keeps its text; it shows the trait again on blur.
    if (document.activeElement !== strengthNumber) strengthNumber.value = String(s);
    relativeBox.checked = rel;
    if (document.activeElement !== maxNew) maxNew.value = String(model.get("max_new_tokens"));
    if (document.activeElement !== seedInput) seedInput.value = String(model.get("seed"));
    if (document.activeElement !== actaddPos) actaddPos.value = model.get("actadd_positive");
    if (document.activeElement !== actaddNeg) actaddNeg.value = model.get("actadd_negative");
    const spec = model.get("positions");
    positionsText.textContent = `positions = ${JSON.stringify(spec)}`;
    for (const [p, b] of Object.entries(presetButtons)) {
      b.setAttribute("aria-pressed", String(spec === p));
      b.classList.toggle("sw-pg-active", spec === p);
    }
    drawNormStrip(model.get("layer"));
  };

  const drawVectorNames = () => {
    const names = model.get("vector_names") ?? [];
    const current = model.get("vector_name");
    vectorSelect.replaceChildren();
    const all = names.includes(current) ? names : [...names, current];
    for (const name of all) {
      const opt = h("option");
      opt.value = name;
      opt.textContent = name === "actadd" ? "actadd (two phrases)" : name;
      vectorSelect.append(opt);
    }
    vectorSelect.value = current;
    actaddBox.classList.toggle("sw-pg-active", current === "actadd");
  };

  /** @param {number} layer the highlighted layer (the slider's value while dragging) */
  function drawNormStrip(layer) {
    const norms = model.get("vector_norms") ?? [];
    const max = Math.max(1e-12, ...norms.map((x) => (Number.isFinite(x) ? x : 0)));
    if (normStrip.children.length !== norms.length) {
      normStrip.replaceChildren();
      for (let i = 0; i < norms.length; i++) {
        const bar = h("div", "sw-pg-normbar");
        bar.dataset.layer = String(i);
        normStrip.append(bar);
      }
    }
    norms.forEach((x, i) => {
      const bar = /** @type {HTMLElement} */ (normStrip.children[i]);
      bar.style.height = `${Math.max(1, Math.round((x / max) * 100))}%`;
      bar.title = `layer ${i}: ‖v‖ = ${x.toFixed(2)}`;
      bar.classList.toggle("sw-pg-current", i === Number(layer));
    });
  }

  const drawRatio = () => {
    const r = model.get("norm_ratio");
    ratio.textContent = r === null || r === undefined ? "‖λv‖/mean‖h‖ = –" : `‖λv‖/mean‖h‖ = ${r.toFixed(2)}`;
    ratio.title =
      "Size of the added vector relative to the mean residual-stream norm at this layer; " +
      "values near or above 1 usually break fluency.";
  };

  /**
   * @param {boolean[]} mask where steering applies over the prompt tokens
   * @param {string} spec the position spec
   */
  function drawOverlay(mask, spec) {
    const list = new Set(parseIndexList(spec) ?? []);
    const n = chips.children.length;
    for (let i = 0; i < n; i++) {
      const chip = /** @type {HTMLElement} */ (chips.children[i]);
      chip.classList.toggle("sw-pg-steered", !!mask[i]);
      const picked = list.has(i) || list.has(i - n);
      chip.classList.toggle("sw-pg-picked", picked);
      chip.setAttribute("aria-pressed", String(picked));
    }
  }

  const drawChips = () => {
    const tokens = model.get("prompt_tokens") ?? [];
    chips.replaceChildren();
    for (const t of tokens) {
      const chip = h("button", "sw-pg-chip", { type: "button" });
      chip.dataset.index = String(t.i);
      chip.classList.toggle("sw-pg-template", !t.user);
      // Show whitespace so every token is clickable; the text itself stays text.
      chip.textContent = t.text.replace(/ /g, "·").replace(/\n/g, "⏎") || "∅";
      chip.setAttribute("aria-label", `Token ${t.i}: ${JSON.stringify(t.text)}`);
      chip.title = `position ${t.i}${t.user ? "" : " (chat template)"}`;
      chips.append(chip);
    }
    drawMask();
  };

  const drawMask = () => {
    drawOverlay(model.get("steer_mask") ?? [], model.get("positions"));
    steeredNote.textContent = model.get("steer_generated")
      ? "(steering also applied to the generated tokens)"
      : "(generated tokens not steered)";
  };

  const drawBase = () => {
    baseText.textContent = model.get("base_text") ?? "";
  };

  const drawSteered = () => {
    const text = model.get("steered_text") ?? "";
    const tokens = model.get("steered_tokens") ?? [];
    if (commitAt && sawStart && !sawFirst && text) {
      sawFirst = true;
      root.dataset.firstTokenMs = String(performance.now() - commitAt);
    }
    const joined = tokens.map((t) => t.text).join("");
    if (tokens.length && joined === text) {
      const frag = document.createDocumentFragment();
      for (const t of tokens) {
        const span = h("span", "sw-pg-tok");
        span.textContent = t.text;
        span.style.backgroundColor = shiftColor(t.shift);
        span.title =
          `log p steered − log p base = ${signed(t.shift)}\n` +
          `log p steered = ${signed(t.lp_steered)}, log p base = ${signed(t.lp_base)}`;
        frag.append(span);
      }
      steeredText.replaceChildren(frag);
    } else {
      steeredText.textContent = text;
    }
  };

  const drawTopk = () => {
    const rows = model.get("topk") ?? [];
    topkTable.replaceChildren();
    if (!rows.length) return;
    const head = h("tr");
    for (const name of ["token", "p unsteered", "p steered", "Δp"]) {
      const th = h("th");
      th.textContent = name;
      head.append(th);
    }
    topkTable.append(head);
    for (const r of rows) {
      const tr = h("tr");
      const cells = [JSON.stringify(r.token), r.p_base.toFixed(3), r.p_steered.toFixed(3), signed(r.delta, 3)];
      cells.forEach((text, i) => {
        const td = h("td", i === 0 ? "sw-mono" : "sw-pg-num");
        td.textContent = text;
        if (i === 3) td.classList.add(r.delta >= 0 ? "sw-pg-up" : "sw-pg-down");
        tr.append(td);
      });
      topkTable.append(tr);
    }
  };

  const drawChart = () => {
    const spec = model.get("chart_spec");
    const targets = model.get("targets") ?? [];
    chartTitle.textContent = targets.length === 2
      ? `log p(${JSON.stringify(targets[0])}) − log p(${JSON.stringify(targets[1])}) across strengths`
      : "";
    renderChart(chart, spec).catch((err) => {
      chart.textContent = `Chart failed to render: ${err?.message ?? err}`;
    });
  };

  const drawWarnings = () => {
    const list = model.get("warnings") ?? [];
    warningsBox.replaceChildren();
    for (const w of list) {
      const div = h("div", w.level === "warning" ? "sw-warning sw-pg-warning" : "sw-pg-notice");
      div.dataset.level = w.level;
      const strong = h("strong");
      strong.textContent = `${w.level}: `;
      div.append(strong, document.createTextNode(w.message));
      warningsBox.append(div);
    }
  };

  const drawError = () => {
    const msg = model.get("error") ?? "";
    errorBox.textContent = msg;
    errorBox.hidden = !msg;
  };

  const drawStatus = () => {
    const status = model.get("status") ?? "";
    root.dataset.status = status;
    if (commitAt && status !== "done" && status !== "error") sawStart = true;
    const finished = status === "done" || status === "error";
    if (commitAt && sawStart && (finished || status === "checking A/B items") && !root.dataset.chartsMs) {
      root.dataset.chartsMs = String(performance.now() - commitAt);
    }
    if (commitAt && sawStart && finished && !root.dataset.totalMs) {
      root.dataset.totalMs = String(performance.now() - commitAt);
    }
    const t = model.get("timings") ?? {};
    const parts = [];
    if (status !== "done") parts.push(`${status}…`);
    if (status === "done" || status === "error") {
      if (t.first_token_ms !== undefined) parts.push(`first token ${fmtMs(t.first_token_ms)}`);
      if (t.steered_ms !== undefined) parts.push(`text ${fmtMs(t.steered_ms)}`);
      if (t.charts_ms !== undefined) parts.push(`charts ${fmtMs(t.charts_ms)}`);
      if (t.capability_ms !== undefined) parts.push(`capability ${fmtMs(t.capability_ms)}`);
      if (t.total_ms !== undefined) parts.push(`total ${fmtMs(t.total_ms)}`);
      if (t.base_cached) parts.push("unsteered text cached");
    }
    statusLine.textContent = parts.join(" · ");
    root.classList.toggle("sw-pg-busy", status !== "done" && status !== "error");
  };

  watch(
    "prompt layer strength relative positions max_new_tokens seed actadd_positive actadd_negative n_layers vector_norms",
    drawControls,
  );
  const drawCapability = () => {
    const n = Number(model.get("capability")) || 0;
    capabilityBox.checked = n > 0;
    capabilityLabel.textContent = `capability check (${n > 0 ? n : lastCapability} items per set)`;
  };
  watch("capability", drawCapability);
  watch("vector_names vector_name", drawVectorNames);
  watch("prompt_tokens", drawChips);
  watch("steer_mask steer_generated", drawMask);
  watch("norm_ratio", drawRatio);
  watch("stack norm_ratios vector_names n_layers", drawStack);
  watch("base_text", drawBase);
  watch("steered_text steered_tokens", drawSteered);
  watch("topk", drawTopk);
  watch("chart_spec targets", drawChart);
  watch("warnings", drawWarnings);
  watch("error", drawError);
  watch("status timings", drawStatus);
  watch("code", () => {
    if (!codeBox.hidden) codeBox.textContent = model.get("code") || "";
  });

  drawVectorNames();
  drawControls();
  drawChips();
  drawRatio();
  drawStack();
  drawBase();
  drawSteered();
  drawTopk();
  drawChart();
  drawWarnings();
  drawError();
  drawStatus();
  drawCapability();

  return () => {
    for (const fn of cleanups) fn();
    destroyChart(chart);
  };
}

export default { render };
