-- Puts a FAILED or CANCELLED job back in the queue under its own id (RetryDownload), atomically:
-- its attempts start afresh, what the last run left (result, error, times, worker) is cleared, and
-- its history goes on with the retry as an event. It becomes a live job again, as create.lua makes
-- one: kept until it ends (no expiry, no tombstone, its artifact no longer due for deletion),
-- counted in its tenant's active-jobs quota, watched by the reconciler and handed to a relay.
-- A delivery of the last ending to the job's webhook still under way is dropped: that ending is undone,
-- and the next one is delivered.
-- KEYS: job, events, tombstone, sweep, live jobs, fresh, intake pause, dead letters, webhook deliveries
-- ARGV: now_ms, history_len, channel, job_id, tenant, call, retry_id ("" = none),
--       max_active (0 = no limit), job key prefix, message
-- Returns {"ok", seq, payload, file_ids, webhook fields (JSON)} | {"missing"} | {"repeated"} | {"state", state} | {"paused", pause}
--         | {"quota", active}
-- Another tenant's job is "missing", as in transition.lua.
local job = redis.call("HMGET", KEYS[1], F.STATE, F.TENANT, F.CALL, F.RETRY_ID, F.TENANT_KEY, F.PRIORITY, F.FINISHED_MS,
  F.HOOK_URL)
local state, tenant_key = job[1], job[5]
if not state or job[2] ~= ARGV[5] then return {"missing"} end
-- This retry ran already: a command sent again after a lost reply (the same call), or the client's
-- own repeat (the same request id). It changes nothing; the caller reads the job as it is now.
if job[3] == ARGV[6] or (ARGV[7] ~= "" and job[4] == ARGV[7]) then return {"repeated"} end
if state ~= STATE.FAILED and state ~= STATE.CANCELLED then return {"state", state} end
local pause = redis.call("GET", KEYS[7])
if pause then return {"paused", pause} end

local limit = tonumber(ARGV[8])
if limit > 0 then
  local active = active_jobs(tenant_key .. ACTIVE_SUFFIX, limit, ARGV[9])
  if active >= limit then return {"quota", tostring(active)} end
end

redis.call("HDEL", KEYS[1], F.RESULT, F.ERROR, F.STARTED_MS, F.FINISHED_MS, F.EXPIRE_MS, F.ETA_MS,
  F.NEXT_ATTEMPT_MS, F.WORKER, F.RETRY_ID)
redis.call("HSET", KEYS[1], F.STATE, STATE.QUEUED, F.PHASE, PHASE.QUEUED, F.PERCENT, "0", F.FILES_DONE, "0",
  F.BYTES_DONE, "0", F.BYTES_TOTAL, "0", F.ATTEMPTS, "0", F.MESSAGE, ARGV[10], F.UPDATED_MS, ARGV[1],
  F.CALL, ARGV[6])
if ARGV[7] ~= "" then redis.call("HSET", KEYS[1], F.RETRY_ID, ARGV[7]) end
local retries = redis.call("HINCRBY", KEYS[1], F.RETRIES, 1)
local seq = redis.call("HINCRBY", KEYS[1], F.SEQ, 1)
redis.call("PERSIST", KEYS[1])
redis.call("PERSIST", KEYS[2])
redis.call("DEL", KEYS[3])
redis.call("ZREM", KEYS[4], artifact_key(tenant_key, ARGV[4]))
if job[7] then redis.call("ZREM", KEYS[8], string.format(INDEX_MEMBER_FORMAT, tonumber(job[7]), ARGV[4])) end
if job[8] then
  redis.call("HDEL", KEYS[1], F.HOOK_SEQ, F.HOOK_ATTEMPTS, F.HOOK_LOG, F.HOOK_NEXT_MS)
  redis.call("HSET", KEYS[1], F.HOOK_STATE, WEBHOOK.WAITING)
  redis.call("ZREM", KEYS[9], ARGV[4])
end
redis.call("SADD", tenant_key .. ACTIVE_SUFFIX, ARGV[4])
redis.call("ZADD", KEYS[5], ARGV[1], ARGV[4])
-- The new run's queue entry is its own (jobs/queue.py), whatever became of the last run's.
redis.call("RPUSH", KEYS[6], ARGV[4] .. FRESH_SEPARATOR .. job[6] .. FRESH_SEPARATOR .. retries)
local payload = record_event(KEYS[1], KEYS[2], ARGV[4], EVENT_TYPE.STATE_CHANGED, ARGV[2], ARGV[3])
-- The answer is the whole job, as GetStatus gives it: the event leaves out the file ids and the webhook.
local hook = job[8] and cjson.encode({[F.HOOK_URL] = job[8], [F.HOOK_STATE] = WEBHOOK.WAITING}) or "{}"
return {"ok", seq, payload, redis.call("HGET", KEYS[1], F.FILE_IDS), hook}
