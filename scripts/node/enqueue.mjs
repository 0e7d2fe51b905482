#!/usr/bin/env node
// Enqueue a job for the GPU daemon from Node, the way the Next.js API does it.
//
// A Node process cannot call rq's Python `enqueue`, so it writes the same Redis keys rq writes, in one
// MULTI/EXEC (see DESIGN §1 and README "Enqueue from Node"):
//   SADD rq:queues rq:queue:<queue>
//   HSET rq:job:<job id> status queued, created_at, enqueued_at, data, origin, description, timeout, …
//   RPUSH rq:queue:<queue> <job id>
// `data` is rq's JSON serializer format: ["daemon.entry.run_job", null, [spec], {}]. The worker refuses
// any other callable. The spec is validated first against schema/job-spec.v1.json, so a bad request is
// refused in the web app, not on a GPU.
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
  const jobKey = `rq:job:${spec.job_id}`;
  const status = await redis.hget(jobKey, "status");
  if (["queued", "started", "scheduled", "deferred"].includes(status)) {
    throw new Error(`job ${spec.job_id} is already ${status}`);
  }
  const now = rqTime();
  const results = await redis
    .multi()
    .sadd("rq:queues", `rq:queue:${queue}`)
    .hset(jobKey, {
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
    })
    .rpush(`rq:queue:${queue}`, spec.job_id)
    .exec();
  const failed = results.find(([err]) => err);
  if (failed) throw failed[0];
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
