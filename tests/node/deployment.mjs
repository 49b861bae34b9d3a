/**
 * A real SyncHuman Serve deployment for node tests: tiny random checkpoints in a temporary folder, the four
 * services started through the console script (`.venv/bin/synchuman serve <target>`) on free ports, CPU only.
 *
 *   const deployment = await startDeployment({ token: "secret" });
 *   ... deployment.grpcAddress, deployment.httpUrl, deployment.token ...
 *   await deployment.stop();   // also registered for process exit
 *
 * With $SYNCHUMAN_TEST_DEPLOYMENT set (JSON of grpcAddress, httpUrl, token; run_suites.mjs sets it) the running
 * deployment described there is used instead, so several suites share one start-up.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, openSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = resolve(fileURLToPath(import.meta.url), "../../..");
const VENV = process.env.SYNCHUMAN_VENV ?? join(REPO_ROOT, ".venv");
const SYNCHUMAN = join(VENV, "bin", "synchuman");
export const PYTHON = join(VENV, "bin", "python");
const BUF = join(REPO_ROOT, "node_modules", ".bin", "buf");
const HEALTH_NAMES = {
  preprocess: "synchuman.v1.PreprocessService",
  stage1: "synchuman.v1.Stage1Service",
  stage2: "synchuman.v1.Stage2Service",
  gateway: "synchuman.v1.ReconstructionService",
};

/** Job options small enough for CPU tests (a job takes tens of seconds on 2 cores). */
export const SMALL_OPTIONS = {
  multiview: { steps: 2 },
  reconstruction: { steps: 2, textureSize: 256, bakeSteps: 5, visibilityViews: 8, simplifyRatio: 0.95 },
};

/** The same options as the HTTP bridge's JSON (proto field names). */
export const SMALL_OPTIONS_JSON = {
  multiview: { steps: 2 },
  reconstruction: { steps: 2, texture_size: 256, bake_steps: 5, visibility_views: 8, simplify_ratio: 0.95 },
};

async function freePort() {
  const server = createServer();
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  const { port } = server.address();
  await new Promise((ok) => server.close(ok));
  return port;
}

function serving(address, service) {
  const result = spawnSync(
    BUF,
    ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--data", JSON.stringify({ service }),
      `http://${address}/grpc.health.v1.Health/Check`],
    { encoding: "utf8", timeout: 10_000 },
  );
  return result.status === 0 && result.stdout.includes('"SERVING"');
}

/**
 * Start the deployment and wait (up to `readyTimeoutMs`) until every service's gRPC health says SERVING.
 * `token`: the gateway's bearer token ("" = none). Logs go to `<folder>/<service>.log`.
 */
export async function startDeployment({ token = "", readyTimeoutMs = 300_000 } = {}) {
  if (process.env.SYNCHUMAN_TEST_DEPLOYMENT) {
    // Started once for several suites by run_suites.mjs: use it, leave stopping to its owner.
    return { ...JSON.parse(process.env.SYNCHUMAN_TEST_DEPLOYMENT), async stop() {} };
  }
  const folder = mkdtempSync(join(tmpdir(), "synchuman-node-"));
  const ckpts = join(folder, "ckpts");
  const tiny = spawnSync(
    PYTHON,
    ["-c", "import sys; from synchuman.checkpoints.tiny import write_tiny_tree; print(write_tiny_tree(sys.argv[1]))", ckpts],
    { encoding: "utf8", timeout: 300_000 },
  );
  if (tiny.status !== 0) throw new Error(`writing tiny checkpoints failed: ${tiny.stderr}`);
  const ports = {};
  for (const name of ["preprocess", "stage1", "stage2", "gateway", "http"]) ports[name] = await freePort();
  const address = (name) => `127.0.0.1:${ports[name]}`;
  const stage = ["--ckpts", ckpts, "--device", "cpu", "--dtype", "float32", "--max-queue", "1", "--grace", "2"];
  const commands = {
    preprocess: ["--address", address("preprocess"), "--segmentation-dir", join(ckpts, "segmentation")],
    stage1: ["--address", address("stage1"), ...stage],
    stage2: ["--address", address("stage2"), ...stage],
    gateway: [
      "--address", address("gateway"), "--http", address("http"), "--data-dir", join(folder, "jobs"),
      "--preprocess", address("preprocess"), "--stage1", address("stage1"), "--stage2", address("stage2"),
      "--auth-token", token,
      // the gateway's CPU cost model prices real weights (200 stage-1 steps: over an hour); these tiny ones run
      // them in about a minute, so the long-running-job tests raise the deadline ceiling instead of being refused
      "--stage-timeout", "14400",
    ],
  };
  const env = { ...process.env, OMP_NUM_THREADS: "1", SYNCHUMAN_GATEWAY_AUTH_TOKEN: "" };
  const children = Object.entries(commands).map(([name, args]) => {
    const log = openSync(join(folder, `${name}.log`), "a");
    const child = spawn(SYNCHUMAN, ["serve", name, ...args], { env, stdio: ["ignore", log, log], detached: true });
    child.serviceName = name;
    return child;
  });
  let stopped = false;
  const kill = (signal) => {
    for (const child of children) {
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(-child.pid, signal);
        } catch {
          // already gone
        }
      }
    }
  };
  const onExit = () => kill("SIGKILL");
  const onSignal = (signal) => {
    kill("SIGKILL");
    process.exit(signal === "SIGINT" ? 130 : 143);
  };
  process.on("exit", onExit);
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  const deployment = {
    folder,
    token,
    grpcAddress: address("gateway"),
    httpUrl: `http://${address("http")}`,
    logs: (name) => join(folder, `${name}.log`),
    async stop({ keepFolder = false } = {}) {
      if (stopped) return;
      stopped = true;
      kill("SIGTERM");
      const deadline = Date.now() + 15_000;
      while (children.some((c) => c.exitCode === null && c.signalCode === null) && Date.now() < deadline) {
        await sleep(100);
      }
      kill("SIGKILL");
      process.off("exit", onExit);
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      if (!keepFolder) rmSync(folder, { recursive: true, force: true });
    },
  };
  const deadline = Date.now() + readyTimeoutMs;
  const waiting = new Set(Object.keys(HEALTH_NAMES));
  while (waiting.size > 0) {
    const dead = children.find((c) => c.exitCode !== null || c.signalCode !== null);
    if (dead || Date.now() > deadline) {
      const reason = dead ? `${dead.serviceName} exited (${dead.exitCode ?? dead.signalCode})` : "timed out";
      await deployment.stop({ keepFolder: true });
      throw new Error(`the deployment did not start: ${reason}; still waiting for ${[...waiting]} (logs in ${folder})`);
    }
    for (const name of [...waiting]) {
      if (serving(address(name), HEALTH_NAMES[name])) waiting.delete(name);
    }
    if (waiting.size > 0) await sleep(1000);
  }
  return deployment;
}

/** A real photo of a person from ../shared/images (or $SYNCHUMAN_IMAGES_DIR), and the truncated JPEG. */
export const IMAGES_DIR = process.env.SYNCHUMAN_IMAGES_DIR ?? resolve(REPO_ROOT, "..", "shared", "images");
export const PHOTO = join(IMAGES_DIR, "person_000.png");
export const TRUNCATED_PHOTO = join(IMAGES_DIR, "photo_truncated.jpeg");
