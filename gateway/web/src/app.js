// The page's behaviour: pick/drop a photo, submit it, follow the job live, show views, warnings, the 3D result
// and download links. Served by the gateway at "/" with everything it needs (no CDN).
import "@google/model-viewer";
import { ApiError, artifact, cancelJob, getJob, setToken, submitJob, token } from "./api.js";
import { followEvents } from "./events.js";
import { loadProfiles, optionsJson, wireOutputs } from "./outputs.js";

const $ = (id) => document.getElementById(id);
const STAGES = { STAGE_PREPROCESS: "preprocess", STAGE_MULTIVIEW: "multiview", STAGE_RECONSTRUCTION: "reconstruction" };
const STAGE_TITLES = { preprocess: "Preparing the photo", multiview: "Generating views", reconstruction: "Building the 3D model" };
const DOWNLOAD_TITLES = {
  "person.glb": "3D model (GLB)",
  "person.usdz": "AR model (USDZ)",
  "preview.png": "Thumbnail (PNG)",
  "turntable.mp4": "Turntable video (MP4)",
  "turntable.webp": "Turntable animation (WebP)",
  "mesh_obj.zip": "OBJ with texture (ZIP)",
  "gaussians.ply": "3D Gaussians (PLY)",
  "person_rigged.glb": "Rigged model with animation (GLB)",
  "input_report.json": "Photo quality report (JSON)",
  "output_report.json": "Model quality report (JSON)",
};
const objectUrls = [];
let chosenFile = null;
let pendingRetry = null;

function status(text) {
  $("status").textContent = text;
}

function showError(error) {
  const box = $("error");
  box.replaceChildren();
  const title = document.createElement("p");
  title.textContent = error.message;
  box.append(title);
  const lines = error instanceof ApiError ? error.violations : [];
  if (lines.length) {
    const list = document.createElement("ul");
    for (const line of lines) list.append(Object.assign(document.createElement("li"), { textContent: line }));
    box.append(list);
  }
  box.hidden = false;
}

function askForToken() {
  $("token-form").hidden = false;
  $("token").focus();
}

function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  objectUrls.push(url);
  return url;
}

function choose(file) {
  if (!file) return;
  chosenFile = file;
  const preview = $("preview");
  preview.src = objectUrl(file);
  preview.hidden = false;
}

function resetJobView() {
  for (const url of objectUrls.splice(0)) URL.revokeObjectURL(url);
  $("job").hidden = false;
  $("result").hidden = true;
  $("error").hidden = true;
  $("warnings").hidden = true;
  $("warnings").replaceChildren();
  $("views").replaceChildren();
  $("downloads").replaceChildren();
  $("framed-figure").hidden = true;
  $("thumbnail-figure").hidden = true;
  delete $("thumbnail-figure").dataset.jobId;
  $("turntable-figure").hidden = true;
  $("rigged-figure").hidden = true;
  delete $("rigged-viewer").dataset.loaded;
  const video = Object.assign(document.createElement("video"), {
    id: "turntable", muted: true, loop: true, autoplay: true, playsInline: true,
  });
  video.setAttribute("aria-label", "Turntable of the 3D person");
  $("turntable").replaceWith(video);
  for (const stage of Object.values(STAGES)) Object.assign($(`progress-${stage}`), { max: 1, value: 0 });
}

function showProgress(progress) {
  const stage = STAGES[progress.stage];
  if (!stage) return;
  const bar = $(`progress-${stage}`);
  if (progress.total_steps) Object.assign(bar, { max: progress.total_steps, value: progress.step ?? 0 });
  const steps = progress.total_steps ? ` ${progress.step ?? 0}/${progress.total_steps}` : "";
  status(`${STAGE_TITLES[stage]}: ${progress.phase ?? ""}${steps}`);
}

function completeStage(stageName) {
  const stage = STAGES[stageName];
  if (stage) Object.assign($(`progress-${stage}`), { max: 1, value: 1 });
}

/** The warnings of the photo's report (and, once done, the model's: e.g. RIG_FAILED) above the progress. */
function showWarnings(...reports) {
  const issues = reports.flatMap((report) => report?.issues ?? []).filter((i) => i.severity !== "SEVERITY_INFO");
  const list = $("warnings");
  list.replaceChildren(...issues.map((issue) =>
    Object.assign(document.createElement("li"), { textContent: issue.message, className: issue.code })));
  list.hidden = issues.length === 0;
}

