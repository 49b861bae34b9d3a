// The TypeScript client against a real gateway and stage services (tiny random checkpoints, CPU):
// node --test clients/typescript/test/   (after `npm run build -w clients/typescript`)
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { ConnectError } from "@connectrpc/connect";
import {
  Code,
  JobState,
  OutputFormat,
  Severity,
  Stage,
  SyncHumanClient,
  SyncHumanError,
} from "../dist/index.js";
import {
  PHOTO,
  PYTHON,
  SMALL_OPTIONS,
  TRUNCATED_PHOTO,
  startDeployment,
} from "../../../tests/node/deployment.mjs";

// A plain light-grey 320x240 PNG on stdout: no person in it.
const BLANK_PNG = `
import io, sys
from PIL import Image
buffer = io.BytesIO()
Image.new("RGB", (320, 240), (200, 200, 200)).save(buffer, format="PNG")
sys.stdout.buffer.write(buffer.getvalue())
`;

const TOKEN = "node-test-token"; // a shared deployment (run_suites.mjs) brings its own: use deployment.token
let deployment;
let client;
let finished; // { job, events } of the first job, reused by later tests

async function rejectsWith(promise, code) {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof SyncHumanError, `expected a SyncHumanError, got ${error}`);
    assert.equal(error.codeName, Code[code], error.message);
    return error;
  }
  assert.fail(`expected ${Code[code]}, the call succeeded`);
}

async function collect(iterable) {
  const items = [];
  for await (const item of iterable) items.push(item);
  return items;
}

