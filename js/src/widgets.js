// The shared front-end bundle (steerwidgets/static/widgets.js): the four widgets' renders, vega,
// vega-lite and vega-embed in one ES module. It is not an anywidget `_esm` itself: each widget's
// `_esm` is a small loader (js/src/loader.js) that gets this module's text from the kernel once
// per page (a shared widget model, see steerwidgets/widgets/_frontend.py), imports it once and
// calls `renders[kind].render`.
import compare from "./compare.js";
import layersweep from "./layersweep.js";
import playground from "./playground.js";
import reliability from "./reliability.js";

/**
 * @typedef {{ render: import("@anywidget/types").Render<any> }} WidgetModule
 */

/** @type {Record<string, WidgetModule>} */
export const renders = { playground, reliability, layersweep, compare };
