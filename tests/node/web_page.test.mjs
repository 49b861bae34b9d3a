// The web page in a real headless Chromium (Debian's package, driven by puppeteer-core) against a live gateway and
// stage services on tiny random checkpoints. Screenshots go to tests/artifacts/ (git-ignored).
//   node --test tests/node/web_page.test.mjs      ($SYNCHUMAN_CHROMIUM overrides /usr/bin/chromium)
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import puppeteer from "puppeteer-core";
import {
  PHOTO,
  PYTHON,
  REPO_ROOT,
  SMALL_OPTIONS_JSON,
  TRUNCATED_PHOTO,
  startDeployment,
} from "./deployment.mjs";

const CHROMIUM = process.env.SYNCHUMAN_CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = join(REPO_ROOT, "tests", "artifacts");
const TOKEN = "node-test-token"; // a shared deployment (run_suites.mjs) brings its own: use deployment.token
const VIEWER_BACKGROUND = [0xdf, 0xe6, 0xee]; // model-viewer's background-color in style.css
const CHROMIUM_FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-dev-shm-usage",
  "--use-gl=angle",
  "--use-angle=swiftshader",
  "--enable-unsafe-swiftshader",
];

// The photo flattened onto white (no alpha: the segmenter runs) and cut below the chest (the person touches the
// bottom edge): the quality gate warns PERSON_CUT_OFF.
const CUT_OFF_PHOTO = `
import sys
from PIL import Image
photo = Image.open(sys.argv[1]).convert("RGBA")
flat = Image.new("RGB", photo.size, "white")
flat.paste(photo, mask=photo.getchannel("A"))
box = photo.getchannel("A").getbbox() or (0, 0, *photo.size)
flat.crop((0, 0, photo.width, box[1] + (box[3] - box[1]) // 2)).save(sys.argv[2], quality=92)
`;

let deployment;
let browser;
let page; // the tab of the first two tests
const consoleErrors = [];

async function openPage(viewport = { width: 1280, height: 1000 }) {
  const page = await browser.newPage();
  await page.setViewport(viewport);
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => consoleErrors.push(String(error)));
  await page.goto(deployment.httpUrl + "/", { waitUntil: "load" });
  await page.waitForSelector("body[data-ready=true]", { timeout: 30_000 });
  return page;
}

/** Upload `photo` with the small options (and the extra files `formats`, e.g. "OUTPUT_FORMAT_PREVIEW"). */
async function submitPhoto(page, photo, formats = []) {
  const input = await page.$("#photo");
  await input.uploadFile(photo);
  await page.$eval("#options", (el, json) => { el.value = json; }, JSON.stringify(SMALL_OPTIONS_JSON));
  for (const format of formats) await page.click(`input[name=format][value=${format}]`);
  await page.click("#submit");
}

async function screenshot(page, name, options = {}) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, name);
  await page.screenshot({ path, ...options });
  return path;
}

/** Wait for `selector`; on timeout, save a screenshot and fail with what the page says. */
async function waitOrExplain(page, selector, timeout, shot) {
  try {
    await page.waitForSelector(selector, { timeout });
  } catch (error) {
    const path = await screenshot(page, shot, { fullPage: true });
    const said = await page.evaluate(() => ({
      status: document.getElementById("status")?.textContent,
      error: document.getElementById("error")?.textContent,
    }));
    throw new Error(`${error.message}; page status ${JSON.stringify(said)}; screenshot ${path}; console ${consoleErrors}`);
  }
}

/** Fraction of the element's screenshot pixels that differ clearly from `background` (decoded in the page). */
async function differingFraction(page, selector, background) {
  const element = await page.$(selector);
  const png = await element.screenshot({ encoding: "base64" });
  return page.evaluate(async (b64, [r, g, b]) => {
    const image = new Image();
    image.src = `data:image/png;base64,${b64}`;
    await image.decode();
    const canvas = Object.assign(document.createElement("canvas"), { width: image.width, height: image.height });
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const { data } = context.getImageData(0, 0, image.width, image.height);
    let differing = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) > 30) differing += 1;
    }
    return differing / (data.length / 4);
  }, png, background);
}

