/**
 * A small idiomatic layer over the generated `synchuman.v1.ReconstructionService` client (gRPC over HTTP/2).
 *
 *   const client = new SyncHumanClient({ address: "127.0.0.1:50051", token: process.env.TOKEN });
 *   const job = await client.submit(await readFile("photo.jpg"));
 *   for await (const event of client.watch(job.id)) console.log(event.sequence, event.event.case);
 *   await writeFile("person.glb", await client.download(job.id, "person.glb"));
 *
 * A named output profile of the gateway (`await client.profiles()` lists them) gives a job its options; set fields
 * override single ones: `client.submit(photo, { options: { profile: "web", reconstruction: { textureSize: 2048 } } })`.
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { JobOptionsSchema } from "./gen/synchuman/v1/common_pb.js";
import {
  JobState,
  ReconstructionService,
  SubmitJobRequestSchema,
  type Job,
  type Profile,
  type WatchJobResponse,
} from "./gen/synchuman/v1/reconstruction_pb.js";
import { SyncHumanError } from "./errors.js";

/** Bytes per upload chunk: the contract's maximum (1 MiB). */
export const CHUNK_BYTES = 1 << 20;

/** Job states after which nothing changes any more. */
export const TERMINAL_STATES: ReadonlySet<JobState> = new Set([
  JobState.SUCCEEDED,
  JobState.FAILED,
  JobState.CANCELLED,
]);

export interface ClientOptions {
  /** Gateway gRPC address: "host:port" or "http://host:port" (plaintext HTTP/2). */
  address: string;
  /** Bearer token of the gateway (`--auth-token` / `$SYNCHUMAN_GATEWAY_AUTH_TOKEN`), if it requires one. */
  token?: string;
  /** Default deadline of unary calls and uploads/downloads in milliseconds (default 60 000). */
  timeoutMs?: number;
  /** Extra Connect interceptors (logging, tracing, tests). */
  interceptors?: Interceptor[];
  /** Use this transport instead of a gRPC transport to `address` (then `token`/`interceptors` are its job). */
  transport?: Transport;
}

export interface CallOptions {
  /** Deadline of this call in milliseconds; the server sees it as the gRPC deadline. */
  timeoutMs?: number;
  /** Aborts the call. */
  signal?: AbortSignal;
}

export interface SubmitOptions extends CallOptions {
  /**
   * Options for every stage; unset fields take the named profile's options (`profile`, see
   * {@link SyncHumanClient.profiles}; default "standard"), then the server's defaults.
   */
  options?: MessageInitShape<typeof JobOptionsSchema>;
  /** Makes submission idempotent: the same key returns the same job (up to 128 printable characters). */
  idempotencyKey?: string;
  /** Informational media type of the photo (the server identifies the image from its bytes). */
  mediaType?: string;
  /**
   * Webhook: the gateway POSTs a signed Standard Webhooks event here when the job ends (succeeded, failed or
   * cancelled), retrying for at least 24 h. The gateway must have webhooks on and the host on its allow-list;
   * delivery attempts show on `getJob(id).webhook`.
   */
  callbackUrl?: string;
}

export interface WatchOptions {
  /** Only events after this sequence number (0: from the first event). */
  afterSequence?: bigint;
  /** Reconnect attempts in a row after a dropped stream before giving up (default 5). */
  maxReconnects?: number;
  /** Wait before each reconnect in milliseconds (default 500, doubled per attempt in a row). */
  reconnectDelayMs?: number;
  /** Deadline of each WatchJob call in milliseconds (none by default: a job can take a long time). */
  timeoutMs?: number;
  /** Stops watching. */
  signal?: AbortSignal;
}

/** Codes after which a dropped event stream is resumed instead of reported. */
const RESUMABLE = new Set([Code.Unavailable, Code.Internal, Code.Unknown, Code.Aborted]);

function baseUrl(address: string): string {
  return /^https?:\/\//.test(address) ? address : `http://${address}`;
}

