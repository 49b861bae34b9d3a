// Run node test suites against ONE deployment (saves a start-up per suite):
//   node tests/node/run_suites.mjs clients/typescript/test/ tests/node/web_page.test.mjs
// Starts the deployment (deployment.mjs), runs `node --test` on the arguments with $SYNCHUMAN_TEST_DEPLOYMENT
// describing it, stops it (also on failure or a signal) and exits with the test run's status.
import { spawn } from "node:child_process";
import { startDeployment } from "./deployment.mjs";

const suites = process.argv.slice(2);
if (suites.length === 0) {
  console.error("usage: node tests/node/run_suites.mjs SUITE...");
  process.exit(2);
}
const started = Date.now();
const deployment = await startDeployment({ token: "node-test-token" });
console.log(`# deployment ready in ${((Date.now() - started) / 1000).toFixed(1)} s`);
let status = 1;
try {
  const shared = { grpcAddress: deployment.grpcAddress, httpUrl: deployment.httpUrl, token: deployment.token };
  const child = spawn(process.execPath, ["--test", "--test-concurrency=1", ...suites], {
    stdio: "inherit",
    env: { ...process.env, SYNCHUMAN_TEST_DEPLOYMENT: JSON.stringify(shared) },
  });
  status = await new Promise((resolve) => child.on("exit", (code, signal) => resolve(code ?? (signal ? 1 : 0))));
} finally {
  await deployment.stop();
}
process.exit(status);
