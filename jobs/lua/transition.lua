-- Applies one change to a live job, appends it to the job's history and publishes it, atomically.
-- A finished job never changes here again (only retry.lua reopens one, as a new run), and a run
-- whose token is stale (the job was taken over by another worker) cannot write: that is what makes
-- the result exactly-once.
-- A job that ends schedules the deletion of its artifact (whether or not one was written: a
-- superseded run may still finish an upload) for when the job expires.
-- A job that ends also leaves its tenant's active set (the quota), named by the record's tenant_key,
-- and the live jobs the reconciler checks.
-- A job with a webhook that ends is due for its delivery (worker/webhooks.py) from now on.
-- KEYS: job, events, tombstone, sweep, live jobs, dead letters, this minute's stats (jobs/stats.py),
--       webhook deliveries
-- ARGV: now_ms, history_len, channel, event_type, expect_token ("" = any), claim_token ("" = none),
--       job_ttl_s, tombstone_ttl_s, job_id, expect_tenant ("" = any), call, history_ttl_s,
--       expect_retries ("" = any: the claim's run), field, value, ...
-- Returns {"ok", seq, payload[, file_ids, traceparent, hook_url on a claim]} | {"missing"} | {"finished", state} | {"fenced"}
-- Another tenant's job is "missing": callers cannot tell it from one that does not exist.
local current = redis.call("HMGET", KEYS[1], F.STATE, F.TENANT, F.CALL, F.SEQ, F.RETRIES)
local state = current[1]
if not state then return {"missing"} end
if ARGV[10] ~= "" and current[2] ~= ARGV[10] then return {"missing"} end
local expect_token, claim_token, call = ARGV[5], ARGV[6], ARGV[11]

local function answer(seq, payload)
  if claim_token ~= "" then
    -- The claiming worker needs the file ids next, the creating call's trace context, and whether
    -- the job's ending goes to a webhook: saves it a round trip.
    local private = redis.call("HMGET", KEYS[1], F.FILE_IDS, F.TRACEPARENT, F.HOOK_URL)
    return {"ok", seq, payload, private[1], private[2] or "", private[3] or ""}
  end
  return {"ok", seq, payload}
end

if current[3] == call then
  -- This call ran already: a client sends a command again when the connection drops before the
  -- reply, though it may have run. It answers as it did, from the event it wrote, and changes nothing.
  -- That event is the history's last.
  return answer(tonumber(current[4]), redis.call("LINDEX", KEYS[2], -1) or "")
end
if TERMINAL[state] then return {"finished", state} end
-- A claim from the queue entry of a run before the job's last retry (jobs/queue.py): that run is over.
if ARGV[13] ~= "" and (current[5] or "0") ~= ARGV[13] then return {"finished", state} end
if expect_token ~= "" and redis.call("HGET", KEYS[1], F.TOKEN) ~= expect_token then
  return {"fenced"}
end

local fields = {F.UPDATED_MS, ARGV[1], F.CALL, call}
local new_state = nil
for i = 14, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if ARGV[i] == F.STATE then new_state = ARGV[i + 1] end
end
if claim_token ~= "" then
  -- A worker takes the job: a new attempt, fenced by its own token; the first start time stays.
  redis.call("HINCRBY", KEYS[1], F.ATTEMPTS, 1)
  redis.call("HSETNX", KEYS[1], F.STARTED_MS, ARGV[1])
  fields[#fields + 1] = F.TOKEN
  fields[#fields + 1] = claim_token
end
local seq = redis.call("HINCRBY", KEYS[1], F.SEQ, 1)
redis.call("HSET", KEYS[1], unpack(fields))

local payload = record_event(KEYS[1], KEYS[2], ARGV[9], ARGV[4], ARGV[2], ARGV[3])
if new_state and TERMINAL[new_state] then
  -- No run writes to a finished job again, so its fencing token is dead weight for a day.
  redis.call("HDEL", KEYS[1], F.TOKEN)
  redis.call("EXPIRE", KEYS[1], ARGV[7])
  -- The history goes sooner: a watch resumed after it gets the final state as a snapshot.
  redis.call("EXPIRE", KEYS[2], ARGV[12])
  local owner = redis.call("HMGET", KEYS[1], F.TENANT, F.TENANT_KEY)
  redis.call("SET", KEYS[3], owner[1], "EX", ARGV[8])
  redis.call("ZADD", KEYS[4], tonumber(ARGV[1]) + tonumber(ARGV[7]) * 1000, artifact_key(owner[2], ARGV[9]))
  redis.call("SREM", owner[2] .. ACTIVE_SUFFIX, ARGV[9])
  redis.call("ZREM", KEYS[5], ARGV[9])
  redis.call("HINCRBY", KEYS[7], new_state, 1)
  if new_state == STATE.FAILED then
    -- A failure is for good (transient errors are retried before it): a dead letter for operators.
    local failed_ms = tonumber(redis.call("HGET", KEYS[1], F.FINISHED_MS) or ARGV[1])
    redis.call("ZADD", KEYS[6], 0, string.format(INDEX_MEMBER_FORMAT, failed_ms, ARGV[9]))
    -- (A failure without a code counts as INTERNAL, as the failure metric counts it: jobs/store.py.)
    local failure = cjson.decode(redis.call("HGET", KEYS[1], F.ERROR) or "{}")
    redis.call("HINCRBY", KEYS[7], FAILED_PREFIX .. (failure.code or "INTERNAL"), 1)
  end
  redis.call("EXPIRE", KEYS[7], STATS_KEEP_S)
  if redis.call("HEXISTS", KEYS[1], F.HOOK_URL) == 1 then
    redis.call("HDEL", KEYS[1], F.HOOK_LOG)
    redis.call("HSET", KEYS[1], F.HOOK_STATE, WEBHOOK.SENDING, F.HOOK_SEQ, seq, F.HOOK_ATTEMPTS, 0,
      F.HOOK_NEXT_MS, ARGV[1])
    redis.call("ZADD", KEYS[8], ARGV[1], ARGV[9])
  end
end
return answer(seq, payload)