describe("SyncHumanClient against a live gateway", { timeout: 900_000 }, () => {
  before(async () => {
    deployment = await startDeployment({ token: TOKEN });
    client = new SyncHumanClient({ address: deployment.grpcAddress, token: deployment.token, timeoutMs: 60_000 });
  });
  after(async () => {
    await deployment?.stop();
  });

  test("a photo becomes a GLB; events arrive in order, stages in pipeline order; a rig is asked for", async () => {
    // The rigged GLB asked for too: on random checkpoints no pose is found, so the job succeeds with the plain
    // GLB and a RIG_FAILED warning (or, should a pose be found, with person_rigged.glb).
    const options = {
      ...SMALL_OPTIONS, reconstruction: { ...SMALL_OPTIONS.reconstruction, outputs: [OutputFormat.RIGGED_GLB] },
    };
    const job = await client.submit(PHOTO, { options, mediaType: "image/png" });
    assert.equal(job.state, JobState.QUEUED);
    const events = await collect(client.watch(job.id));
    assert.deepEqual(events.map((e) => Number(e.sequence)), events.map((_, i) => i + 1), "sequences 1, 2, 3, ...");
    assert.equal(events[0].event.case, undefined, "the first event only records the stored job");
    const stages = events.filter((e) => e.event.case === "progress").map((e) => e.event.value.stage);
    assert.deepEqual(stages, [...stages].sort((a, b) => a - b), "preprocess -> multiview -> reconstruction");
    for (const stage of [Stage.PREPROCESS, Stage.MULTIVIEW, Stage.RECONSTRUCTION]) assert.ok(stages.includes(stage));
    const completed = events.filter((e) => e.event.case === "stageCompleted");
    assert.deepEqual(completed.map((e) => e.event.value), [Stage.PREPROCESS, Stage.MULTIVIEW, Stage.RECONSTRUCTION]);
    const last = events.at(-1);
    assert.equal(last.event.case, "finished");
    assert.equal(last.event.value.state, JobState.SUCCEEDED, last.event.value.error?.message);
    const glb = await client.download(job.id, "person.glb");
    assert.equal(glb.subarray(0, 4).toString("latin1"), "glTF");
    const listed = last.event.value.artifacts.find((a) => a.blob.name === "person.glb");
    assert.equal(BigInt(glb.length), listed.blob.sizeBytes);
    const phases = events.filter((e) => e.event.case === "progress").map((e) => e.event.value.phase);
    assert.ok(phases.lastIndexOf("rig") > phases.lastIndexOf("export"), `phases: ${phases}`);
    const rigged = last.event.value.artifacts.some((a) => a.blob.name === "person_rigged.glb");
    const rigFailed = last.event.value.outputReport.issues.filter((issue) => issue.code === "RIG_FAILED");
    if (rigged) assert.equal(rigFailed.length, 0);
    else {
      assert.equal(rigFailed.length, 1, JSON.stringify(last.event.value.outputReport.issues));
      assert.equal(rigFailed[0].severity, Severity.WARNING);
      assert.match(rigFailed[0].message, /^no rigged GLB was made: ./);
    }
    finished = { job: last.event.value, events };
  });

  test("watch resumes after a dropped stream without losing or repeating events", async () => {
    assert.ok(finished, "needs the first test's job");
    let drops = 0;
    const dropAfterTwo = (next) => async (request) => {
      const response = await next(request);
      if (!response.stream || request.method.name !== "WatchJob" || drops > 0) return response;
      drops += 1;
      async function* cut() {
        let sent = 0;
        for await (const message of response.message) {
          if (sent === 2) throw new ConnectError("connection dropped by the test", Code.Unavailable);
          sent += 1;
          yield message;
        }
      }
      return { ...response, message: cut() };
    };
    const flaky = new SyncHumanClient({
      address: deployment.grpcAddress,
      token: deployment.token,
      interceptors: [dropAfterTwo],
    });
    const events = await collect(flaky.watch(finished.job.id, { reconnectDelayMs: 10 }));
    assert.equal(drops, 1);
    assert.deepEqual(events.map((e) => e.sequence), finished.events.map((e) => e.sequence));
    const resumed = await collect(client.watch(finished.job.id, { afterSequence: 3n }));
    assert.equal(resumed[0].sequence, 4n);
  });

  test("download checks size and SHA-256 of every listed file", async () => {
    for (const artifact of finished.job.artifacts) {
      const data = await client.download(finished.job.id, artifact.blob.name);
      assert.equal(BigInt(data.length), artifact.blob.sizeBytes, artifact.blob.name);
    }
    await rejectsWith(client.download(finished.job.id, "no-such-file.bin"), Code.NotFound);
  });

  test("a truncated photo is INVALID_ARGUMENT with decoded google.rpc details", async () => {
    const bytes = await readFile(TRUNCATED_PHOTO);
    let error;
    try {
      const job = await client.submit(bytes, { options: SMALL_OPTIONS });
      // Refused inside the job (preprocess) rather than by SubmitJob: the same Status is in Job.error.
      const ended = await client.wait(job.id);
      assert.equal(ended.state, JobState.FAILED);
      error = SyncHumanError.fromStatus(ended.error);
    } catch (thrown) {
      error = thrown;
    }
    assert.ok(error instanceof SyncHumanError, String(error));
    assert.equal(error.code, Code.InvalidArgument, error.message);
    assert.match(error.serverMessage, /truncat/i);
    const violations = error.details.badRequest?.fieldViolations ?? [];
    assert.ok(violations.length > 0 || error.details.inputQuality, "a BadRequest or quality-report detail");
    for (const violation of violations) assert.ok(violation.field && violation.description);
  });

  test("a photo without a person is INVALID_ARGUMENT with the input quality report", async () => {
    const blank = spawnSync(PYTHON, ["-c", BLANK_PNG], { timeout: 60_000 });
    assert.equal(blank.status, 0, String(blank.stderr));
    let error;
    try {
      const job = await client.submit(blank.stdout, { options: SMALL_OPTIONS });
      const ended = await client.wait(job.id);
      assert.equal(ended.state, JobState.FAILED);
      error = SyncHumanError.fromStatus(ended.error);
    } catch (thrown) {
      error = thrown;
    }
    assert.ok(error instanceof SyncHumanError, String(error));
    assert.equal(error.code, Code.InvalidArgument, error.message);
    const report = error.details.inputQuality;
    assert.ok(report, `an InputQualityReport detail (got ${Object.keys(error.details)})`);
    assert.equal(report.width, 320);
    assert.ok(report.issues.some((issue) => issue.code === "EMPTY_MASK"), JSON.stringify(report.issues));
  });

  test("a running job: delete is refused, a short deadline expires, cancel stops it, then delete works", async () => {
    const job = await client.submit(PHOTO, {
      options: { ...SMALL_OPTIONS, multiview: { steps: 200 } },
      idempotencyKey: `cancel-${Date.now()}`,
    });
    for await (const event of client.watch(job.id)) {
      if (event.event.case === "progress" && event.event.value.stage === Stage.MULTIVIEW) break;
    }
    const refused = await rejectsWith(client.delete(job.id), Code.FailedPrecondition);
    assert.match(refused.serverMessage, /cancel/i);
    await rejectsWith(collect(client.watch(job.id, { timeoutMs: 500 })), Code.DeadlineExceeded);
    const cancelled = await client.cancel(job.id);
    const ended = cancelled.state === JobState.CANCELLED ? cancelled : await client.wait(job.id);
    assert.equal(ended.state, JobState.CANCELLED);
    assert.ok((await client.delete(job.id)) >= 1, "the photo at least");
    const gone = await rejectsWith(client.get(job.id), Code.NotFound);
    assert.equal(gone.details.errorInfo?.reason, "JOB_NOT_FOUND");
  });

  test("profiles are listed with their effective options; a job runs with one, an unknown one is refused", async () => {
    const profiles = await client.profiles();
    const names = profiles.map((p) => p.name);
    assert.equal(names[0], "standard");
    for (const name of ["web", "game", "ar", "preview-only"]) assert.ok(names.includes(name), `profiles: ${names}`);
    const game = profiles.find((p) => p.name === "game");
    assert.ok(game.description.length > 20, game.description);
    assert.equal(game.options.reconstruction.targetFaces, 20000);
    assert.equal(game.effectiveOptions.reconstruction.targetFaces, 20000);
    assert.equal(game.effectiveOptions.reconstruction.textureSize, 2048);
    assert.ok(game.effectiveOptions.reconstruction.outputs.includes(OutputFormat.OBJ));
    assert.ok(game.effectiveOptions.multiview.steps > 0, "unset options show the server defaults");
    assert.ok(finished, "needs the first test's job");
    assert.equal(finished.job.options.profile, "standard", "a job that names none runs with standard");
    assert.equal(finished.job.effectiveOptions.profile, "standard");
    const refused = await rejectsWith(client.submit(PHOTO, { options: { profile: "no-such-profile" } }),
      Code.InvalidArgument);
    assert.match(refused.serverMessage, /standard, web/);
    assert.equal(refused.details.badRequest?.fieldViolations[0]?.field, "options.profile");
    const both = await rejectsWith(client.submit(PHOTO, {
      options: { reconstruction: { targetFaces: 20000, simplifyRatio: 0.5 } },
    }), Code.InvalidArgument);
    assert.match(both.serverMessage, /target_faces/);
  });

  test("a callback URL travels with the submission: a gateway without webhooks refuses it by name", async () => {
    const refused = await rejectsWith(client.submit(PHOTO, { callbackUrl: "https://hooks.example.com/synchuman" }),
      Code.InvalidArgument);
    assert.equal(refused.details.badRequest?.fieldViolations[0]?.field, "callback_url", refused.message);
  });

  test("the bearer token is required and checked", async () => {
    const anonymous = new SyncHumanClient({ address: deployment.grpcAddress });
    await rejectsWith(anonymous.get(finished.job.id), Code.Unauthenticated);
    const wrong = new SyncHumanClient({ address: deployment.grpcAddress, token: "wrong" });
    await rejectsWith(wrong.submit(PHOTO), Code.Unauthenticated);
    assert.equal((await client.get(finished.job.id)).id, finished.job.id);
  });

  test("deleting a finished job removes it and its files", async () => {
    const removed = await client.delete(finished.job.id);
    assert.equal(removed, finished.job.artifacts.length);
    await rejectsWith(client.download(finished.job.id, "person.glb"), Code.NotFound);
  });
});
