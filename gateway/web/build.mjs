// Builds the web page into gateway/web/dist/ (git-ignored): app.js bundled with @google/model-viewer (and
// three.js) from node_modules by esbuild, plus index.html and style.css, and Swagger UI's files for /docs.
// Run by `npm run build` (make setup).
import { copyFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
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
// Swagger UI for the gateway's /docs, from npm's swagger-ui-dist (Apache-2.0, licence copied along).
const swagger = dirname(require.resolve("swagger-ui-dist/package.json"));
mkdirSync(join(out, "docs"), { recursive: true });
for (const name of ["swagger-ui-bundle.js", "swagger-ui.css", "LICENSE", "NOTICE"]) {
  copyFileSync(join(swagger, name), join(out, "docs", name));
}
console.log(`web page built in ${out}`);
