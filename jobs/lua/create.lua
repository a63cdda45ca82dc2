-- Creates a job: record, first event, the tenant's index and active set, the live-jobs entry, the
-- relay's entry and the idempotency key, atomically, within the tenant's active-jobs quota.
-- A worker's relay pops the job from the fresh list and enqueues it (worker/relay.py). The live-jobs
-- entry stays until the job ends, so the reconciler can put back in the queue a job that a relay
-- or a worker lost on its way (worker/housekeeping.py).
-- KEYS: job, events, tenant index, tenant active set, live jobs, fresh[, tenant idempotency key]
-- ARGV: job_id, fingerprint (with a request id), idempotency_ttl_s, history_len, index_member, trim_below, created_ms,
--       the record's fields as one JSON object of strings (one argument, not two per field: each
--       argument costs the caller an encoding step), max_active (0 = no limit), job key prefix
-- Returns {"created"} | {"exists", job_id} | {"conflict", job_id} | {"quota", active}
local job_id, fingerprint = ARGV[1], ARGV[2]
-- The job id is new for each call, so a record under it is this very call's: a call sent again
-- because its reply was lost (a client repeats a command when the connection drops, though it
-- may have run) answers as it did the first time.
if redis.call("EXISTS", KEYS[1]) == 1 then return {"created"} end
local with_request_id = #KEYS == 7
if with_request_id then
  local existing = redis.call("GET", KEYS[7])
  if existing then
    local sep = string.find(existing, IDEMPOTENCY_SEPARATOR, 1, true)
    local other_id, other_fp = string.sub(existing, 1, sep - 1), string.sub(existing, sep + 1)
    if other_fp ~= fingerprint then return {"conflict", other_id} end
    -- A repeated request for a job still queued hands it to the relay again: a no-op when the
    -- queue has it (bullmq adds a job id once), the repair when it was lost on its way.
    local other = redis.call("HMGET", ARGV[10] .. other_id, F.STATE, F.PRIORITY)
    if other[1] == STATE.QUEUED then redis.call("RPUSH", KEYS[6], other_id .. FRESH_SEPARATOR .. other[2]) end
    return {"exists", other_id}
  end
end

local limit = tonumber(ARGV[9])
if limit > 0 and redis.call("SCARD", KEYS[4]) >= limit then
  -- Members normally leave when their job ends (transition.lua); this drops any whose record is
  -- gone or over another way (forgotten, expired), so a stray member cannot eat the quota for good.
  -- It reads job keys it was not given: fine on one Redis, as bullmq's own scripts do.
  for _, member in ipairs(redis.call("SMEMBERS", KEYS[4])) do
    local state = redis.call("HGET", ARGV[10] .. member, F.STATE)
    if not state or TERMINAL[state] then redis.call("SREM", KEYS[4], member) end
  end
  local active = redis.call("SCARD", KEYS[4])
  if active >= limit then return {"quota", tostring(active)} end
end

local record = cjson.decode(ARGV[8])
local fields = {}
local event = {[F.EVENT] = EVENT_TYPE.STATE_CHANGED}
for name, value in pairs(record) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
  if not PRIVATE[name] then event[name] = value end
end
redis.call("HSET", KEYS[1], unpack(fields))
redis.call("RPUSH", KEYS[2], cjson.encode(event))
redis.call("ZADD", KEYS[3], 0, ARGV[5])
-- Forget index entries older than any job can still be remembered.
redis.call("ZREMRANGEBYLEX", KEYS[3], "-", "(" .. ARGV[6])
redis.call("SADD", KEYS[4], job_id)
redis.call("ZADD", KEYS[5], ARGV[7], job_id)
redis.call("RPUSH", KEYS[6], job_id .. FRESH_SEPARATOR .. record[F.PRIORITY])
if with_request_id then
  redis.call("SET", KEYS[7], job_id .. IDEMPOTENCY_SEPARATOR .. fingerprint, "EX", ARGV[3])
end
return {"created"}