async function showImage(jobId, name, into, alt) {
  const img = into instanceof HTMLImageElement ? into : document.createElement("img");
  img.src = objectUrl(await artifact(jobId, name));
  if (alt) img.alt = alt;
  if (img !== into) into.append(img);
}

async function afterStage(jobId, stageName) {
  const job = await getJob(jobId);
  const names = new Set((job.artifacts ?? []).map((a) => a.blob.name));
  if (stageName === "STAGE_PREPROCESS") {
    showWarnings(job.input_report);
    if (names.has("framed.png")) {
      await showImage(jobId, "framed.png", $("framed"));
      $("framed-figure").hidden = false;
    }
  } else if (stageName === "STAGE_RECONSTRUCTION") {
    await showThumbnail(jobId, names);
  } else if (stageName === "STAGE_MULTIVIEW") {
    const views = [...names].filter((n) => /^(color|normal)_\d+\.png$/.test(n)).sort();
    for (const name of views) {
      const [kind, index] = name.replace(".png", "").split("_");
      await showImage(jobId, name, $("views"), `Generated ${kind} view ${Number(index) + 1}`);
    }
  }
}

/** The preview thumbnail, as soon as the job lists it (once). */
async function showThumbnail(jobId, names) {
  const figure = $("thumbnail-figure");
  if (!names.has("preview.png") || figure.dataset.jobId === jobId) return;
  figure.dataset.jobId = jobId;
  await showImage(jobId, "preview.png", $("thumbnail"));
  figure.hidden = false;
}

/** The turntable beside the 3D viewer: the MP4, or the animated WebP where the browser cannot play H.264. */
async function showTurntable(jobId, names) {
  if (!names.has("turntable.mp4") && !names.has("turntable.webp")) return;
  const video = $("turntable");
  const asImage = async () => {
    if (!names.has("turntable.webp")) return;
    const img = document.createElement("img");
    img.alt = "Turntable of the 3D person";
    img.src = objectUrl(await artifact(jobId, "turntable.webp"));
    video.replaceWith(img);
    img.id = "turntable";
  };
  if (names.has("turntable.mp4") && video.canPlayType?.("video/mp4; codecs=avc1.42E01E")) {
    video.addEventListener("error", () => asImage().catch(showError), { once: true });
    video.src = objectUrl(await artifact(jobId, "turntable.mp4"));
  } else {
    await asImage();
  }
  $("turntable-figure").hidden = false;
}

/** Resolves when `viewer` (a model-viewer) has loaded its model; rejects with a readable error. */
function viewerLoaded(viewer) {
  return new Promise((resolve, reject) => {
    viewer.addEventListener("load", resolve, { once: true });
    viewer.addEventListener("error", (e) => reject(new Error(`the 3D viewer could not show the model: ${e.detail?.type ?? "error"}`)), { once: true });
  });
}

/** The rigged GLB beside the plain one, playing its sample animation (model-viewer's autoplay), when made. */
async function showRigged(jobId, names) {
  if (!names.has("person_rigged.glb")) return;
  const viewer = $("rigged-viewer");
  const loaded = viewerLoaded(viewer);
  viewer.src = objectUrl(await artifact(jobId, "person_rigged.glb"));
  $("rigged-figure").hidden = false;
  await loaded;
  viewer.dataset.loaded = "true";
}

function downloadLink(jobId, name, blobUrl) {
  const link = document.createElement("a");
  link.href = blobUrl ?? `/v1/jobs/${encodeURIComponent(jobId)}/artifacts/${encodeURIComponent(name)}`;
  link.download = `${jobId}-${name}`;
  link.textContent = DOWNLOAD_TITLES[name] ?? name;
  if (!blobUrl) {
    // Artifacts may need the token, which a plain link cannot send: fetch, then save the blob.
    link.addEventListener("click", async (event) => {
      event.preventDefault();
      try {
        const href = objectUrl(await artifact(jobId, name));
        Object.assign(document.createElement("a"), { href, download: link.download }).click();
      } catch (error) {
        showError(error);
      }
    });
  }
  return Object.assign(document.createElement("li"), {}).appendChild(link).parentElement;
}

