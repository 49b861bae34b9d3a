/**
 * Errors of the SyncHuman Serve API with the gRPC code and the `google.rpc` details decoded.
 *
 * The gateway reports errors with the gRPC rich error model: a status code, a message a person can act on and a
 * `google.rpc.Status` whose details are `google.rpc.BadRequest`, `ErrorInfo`, `RetryInfo`, `QuotaFailure` or the
 * input/output quality report. The same Status is stored in `Job.error` when a job fails later.
 */
import { ConnectError, Code } from "@connectrpc/connect";
import { createRegistry, type Message } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
  type BadRequest,
  type ErrorInfo,
  type QuotaFailure,
  type RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";
import {
  InputQualityReportSchema,
  OutputQualityReportSchema,
  type InputQualityReport,
  type OutputQualityReport,
} from "./gen/synchuman/v1/common_pb.js";

/** Every detail type the services attach. */
export const detailRegistry = createRegistry(
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
  QuotaFailureSchema,
  InputQualityReportSchema,
  OutputQualityReportSchema,
);

/** The decoded details of one error, each undefined when the server sent none of that type. */
export interface ErrorDetails {
  badRequest?: BadRequest;
  errorInfo?: ErrorInfo;
  retryInfo?: RetryInfo;
  quotaFailure?: QuotaFailure;
  inputQuality?: InputQualityReport;
  outputQuality?: OutputQualityReport;
}

function sortDetails(messages: Message[]): ErrorDetails {
  const details: ErrorDetails = {};
  for (const message of messages) {
    switch (message.$typeName) {
      case BadRequestSchema.typeName:
        details.badRequest = message as BadRequest;
        break;
      case ErrorInfoSchema.typeName:
        details.errorInfo = message as ErrorInfo;
        break;
      case RetryInfoSchema.typeName:
        details.retryInfo = message as RetryInfo;
        break;
      case QuotaFailureSchema.typeName:
        details.quotaFailure = message as QuotaFailure;
        break;
      case InputQualityReportSchema.typeName:
        details.inputQuality = message as InputQualityReport;
        break;
      case OutputQualityReportSchema.typeName:
        details.outputQuality = message as OutputQualityReport;
        break;
    }
  }
  return details;
}

/** A failed call or a failed job: gRPC `code` (and its name), the server's message and the decoded details. */
export class SyncHumanError extends Error {
  /** gRPC status code (Connect's `Code` enum has the same numbers). */
  readonly code: Code;
  /** Name of the code, e.g. "InvalidArgument". */
  readonly codeName: string;
  /** The server's message as sent (`message` adds the code name in front). */
  readonly serverMessage: string;
  readonly details: ErrorDetails;

  constructor(code: Code, message: string, details: ErrorDetails = {}, options?: { cause?: unknown }) {
    super(`${Code[code] ?? code}: ${message}`, options);
    this.name = "SyncHumanError";
    this.code = code;
    this.codeName = Code[code] ?? String(code);
    this.serverMessage = message;
    this.details = details;
  }

  /** Seconds the server asks to wait before retrying (RetryInfo), or undefined. */
  get retryAfterSeconds(): number | undefined {
    const delay = this.details.retryInfo?.retryDelay;
    return delay === undefined ? undefined : Number(delay.seconds) + delay.nanos / 1e9;
  }

  /** Wraps whatever a Connect call threw (non-Connect errors become UNKNOWN). */
  static fromCall(error: unknown): SyncHumanError {
    if (error instanceof SyncHumanError) return error;
    const connect = ConnectError.from(error);
    return new SyncHumanError(connect.code, connect.rawMessage, sortDetails(connect.findDetails(detailRegistry)), {
      cause: error,
    });
  }

  /** The error of a failed job (`Job.error`, a google.rpc.Status with Any details). */
  static fromStatus(status: Status): SyncHumanError {
    const messages = status.details
      .map((any) => anyUnpack(any, detailRegistry))
      .filter((m): m is Message => m !== undefined);
    return new SyncHumanError(status.code as Code, status.message, sortDetails(messages));
  }
}

export { Code };
