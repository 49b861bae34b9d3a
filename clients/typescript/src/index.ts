/** TypeScript client of SyncHuman Serve: see README.md. */
export {
  CHUNK_BYTES,
  SyncHumanClient,
  TERMINAL_STATES,
  type CallOptions,
  type ClientOptions,
  type SubmitOptions,
  type WatchOptions,
} from "./client.js";
export { Code, SyncHumanError, detailRegistry, type ErrorDetails } from "./errors.js";
export * from "./gen/synchuman/v1/common_pb.js";
export * from "./gen/synchuman/v1/reconstruction_pb.js";
export * as rpc from "./gen/google/rpc/error_details_pb.js";
export { type Status } from "./gen/google/rpc/status_pb.js";
