// SyncHumanError decodes every google.rpc detail type the services send (no server needed).
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { ConnectError } from "@connectrpc/connect";
import { Code, InputQualityReportSchema, SyncHumanError, rpc } from "../dist/index.js";
import { StatusSchema } from "../dist/gen/google/rpc/status_pb.js";

const retry = create(rpc.RetryInfoSchema, { retryDelay: { seconds: 10n, nanos: 500_000_000 } });
const info = create(rpc.ErrorInfoSchema, { reason: "TOO_MANY_PENDING_JOBS", domain: "synchuman", metadata: { pending: "8" } });
const quota = create(rpc.QuotaFailureSchema, { violations: [{ subject: "jobs", description: "8 pending" }] });
const quality = create(InputQualityReportSchema, {
  width: 640,
  height: 480,
  issues: [{ code: "EMPTY_MASK", message: "no person found" }],
});

test("details of a failed call: RetryInfo, ErrorInfo, QuotaFailure", () => {
  const thrown = new ConnectError("8 jobs are pending (limit 8); retry later", Code.ResourceExhausted, undefined, [
    { desc: rpc.RetryInfoSchema, value: retry },
    { desc: rpc.ErrorInfoSchema, value: info },
    { desc: rpc.QuotaFailureSchema, value: quota },
  ]);
  const error = SyncHumanError.fromCall(thrown);
  assert.equal(error.codeName, "ResourceExhausted");
  assert.equal(error.serverMessage, "8 jobs are pending (limit 8); retry later");
  assert.equal(error.retryAfterSeconds, 10.5);
  assert.equal(error.details.errorInfo.reason, "TOO_MANY_PENDING_JOBS");
  assert.equal(error.details.errorInfo.metadata.pending, "8");
  assert.equal(error.details.quotaFailure.violations[0].subject, "jobs");
  assert.equal(error.details.badRequest, undefined);
});

test("the google.rpc.Status of a failed job, with the input quality report", () => {
  const status = create(StatusSchema, {
    code: Code.InvalidArgument,
    message: "no person found in the photo",
    details: [anyPack(InputQualityReportSchema, quality), anyPack(rpc.BadRequestSchema, create(rpc.BadRequestSchema, {
      fieldViolations: [{ field: "image", description: "empty mask" }],
    }))],
  });
  const error = SyncHumanError.fromStatus(status);
  assert.equal(error.code, Code.InvalidArgument);
  assert.equal(error.details.inputQuality.issues[0].code, "EMPTY_MASK");
  assert.equal(error.details.badRequest.fieldViolations[0].field, "image");
});

test("errors that are not Connect errors become UNKNOWN", () => {
  const error = SyncHumanError.fromCall(new Error("socket hang up"));
  assert.equal(error.code, Code.Unknown);
  assert.match(error.message, /socket hang up/);
});