describe("the web page in headless Chromium", { timeout: 900_000 }, () => {
  before(async () => {
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium (scripts/bootstrap.sh does)`);
    assert.ok(existsSync(join(REPO_ROOT, "gateway", "web", "dist", "app.js")), "the page is not built: npm run build");
    deployment = await startDeployment({ token: TOKEN });
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_FLAGS,
      protocolTimeout: 900_000, // waiting for a whole job is one long protocol call
    });
  });
  after(async () => {
    await browser?.close();
    await deployment?.stop();
  });

  test("a photo becomes a 3D model drawn in the viewer, with views, previews, token asked once, downloads", async () => {
    page = await openPage();
    // Control: the empty viewer (no model) must not pass the "model is drawn" check below.
    await page.$eval("#result", (section) => { section.hidden = false; });
    const empty = await differingFraction(page, "#viewer", VIEWER_BACKGROUND);
    await page.$eval("#result", (section) => { section.hidden = true; });
    assert.ok(empty < 0.001, `the empty viewer already differs from its background (${empty})`);
    await submitPhoto(page, PHOTO, ["OUTPUT_FORMAT_PREVIEW", "OUTPUT_FORMAT_RIGGED_GLB"]);
    await page.waitForSelector("#token-form:not([hidden])", { visible: true, timeout: 30_000 });
    await page.type("#token", deployment.token);
    await page.keyboard.press("Enter"); // keyboard only: the token form submits, the upload resumes
    await page.waitForSelector("#progress-multiview", { visible: true, timeout: 30_000 });
    await waitOrExplain(page, "#viewer[data-loaded=true]", 600_000, "web_viewer_timeout.png");
    const views = await page.$$eval("#views img", (imgs) => imgs.map((i) => i.alt));
    assert.equal(views.length, 10, `views: ${views}`);
    // "Rigged (animated)" asked for: random checkpoints give no usable pose, so the page shows the RIG_FAILED
    // warning (its animation playing is tests/node/rig_animation.test.mjs); a rig made anyway must be shown.
    const rig = await page.evaluate(() => ({
      warned: [...document.querySelectorAll("#warnings li.RIG_FAILED")].map((li) => li.textContent),
      shown: document.getElementById("rigged-viewer").dataset.loaded === "true",
    }));
    assert.ok(rig.shown ? rig.warned.length === 0 : /^no rigged GLB was made: ./.test(rig.warned[0] ?? ""),
      JSON.stringify(rig));
    const progress = await page.$$eval("progress", (bars) => bars.map((b) => b.value / b.max));
    assert.deepEqual(progress, [1, 1, 1]);
    const downloads = await page.$$eval("#downloads a", (links) => links.map((a) => a.textContent));
    for (const title of ["3D model (GLB)", "Thumbnail (PNG)", "Turntable video (MP4)", "Turntable animation (WebP)"]) {
      assert.ok(downloads.includes(title), `downloads: ${downloads}`);
    }
    // The thumbnail (shown once the job lists preview.png) and the turntable beside the viewer, both decoded.
    assert.equal(await page.$eval("#thumbnail", (img) => img.complete && img.naturalWidth), 512);
    await waitOrExplain(page, "#turntable-figure:not([hidden])", 30_000, "web_turntable_timeout.png");
    await page.waitForFunction(() => {
      const shown = document.getElementById("turntable");
      return shown.tagName === "VIDEO" ? shown.readyState >= 2 && shown.videoWidth > 0 : shown.naturalWidth > 0;
    }, { timeout: 30_000 });
    // The profile picker, filled from GET /v1/profiles once the token was given; a profile fills the fields.
    await page.waitForSelector("#profile[data-loaded=true]", { timeout: 30_000 });
    const profiles = await page.$$eval("#profile option", (options) => options.map((o) => o.value));
    assert.deepEqual(profiles, ["standard", "web", "game", "ar", "preview-only"]);
    await page.select("#profile", "game");
    const game = await page.evaluate(() => ({
      faces: document.getElementById("faces").placeholder,
      formats: [...document.querySelectorAll("input[name=format]:checked")].map((box) => box.value),
      said: document.getElementById("profile-description").textContent,
    }));
    assert.deepEqual([game.faces, game.formats], ["20000", ["OUTPUT_FORMAT_OBJ"]]);
    assert.match(game.said, /game engine/);
    await page.$eval("#viewer", (viewer) => viewer.scrollIntoView());
    await new Promise((resolve) => setTimeout(resolve, 1500)); // let the viewer render a few frames
    const drawn = await differingFraction(page, "#viewer", VIEWER_BACKGROUND);
    await screenshot(page, "web_viewer.png", { fullPage: false });
    await screenshot(page, "web_result_full.png", { fullPage: true });
    writeFileSync(join(ARTIFACTS, "web_viewer.json"), JSON.stringify({ emptyFraction: empty, drawnFraction: drawn }) + "\n");
    assert.ok(drawn > 0.005, `the model is not drawn: only ${(drawn * 100).toFixed(2)} % of the viewer differs`);
  });

  test("a truncated photo shows the server's message; the token is not asked again", async () => {
    assert.ok(page, "needs the first test's tab (the token lives in its sessionStorage)");
    await page.goto(deployment.httpUrl + "/", { waitUntil: "load" });
    await page.waitForSelector("body[data-ready=true]", { timeout: 30_000 });
    await submitPhoto(page, TRUNCATED_PHOTO);
    await waitOrExplain(page, "#error:not([hidden])", 300_000, "web_error_timeout.png");
    const message = await page.$eval("#error", (box) => box.textContent);
    assert.match(message, /truncat/i);
    assert.equal(await page.$eval("#token-form", (form) => form.hidden), true, "token kept in sessionStorage");
    await screenshot(page, "web_truncated_error.png", { fullPage: true });
  });

  test("a photo with the person cut off shows the quality warning; Cancel stops the job", async () => {
    assert.ok(page, "needs the first test's tab");
    const cutOff = join(mkdtempSync(join(tmpdir(), "synchuman-web-")), "cut_off.jpg");
    const made = spawnSync(PYTHON, ["-c", CUT_OFF_PHOTO, PHOTO, cutOff], { encoding: "utf8", timeout: 60_000 });
    assert.equal(made.status, 0, made.stderr);
    await page.goto(deployment.httpUrl + "/", { waitUntil: "load" });
    await page.waitForSelector("body[data-ready=true]", { timeout: 30_000 });
    await page.$("#photo").then((input) => input.uploadFile(cutOff));
    const slow = { ...SMALL_OPTIONS_JSON, multiview: { steps: 200 } };
    await page.$eval("#options", (el, json) => { el.value = json; }, JSON.stringify(slow));
    await page.click("#submit");
    await waitOrExplain(page, "#warnings:not([hidden])", 300_000, "web_warning_timeout.png");
    const warnings = await page.$$eval("#warnings li", (items) => items.map((li) => li.className));
    assert.ok(warnings.includes("PERSON_CUT_OFF"), `warnings: ${warnings}`);
    await screenshot(page, "web_quality_warning.png", { fullPage: true });
    await page.click("#cancel");
    await page.waitForFunction(() => /cancelled/i.test(document.getElementById("status").textContent), {
      timeout: 120_000,
    });
    assert.equal(await page.$eval("#cancel", (button) => button.hidden), true);
    await page.close();
  });

  test("phone-sized viewport: no horizontal scrolling, labelled controls, keyboard reachable", async () => {
    const phone = await openPage({ width: 390, height: 844, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow} px`);
    const unlabelled = await phone.$$eval("input, textarea", (fields) =>
      fields.filter((f) => !f.labels || f.labels.length === 0).map((f) => f.id));
    assert.deepEqual(unlabelled, []);
    await phone.keyboard.press("Tab");
    assert.equal(await phone.evaluate(() => document.activeElement?.id), "photo");
    await screenshot(phone, "web_phone.png", { fullPage: true });
    await phone.close();
  });

  test("no script errors on the page", () => {
    // The page's own requests that the server refuses on purpose (401 before the token, 400 for the bad photo).
    const unexpected = consoleErrors.filter((text) => !/status of (401|400)/.test(text));
    assert.deepEqual(unexpected, []);
  });
});
