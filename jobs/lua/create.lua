-- Creates a job: record, the tenant's index and active set (and the tenant in the set of tenants), the
-- live-jobs entry, the relay's entry and the idempotency key, atomically, within the tenant's quota.
-- A worker's relay pops the job from the fresh list and enqueues it (worker/relay.py). The live-jobs
-- entry stays until the job ends, so the reconciler can put back in the queue a job that a relay
-- or a worker lost on its way (worker/housekeeping.py).
-- The history starts with the job's first change: a watch from the start opens with a snapshot,
-- which says what the created event would (the history of a job yet to be claimed would cost a
-- queued job a quarter of its memory and be read by nobody).
-- KEYS: job, tenant index, tenant active set, live jobs, fresh, intake pause, tenants
--       [, tenant idempotency key]
-- ARGV: job_id, fingerprint (with a request id), idempotency_ttl_s, index_member, trim_below, created_ms,
--       the record's fields as one JSON object of strings (one argument, not two per field: each
--       argument costs the caller an encoding step), max_active (0 = no limit), job key prefix
-- Returns {"created"} | {"exists", job_id} | {"conflict", job_id} | {"paused", pause} | {"quota", active}
local job_id, fingerprint = ARGV[1], ARGV[2]
-- The job id is new for each call, so a record under it is this very call's: a call sent again
-- because its reply was lost (a client repeats a command when the connection drops, though it
-- may have run) answers as it did the first time.
if redis.call("EXISTS", KEYS[1]) == 1 then return {"created"} end
local with_request_id = #KEYS == 8
if with_request_id then
  local existing = redis.call("GET", KEYS[8])
  if existing then
    local sep = string.find(existing, IDEMPOTENCY_SEPARATOR, 1, true)
    local other_id, other_fp = string.sub(existing, 1, sep - 1), string.sub(existing, sep + 1)
    if other_fp ~= fingerprint then return {"conflict", other_id} end
    -- A repeated request for a job still queued hands it to the relay again: a no-op when the
    -- queue has it (bullmq adds a job id once), the repair when it was lost on its way.
    local other = redis.call("HMGET", ARGV[9] .. other_id, F.STATE, F.PRIORITY, F.RETRIES)
    if other[1] == STATE.QUEUED then
      local run = other[3] and (FRESH_SEPARATOR .. other[3]) or ""  -- after a retry: its run's entry
      redis.call("RPUSH", KEYS[5], other_id .. FRESH_SEPARATOR .. other[2] .. run)
    end
    return {"exists", other_id}
  end
end

-- Paused intake refuses new jobs only: a repeated request still finds its job, above.
local pause = redis.call("GET", KEYS[6])
if pause then return {"paused", pause} end

local limit = tonumber(ARGV[8])
if limit > 0 then
  local active = active_jobs(KEYS[3], limit, ARGV[9])
  if active >= limit then return {"quota", tostring(active)} end
end

local record = cjson.decode(ARGV[7])
local fields = {}
for name, value in pairs(record) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call("HSET", KEYS[1], unpack(fields))
redis.call("ZADD", KEYS[2], 0, ARGV[4])
-- Forget index entries older than any job can still be remembered.
redis.call("ZREMRANGEBYLEX", KEYS[2], "-", "(" .. ARGV[5])
redis.call("SADD", KEYS[7], record[F.TENANT_KEY])
redis.call("SADD", KEYS[3], job_id)
redis.call("ZADD", KEYS[4], ARGV[6], job_id)
redis.call("RPUSH", KEYS[5], job_id .. FRESH_SEPARATOR .. record[F.PRIORITY])
if with_request_id then
  redis.call("SET", KEYS[8], job_id .. IDEMPOTENCY_SEPARATOR .. fingerprint, "EX", ARGV[3])
end
return {"created"}
