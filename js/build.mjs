// Bundles every js/src/*.js entry (one anywidget ES module per widget) into
// steerwidgets/static/<name>.js and copies js/src/widget.css next to them.
//
// Usage: node build.mjs            one-off production build (minified)
//        node build.mjs --watch    rebuild on change (for anywidget's ANYWIDGET_HMR=1)
//
// Shared helper modules that are imported by widgets but are not widgets
// themselves (e.g. chart.js) are listed in NOT_ENTRIES.
import { copyFile, mkdir, readdir } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const srcDir = join(here, "src");
const outDir = resolve(here, "..", "steerwidgets", "static");
const NOT_ENTRIES = new Set(["chart.js"]);
const watch = process.argv.includes("--watch");

const entries = (await readdir(srcDir))
  .filter((f) => f.endsWith(".js") && !f.startsWith("_") && !NOT_ENTRIES.has(f))
  .sort();
if (entries.length === 0) {
  console.error(`build.mjs: no widget entries (*.js) found in ${srcDir}`);
  process.exit(1);
}

await mkdir(outDir, { recursive: true });

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
const options = {
  entryPoints: entries.map((f) => join(srcDir, f)),
  outdir: outDir,
  bundle: true,
  format: "esm",
  minify: !watch,
  target: "es2020",
  platform: "browser",
  legalComments: "eof",
  logLevel: "info",
  define: { "process.env.NODE_ENV": '"production"' },
  plugins: [copyCss],
};

if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
  console.log(`watching ${srcDir} -> ${outDir}`);
} else {
  await esbuild.build(options);
}
