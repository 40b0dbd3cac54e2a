// Builds the front end into steerwidgets/static/:
//   widgets.js            the shared bundle: every widget's render, vega, vega-lite, vega-embed
//                         (entry js/src/widgets.js)
//   <kind>.js             one small loader per widget kind (js/src/loader.js with __SW_KIND__
//                         replaced), the anywidget `_esm` of that widget; see loader.js for why
//   widget.css            copied from js/src/widget.css
// Other .js files left in steerwidgets/static/ by older builds are removed.
//
// Usage: node build.mjs            one-off production build (minified)
//        node build.mjs --watch    rebuild on change (for anywidget's ANYWIDGET_HMR=1)
import { copyFile, mkdir, readdir, rm } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const srcDir = join(here, "src");
const outDir = resolve(here, "..", "steerwidgets", "static");
/** Widget kinds: js/src/<kind>.js exports `default { render }`; static/<kind>.js is its loader. */
export const KINDS = ["playground", "reliability", "layersweep", "compare"];
const watch = process.argv.includes("--watch");

await mkdir(outDir, { recursive: true });
const wanted = new Set(["widgets.js", ...KINDS.map((k) => `${k}.js`)]);
for (const f of await readdir(outDir)) {
  if (f.endsWith(".js") && !wanted.has(f)) await rm(join(outDir, f));
}

const copyCss = {
  name: "copy-widget-css",
  setup(build) {
    build.onEnd(async (result) => {
      if (result.errors.length === 0) {
        await copyFile(join(srcDir, "widget.css"), join(outDir, "widget.css"));
      }
    });
  },
};

/** @type {import("esbuild").BuildOptions} */
const common = {
  bundle: true,
  format: "esm",
  minify: !watch,
  target: "es2020",
  platform: "browser",
  legalComments: "eof",
  logLevel: "info",
  define: { "process.env.NODE_ENV": '"production"' },
};

/** @type {import("esbuild").BuildOptions[]} */
const builds = [
  { ...common, entryPoints: [join(srcDir, "widgets.js")], outfile: join(outDir, "widgets.js"), plugins: [copyCss] },
  ...KINDS.map((kind) => ({
    ...common,
    entryPoints: [join(srcDir, "loader.js")],
    outfile: join(outDir, `${kind}.js`),
    define: { ...common.define, __SW_KIND__: JSON.stringify(kind) },
  })),
];

if (watch) {
  for (const options of builds) {
    const ctx = await esbuild.context(options);
    await ctx.watch();
  }
  console.log(`watching ${srcDir} -> ${outDir}`);
} else {
  await Promise.all(builds.map((options) => esbuild.build(options)));
}
