-- Put one job on its queue, atomically: the one enqueue of every producer (daemon/worker/queue.py for
-- `python -m daemon enqueue`, scripts/node/enqueue.mjs for the web app). Copy it with the JSON Schema
-- when you write another producer. Run as one script, so two producers racing on one job id cannot
-- both push it, and no worker sees a half-written job.
--
-- KEYS[1] rq:job:<job id>      KEYS[2] rq:queue:<queue>     KEYS[3] rq:queues
-- KEYS[4] daemon:job:<job id>  (the daemon's ledger: who the id belongs to)
-- ARGV[1] job id   ARGV[2] owner id ('' for none)   ARGV[3] spec digest ('' when the producer has none)
-- ARGV[4] the ledger's TTL in seconds   ARGV[5..] field, value, ... of the rq job hash
-- Returns {'ok', ''}, {'duplicate_job', <rq status>} or {'job_id_in_use', 'owner' | 'spec'}.
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'started' or status == 'scheduled' or status == 'deferred' then
  return {'duplicate_job', status}
end
local owner = redis.call('HGET', KEYS[4], 'owner')
if owner and owner ~= ARGV[2] then
  return {'job_id_in_use', 'owner'}
end
local spec = redis.call('HGET', KEYS[4], 'spec')
if spec and ARGV[3] ~= '' and spec ~= ARGV[3] then
  return {'job_id_in_use', 'spec'}
end
-- A job id that ran before: nothing of its last run may leak into this one (rq's result, exc_info,
-- retries_left, worker_name; its place in the ended-job registries of the queue it ran on).
local origin = redis.call('HGET', KEYS[1], 'origin')
if origin then
  for _, registry in ipairs({'finished', 'failed', 'canceled'}) do
    redis.call('ZREM', 'rq:' .. registry .. ':' .. origin, ARGV[1])
  end
end
redis.call('DEL', KEYS[1], 'rq:results:' .. ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('HSET', KEYS[4], 'owner', ARGV[2])
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[4]))
redis.call('SADD', KEYS[3], KEYS[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
return {'ok', ''}
