#!/usr/bin/env node
// Enqueue a job for the GPU daemon from Node, the way the Next.js API does it.
//
// A Node process cannot call rq's Python `enqueue`, so it writes the same Redis keys rq writes, through
// the daemon's own enqueue script (daemon/worker/enqueue.lua; see DESIGN §1 and README "Enqueue from
// Node"): one atomic script refuses an id that is queued or running (`duplicate_job`) or that belongs to
// another owner (`job_id_in_use`), clears what an earlier run of the id left in rq, writes the job hash
//   rq:job:<job id>: status queued, created_at, enqueued_at, data, origin, description, timeout, …
// and pushes the id on rq:queue:<queue>. Two requests racing on one id cannot both push it.
// `data` is rq's JSON serializer format: ["daemon.entry.run_job", null, [spec], {}]. The worker refuses
// any other callable. The spec is validated first against schema/job-spec.v1.json, so a bad request is
// refused in the web app, not on a GPU; which S3 keys a job may name is the daemon's to check
// (S3_INPUT_PREFIXES), and it refuses the job there.
//
// Usage: REDIS_URL=redis://127.0.0.1:6379/0 node enqueue.mjs spec.json   (or - for stdin)
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import Ajv2020 from "ajv/dist/2020.js";
import Redis from "ioredis";

const ENTRY_POINT = "daemon.entry.run_job";
const QUEUES = ["high", "default", "low"];
// Per-kind time limits, in seconds; keep in step with the handlers' `timeout_s` (README lists them).
const TIMEOUTS = { inspect: 1800, splat: 6 * 3600, splat_video: 6 * 3600 };
const RESULT_TTL = 7 * 24 * 3600;
const FAILURE_TTL = 30 * 24 * 3600;

const here = dirname(fileURLToPath(import.meta.url));
const schemaPath = process.env.JOB_SPEC_SCHEMA ?? join(here, "..", "..", "schema", "job-spec.v1.json");
const scriptPath = process.env.JOB_ENQUEUE_SCRIPT ?? join(here, "..", "..", "daemon", "worker", "enqueue.lua");
const LEDGER_TTL = 30 * 24 * 3600; // daemon/adapters/ledger.py STATE_TTL_S

export class EnqueueRefused extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export function validateSpec(spec) {
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  const validate = ajv.compile(JSON.parse(readFileSync(schemaPath, "utf8")));
  if (!validate(spec)) {
    const details = validate.errors.map((e) => `${e.instancePath || "/"} ${e.message}`).join("; ");
    throw new Error(`invalid job spec: ${details}`);
  }
}

// rq writes timestamps as UTC ISO 8601 with microseconds and a Z.
const rqTime = (date = new Date()) => date.toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");

export async function enqueueJob(redis, spec) {
  validateSpec(spec);
  const queue = spec.priority ?? "default";
  if (!QUEUES.includes(queue)) throw new Error(`unknown priority ${queue}`);
  const now = rqTime();
  const fields = {
    status: "queued",
    created_at: now,
    enqueued_at: now,
    data: JSON.stringify([ENTRY_POINT, null, [spec], {}]),
    origin: queue,
    description: `${spec.kind} ${spec.job_id}`,
    timeout: String(TIMEOUTS[spec.kind] ?? 1800),
    result_ttl: String(RESULT_TTL),
    failure_ttl: String(FAILURE_TTL),
    started_at: "",
    ended_at: "",
    last_heartbeat: "",
    worker_name: "",
  };
  const keys = [`rq:job:${spec.job_id}`, `rq:queue:${queue}`, "rq:queues", `daemon:job:${spec.job_id}`];
  const owner = (spec.owner_id ?? "").toLowerCase();
  // The spec digest is the daemon's to compute (''): the worker refuses another spec under a used id.
  const args = [spec.job_id, owner, "", String(LEDGER_TTL), ...Object.entries(fields).flat()];
  const [outcome, detail] = await redis.eval(readFileSync(scriptPath, "utf8"), keys.length, ...keys, ...args);
  if (outcome === "duplicate_job") {
    throw new EnqueueRefused(outcome, `job ${spec.job_id} is already ${detail}`);
  }
  if (outcome === "job_id_in_use") {
    throw new EnqueueRefused(outcome, `job ${spec.job_id} belongs to another ${detail}: a new job needs a new id`);
  }
  return { job_id: spec.job_id, queue };
}

async function main() {
  const source = process.argv[2] ?? "-";
  const text = readFileSync(source === "-" ? 0 : source, "utf8");
  const redis = new Redis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379/0", { maxRetriesPerRequest: 3 });
  try {
    console.log(JSON.stringify(await enqueueJob(redis, JSON.parse(text))));
  } finally {
    redis.disconnect();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((err) => {
    console.error(err.message);
    process.exit(1);
  });
}
