// The anywidget `_esm` of every steerwidgets widget: a module of about 1 KB. Built once per widget
// kind (build.mjs replaces __SW_KIND__ with "playground", "reliability", ...) into
// steerwidgets/static/<kind>.js.
//
// anywidget sends a widget's `_esm` text with the state of every widget instance and imports it
// from a fresh blob: URL each time, so relative imports cannot reach a shared file and a large
// `_esm` is sent and evaluated once per widget. Instead, every widget's `_bundle` trait refers to
// one shared model (steerwidgets/widgets/_frontend.py, SharedBundle) whose `source` is the text of
// static/widgets.js as a binary buffer: the page receives it once, imports it once (cached on
// globalThis by its digest) and every widget renders with it. Works offline: nothing is fetched.

/* global __SW_KIND__ */
/** @type {string} */
const KIND = __SW_KIND__;
const CACHE_KEY = Symbol.for("steerwidgets.bundles");

/**
 * Imported shared bundles by digest (one per page; a rebuilt bundle gets a new digest).
 * @returns {Map<string, Promise<{renders: Record<string, {render: Function}>}>>}
 */
function bundles() {
  const g = /** @type {any} */ (globalThis);
  if (!g[CACHE_KEY]) g[CACHE_KEY] = new Map();
  return g[CACHE_KEY];
}

/**
 * Import the shared bundle that the widget's `_bundle` trait refers to (once per page).
 * @param {any} model   the widget's model
 * @param {any} host    anywidget's host (getModel resolves "anywidget:<id>" references)
 */
export async function loadBundle(model, host) {
  const ref = model.get("_bundle");
  if (typeof ref !== "string" || !ref) {
    throw new Error("this widget has no _bundle reference (steerwidgets front end out of date?)");
  }
  const shared = await host.getModel(ref);
  const digest = String(shared.get("digest"));
  const cache = bundles();
  let promise = cache.get(digest);
  if (!promise) {
    const source = shared.get("source");
    promise = (async () => {
      const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
      try {
        return await import(/* webpackIgnore: true */ url);
      } finally {
        URL.revokeObjectURL(url);
      }
    })();
    cache.set(digest, promise);
    promise.catch(() => cache.delete(digest));
  }
  return promise;
}

/** @type {import("@anywidget/types").Render<any>} */
async function render(props) {
  const { el } = props;
  let mod;
  try {
    mod = await loadBundle(props.model, props.host);
  } catch (err) {
    const msg = document.createElement("div");
    msg.className = "sw-error";
    msg.setAttribute("role", "alert");
    msg.textContent = `steerwidgets: could not load the front end: ${/** @type {any} */ (err)?.message ?? err}`;
    el.replaceChildren(msg);
    return undefined;
  }
  const widget = mod.renders[KIND];
  if (!widget) throw new Error(`steerwidgets: no front end for widget kind ${JSON.stringify(KIND)}`);
  return widget.render(props);
}

export default { render };