async function showResult(job) {
  const listed = new Set((job.artifacts ?? []).map((a) => a.blob.name));
  await showThumbnail(job.id, listed);
  status("Loading the 3D model...");
  const glbUrl = objectUrl(await artifact(job.id, "person.glb"));
  const viewer = $("viewer");
  const loaded = viewerLoaded(viewer);
  $("result").hidden = false;
  viewer.src = glbUrl;
  $("result").scrollIntoView({ behavior: "smooth", block: "start" });
  const names = (job.artifacts ?? []).map((a) => a.blob.name).filter((n) => n !== "input");
  const first = ["person.glb", "output_report.json", "input_report.json"].filter((n) => names.includes(n));
  const rest = names.filter((n) => !first.includes(n)).sort();
  $("downloads").replaceChildren(...[...first, ...rest].map((n) => downloadLink(job.id, n, n === "person.glb" ? glbUrl : undefined)));
  showWarnings(job.input_report, job.output_report);
  await showTurntable(job.id, listed);
  await showRigged(job.id, listed);
  await loaded;
  viewer.dataset.loaded = "true";
  status("Done: drag the model (or focus it and use the arrow keys) to turn it.");
}

function jobFailed(job) {
  if (job.input_report) showWarnings(job.input_report);
  if (job.state === "JOB_STATE_CANCELLED") {
    status("The job was cancelled.");
    return;
  }
  const error = job.error ?? {};
  showError(new ApiError(0, error.code ?? "FAILED", error.message ?? "the job failed", error.details ?? []));
  status("The job failed.");
}

async function run(file, options) {
  resetJobView();
  status("Uploading the photo...");
  const job = await submitJob(file, options);
  history.replaceState(null, "", `#job=${encodeURIComponent(job.id)}`); // a reload shows this job again
  status("Queued.");
  await follow(job.id);
}

/** Show a job's progress from its first event to the end, then its result or its error. */
async function follow(jobId) {
  $("job").dataset.jobId = jobId;
  $("cancel").hidden = false;
  let finished = null;
  await followEvents(jobId, (event) => {
    const data = event.data;
    if (event.event === "progress") showProgress(data.progress);
    else if (event.event === "stage_completed") {
      completeStage(data.stage_completed);
      afterStage(jobId, data.stage_completed).catch(showError);
    } else if (event.event === "retrying") status(`A stage failed and is retried: ${data.retrying?.message ?? ""}`);
    else if (event.event === "finished") finished = data.finished;
  }, { onReconnect: (attempt) => status(`Connection lost; reconnecting (attempt ${attempt})...`) })
    .finally(() => { $("cancel").hidden = true; });
  if (finished?.state === "JOB_STATE_SUCCEEDED") await showResult(finished);
  else if (finished) jobFailed(finished);
}

/** Run `work`; a 401 asks for the token and remembers `retry` for when it is given. */
async function guarded(work, retry) {
  $("submit").disabled = true;
  try {
    await work();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      pendingRetry = retry;
      status("This server needs an access token.");
      askForToken();
    } else {
      $("job").hidden = false;
      showError(error);
      status("Something went wrong.");
    }
  } finally {
    $("submit").disabled = false;
  }
}

async function onSubmit(event) {
  event.preventDefault();
  const file = chosenFile ?? $("photo").files[0];
  if (!file) {
    $("job").hidden = false;
    showError(new Error("Choose a photo first."));
    return;
  }
  await guarded(() => run(file, optionsJson($("options").value)), () => $("upload-form").requestSubmit());
}

/** `#job=<id>` in the address: show that job (after a reload, or from a shared link in the same tab). */
function jobFromAddress() {
  const id = new URLSearchParams(location.hash.slice(1)).get("job");
  if (!id) return;
  const show = () => guarded(async () => {
    resetJobView();
    await follow(id);
  }, show);
  show();
}

function wireDropZone() {
  const zone = $("drop-zone");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    choose(e.dataTransfer?.files?.[0]);
  });
}

function init() {
  wireDropZone();
  wireOutputs();
  loadProfiles();
  $("photo").addEventListener("change", () => choose($("photo").files[0]));
  $("upload-form").addEventListener("submit", onSubmit);
  $("cancel").addEventListener("click", async () => {
    $("cancel").disabled = true;
    // Said before the request: the request waits until the job has stopped, and the event stream's
    // "finished" (which says "cancelled") may arrive before its answer; nothing may overwrite that.
    status("Cancelling...");
    try {
      await cancelJob($("job").dataset.jobId);
    } catch (error) {
      showError(error);
    } finally {
      $("cancel").disabled = false;
    }
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value);
    $("token-form").hidden = true;
    const retry = pendingRetry;
    pendingRetry = null;
    loadProfiles();
    retry?.();
  });
  document.body.dataset.ready = "true";
  if (token()) $("token-form").hidden = true;
  jobFromAddress();
  window.addEventListener("hashchange", jobFromAddress);
}

init();
