// The web page plays a rigged GLB's sample animation (issue 22) in a real headless Chromium (Debian's package,
// puppeteer-core). The GLB is made in the set-up by the Python rig core on a synthetic A-pose body with a known
// skeleton (bench/benchlib/rig_bodies.py; random checkpoints give no usable pose, so a served job would end with
// RIG_FAILED). The page's built files are served as the gateway serves them (/ and /web/) by a small static
// server here, with the GLB beside them; no gateway is needed. The page's rigged viewer (autoplay) must list the
// clip and play it; two frames of the clip, 1 s apart, must differ where the model is and not elsewhere.
// Screenshots go to tests/artifacts/ (git-ignored; docs/rig-animation-frame-*.png are copies of one run).
//   node --test tests/node/rig_animation.test.mjs      ($SYNCHUMAN_CHROMIUM overrides /usr/bin/chromium)
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join, normalize } from "node:path";
import { after, before, describe, test } from "node:test";
import puppeteer from "puppeteer-core";
import { PYTHON, REPO_ROOT } from "./deployment.mjs";

const CHROMIUM = process.env.SYNCHUMAN_CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = join(REPO_ROOT, "tests", "artifacts");
const DIST = join(REPO_ROOT, "gateway", "web", "dist");
const VIEWER_BACKGROUND = [0xdf, 0xe6, 0xee]; // model-viewer's background-color in style.css
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".glb": "model/gltf-binary" };
const MAKE_RIGGED_GLB = `
import sys
sys.path.insert(0, "bench")
from benchlib import rig_bodies
from synchuman.rig.api import rig_glb
body = rig_bodies.build_body("a_pose", 80)
result = rig_glb(body.glb(), rig_bodies.landmark_views(body, 256))
if result.glb is None:
    sys.exit(f"no rig: {result.reason}")
open(sys.argv[1], "wb").write(result.glb)
`;

let server;
let browser;
let glb;

/** Serve the built page like the gateway (/ -> index.html, /web/<file>) and the rigged GLB at /rigged.glb. */
async function servePage() {
  const http = createServer((request, response) => {
    const path = new URL(request.url, "http://page").pathname;
    let body = null;
    let file = path;
    if (path === "/") file = "index.html";
    else if (path.startsWith("/web/")) file = normalize(path.slice("/web/".length)).replace(/^(\.\.[/\\])+/, "");
    if (path === "/rigged.glb") body = glb;
    else if (file !== path && existsSync(join(DIST, file))) body = readFileSync(join(DIST, file));
    if (body === null) {
      response.writeHead(404, { "content-type": "application/json" });
      response.end(JSON.stringify({ error: { code: "NOT_FOUND", message: `no ${path} here`, details: [] } }));
      return;
    }
    response.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
    response.end(body);
  });
  await new Promise((ok) => http.listen(0, "127.0.0.1", ok));
  return http;
}

/** Per-pixel comparison of two same-sized PNG screenshots (decoded in the page's canvas). */
async function compareFrames(page, first, second, background) {
  return page.evaluate(async (a, b, [r, g, bl]) => {
    const pixels = async (b64) => {
      const image = new Image();
      image.src = `data:image/png;base64,${b64}`;
      await image.decode();
      const canvas = Object.assign(document.createElement("canvas"), { width: image.width, height: image.height });
      const context = canvas.getContext("2d");
      context.drawImage(image, 0, 0);
      return context.getImageData(0, 0, image.width, image.height);
    };
    const [one, two] = [await pixels(a), await pixels(b)];
    const { width, height } = one;
    const off = (data, i) => Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - bl);
    const model = new Uint8Array(width * height);
    for (let p = 0; p < width * height; p += 1) model[p] = off(one.data, 4 * p) > 30 || off(two.data, 4 * p) > 30;
    // The model's region: where either frame shows it, grown by 3 px (its anti-aliased edge).
    const near = new Uint8Array(width * height);
    for (let y = 0; y < height; y += 1) {
      for (let x = 0; x < width; x += 1) {
        if (!model[y * width + x]) continue;
        for (let dy = -3; dy <= 3; dy += 1) {
          for (let dx = -3; dx <= 3; dx += 1) {
            const yy = y + dy;
            const xx = x + dx;
            if (yy >= 0 && yy < height && xx >= 0 && xx < width) near[yy * width + xx] = 1;
          }
        }
      }
    }
    let modelPixels = 0;
    let changedOnModel = 0;
    let backgroundPixels = 0;
    let changedElsewhere = 0;
    for (let p = 0; p < width * height; p += 1) {
      const i = 4 * p;
      const change = Math.abs(one.data[i] - two.data[i]) + Math.abs(one.data[i + 1] - two.data[i + 1])
        + Math.abs(one.data[i + 2] - two.data[i + 2]);
      if (near[p]) {
        modelPixels += model[p];
        changedOnModel += model[p] && change > 30 ? 1 : 0;
      } else {
        backgroundPixels += 1;
        changedElsewhere += change > 6 ? 1 : 0; // a much finer threshold off the model
      }
    }
    return { width, height, modelPixels, changedOnModel, backgroundPixels, changedElsewhere };
  }, first, second, background);
}