function bearer(token: string): Interceptor {
  return (next) => (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
}

async function* uploadMessages(
  photo: Uint8Array,
  options: SubmitOptions,
): AsyncGenerator<MessageInitShape<typeof SubmitJobRequestSchema>> {
  const sha256 = createHash("sha256").update(photo).digest("hex");
  yield {
    payload: {
      case: "start",
      value: {
        options: options.options ? create(JobOptionsSchema, options.options) : undefined,
        idempotencyKey: options.idempotencyKey ?? "",
        callbackUrl: options.callbackUrl ?? "",
        image: {
          name: "input",
          mediaType: options.mediaType ?? "application/octet-stream",
          sizeBytes: BigInt(photo.length),
          sha256,
        },
      },
    },
  };
  for (let offset = 0; offset < photo.length; offset += CHUNK_BYTES) {
    const data = photo.subarray(offset, offset + CHUNK_BYTES);
    yield { payload: { case: "chunk", value: { name: "input", offset: BigInt(offset), data } } };
  }
}

/** Client of a SyncHuman Serve gateway. Every failure is thrown as a {@link SyncHumanError}. */
export class SyncHumanClient {
  /** The generated Connect client, for calls this layer does not wrap (ListJobs, raw messages). */
  readonly raw: Client<typeof ReconstructionService>;
  private readonly timeoutMs: number;

  constructor(options: ClientOptions) {
    const interceptors = [...(options.token ? [bearer(options.token)] : []), ...(options.interceptors ?? [])];
    const transport = options.transport ?? createGrpcTransport({ baseUrl: baseUrl(options.address), interceptors });
    this.raw = createClient(ReconstructionService, transport);
    this.timeoutMs = options.timeoutMs ?? 60_000;
  }

  private call(options?: CallOptions): { timeoutMs: number; signal?: AbortSignal } {
    return { timeoutMs: options?.timeoutMs ?? this.timeoutMs, signal: options?.signal };
  }

  /** Upload a photo (bytes or a file path) and store a job; resolves to the job (state QUEUED). */
  async submit(photo: Uint8Array | string, options: SubmitOptions = {}): Promise<Job> {
    const bytes = typeof photo === "string" ? await readFile(photo) : photo;
    try {
      const response = await this.raw.submitJob(uploadMessages(bytes, options), this.call(options));
      if (!response.job) throw new SyncHumanError(Code.Internal, "SubmitJob answered without a job");
      return response.job;
    } catch (error) {
      throw SyncHumanError.fromCall(error);
    }
  }

  /**
   * The job's events in order, until its `finished` event. A dropped stream (UNAVAILABLE, INTERNAL, UNKNOWN,
   * ABORTED, or the server closing before `finished`) is resumed with `after_sequence` = the last sequence seen,
   * so no event is lost or repeated. The first event of a job (sequence 1) has no `event` case.
   */
  async *watch(jobId: string, options: WatchOptions = {}): AsyncGenerator<WatchJobResponse> {
    let after = options.afterSequence ?? 0n;
    let failures = 0; // drops in a row, without an event in between
    const maxReconnects = options.maxReconnects ?? 5;
    const delayMs = options.reconnectDelayMs ?? 500;
    for (;;) {
      let failure = new SyncHumanError(Code.Unavailable, `the event stream of job ${jobId} closed before its end`);
      try {
        const stream = this.raw.watchJob(
          { jobId, afterSequence: after },
          { timeoutMs: options.timeoutMs, signal: options.signal },
        );
        for await (const event of stream) {
          failures = 0;
          after = event.sequence;
          yield event;
          if (event.event.case === "finished") return;
        }
      } catch (error) {
        failure = SyncHumanError.fromCall(error);
        if (!RESUMABLE.has(failure.code) || options.signal?.aborted) throw failure;
      }
      failures += 1;
      if (failures > maxReconnects) throw failure;
      await sleep(delayMs * 2 ** (failures - 1), undefined, { signal: options.signal });
    }
  }

  /** Watch until the job ends; resolves to the final job (whatever its state). */
  async wait(jobId: string, options: WatchOptions = {}): Promise<Job> {
    for await (const event of this.watch(jobId, options)) {
      if (event.event.case === "finished") return event.event.value;
    }
    throw new SyncHumanError(Code.Internal, `the events of job ${jobId} ended without the final job`);
  }

  /**
   * One stored file of a job (see `Job.artifacts`), reassembled and checked: chunk offsets, the announced size and
   * SHA-256. A mismatch is DATA_LOSS.
   */
  async download(jobId: string, name: string, options?: CallOptions): Promise<Buffer> {
    try {
      const stream = this.raw.getArtifact({ jobId, name }, this.call(options));
      let header: { sizeBytes: bigint; sha256: string } | undefined;
      const parts: Uint8Array[] = [];
      let received = 0;
      for await (const message of stream) {
        if (message.payload.case === "header") {
          header = message.payload.value;
        } else if (message.payload.case === "chunk") {
          if (header === undefined || message.payload.value.offset !== BigInt(received)) {
            throw new SyncHumanError(Code.DataLoss, `${name}: chunk out of order or before the header`);
          }
          parts.push(message.payload.value.data);
          received += message.payload.value.data.length;
        }
      }
      if (header === undefined) throw new SyncHumanError(Code.DataLoss, `${name}: the stream had no header`);
      const data = Buffer.concat(parts);
      if (BigInt(data.length) !== header.sizeBytes) {
        throw new SyncHumanError(Code.DataLoss, `${name}: got ${data.length} of ${header.sizeBytes} bytes`);
      }
      const sha256 = createHash("sha256").update(data).digest("hex");
      if (sha256 !== header.sha256.toLowerCase()) {
        throw new SyncHumanError(Code.DataLoss, `${name}: SHA-256 ${sha256} differs from the announced ${header.sha256}`);
      }
      return data;
    } catch (error) {
      throw SyncHumanError.fromCall(error);
    }
  }

  /** The job's current state. */
  async get(jobId: string, options?: CallOptions): Promise<Job> {
    try {
      const response = await this.raw.getJob({ jobId }, this.call(options));
      return response.job!;
    } catch (error) {
      throw SyncHumanError.fromCall(error);
    }
  }

  /**
   * The gateway's named output profiles ("standard" first), each with the options it sets and its effective
   * options; a job names one in `options.profile`.
   */
  async profiles(options?: CallOptions): Promise<Profile[]> {
    try {
      const response = await this.raw.listProfiles({}, this.call(options));
      return response.profiles;
    } catch (error) {
      throw SyncHumanError.fromCall(error);
    }
  }

  /** Cancel a queued or running job; resolves to the job (CANCELLED, or still RUNNING if the stage is slow). */
  async cancel(jobId: string, options?: CallOptions): Promise<Job> {
    try {
      const response = await this.raw.cancelJob({ jobId }, this.call(options));
      return response.job!;
    } catch (error) {
      throw SyncHumanError.fromCall(error);
    }
  }

  /** Delete a finished job and every stored file; resolves to the number of files removed. */
  async delete(jobId: string, options?: CallOptions): Promise<number> {
    try {
      const response = await this.raw.deleteJob({ jobId }, this.call(options));
      return response.deletedArtifacts;
    } catch (error) {
      throw SyncHumanError.fromCall(error);
    }
  }
}
