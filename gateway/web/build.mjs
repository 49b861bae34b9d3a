// Builds the web page into gateway/web/dist/ (git-ignored): app.js bundled with @google/model-viewer (and
// three.js) from node_modules by esbuild, plus index.html and style.css. Run by `npm run build` (make setup).
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "src", "app.js")],
  outfile: join(out, "app.js"),
  bundle: true,
  format: "esm",
  minify: true,
  target: ["chrome111", "firefox115", "safari16"],
  legalComments: "linked",
  logLevel: "warning",
});
for (const name of ["index.html", "style.css"]) copyFileSync(join(here, "src", name), join(out, name));
console.log(`web page built in ${out}`);