describe("the web page plays a rigged GLB's animation in headless Chromium", { timeout: 300_000 }, () => {
  before(async () => {
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium (scripts/bootstrap.sh does)`);
    assert.ok(existsSync(join(DIST, "app.js")), "the page is not built: npm run build");
    mkdirSync(ARTIFACTS, { recursive: true });
    const path = join(ARTIFACTS, "rigged_synthetic.glb");
    const made = spawnSync(PYTHON, ["-c", MAKE_RIGGED_GLB, path], { cwd: REPO_ROOT, encoding: "utf8", timeout: 240_000 });
    assert.equal(made.status, 0, `the rig core could not make the GLB: ${made.stderr}`);
    glb = readFileSync(path);
    server = await servePage();
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--use-gl=angle", "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader"],
    });
  });
  after(async () => {
    await browser?.close();
    server?.close();
  });

  test("the rigged viewer autoplays the clip; two frames differ on the model only", async () => {
    const page = await browser.newPage();
    await page.setViewport({ width: 1100, height: 900 });
    const errors = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    await page.goto(`http://127.0.0.1:${server.address().port}/`, { waitUntil: "load" });
    await page.waitForSelector("body[data-ready=true]", { timeout: 30_000 });
    // What showRigged does once a job lists person_rigged.glb (the job's artifact replaced by the served file).
    const played = await page.evaluate(async () => {
      document.getElementById("result").hidden = false;
      document.getElementById("rigged-figure").hidden = false;
      const viewer = document.getElementById("rigged-viewer");
      const loaded = new Promise((ok, fail) => {
        viewer.addEventListener("load", ok, { once: true });
        viewer.addEventListener("error", (e) => fail(new Error(`model-viewer error ${e.detail?.type}`)), { once: true });
      });
      viewer.src = "/rigged.glb";
      await loaded;
      viewer.scrollIntoView();
      const start = viewer.currentTime;
      await new Promise((ok) => setTimeout(ok, 700));
      return {
        autoplay: viewer.autoplay, animations: viewer.availableAnimations, paused: viewer.paused,
        advanced: viewer.currentTime - start,
      };
    });
    assert.deepEqual(played.animations, ["idle"]);
    assert.ok(played.autoplay && !played.paused && played.advanced > 0.1, `not playing: ${JSON.stringify(played)}`);
    const frames = [];
    for (const [index, time] of [[1, 0.5], [2, 1.5]]) { // a quarter and three quarters of the 2 s loop
      await page.evaluate(async (t) => {
        const viewer = document.getElementById("rigged-viewer");
        viewer.pause();
        viewer.currentTime = t;
        await new Promise((ok) => setTimeout(ok, 600)); // a few rendered frames at the new time
      }, time);
      const element = await page.$("#rigged-viewer");
      const png = await element.screenshot({ encoding: "base64" });
      writeFileSync(join(ARTIFACTS, `rig-animation-frame-${index}.png`), Buffer.from(png, "base64"));
      frames.push(png);
    }
    const found = await compareFrames(page, frames[0], frames[1], VIEWER_BACKGROUND);
    writeFileSync(join(ARTIFACTS, "rig-animation.json"), JSON.stringify(found) + "\n");
    const area = found.width * found.height;
    assert.ok(found.modelPixels > 0.01 * area, `the model is hardly drawn: ${JSON.stringify(found)}`);
    assert.ok(found.changedOnModel > 0.02 * found.modelPixels, `the pose did not change: ${JSON.stringify(found)}`);
    assert.ok(found.changedElsewhere <= 0.0005 * found.backgroundPixels, `the background changed: ${JSON.stringify(found)}`);
    assert.deepEqual(errors, []);
  });
});
