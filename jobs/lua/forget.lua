-- Forgets a job (google.longrunning DeleteOperation): record, history, tombstone, the tenant's index,
-- active-set and idempotency entries, the live-jobs and dead-letter entries; its artifact is scheduled
-- for deletion now.
-- A run still working on it finds the record gone at its next write and stops.
-- The tenant's keys are named by the record (tenant_key), as in transition.lua.
-- KEYS: job, events, tombstone, live jobs, sweep, call (kept 2 minutes once the call forgot something),
--       dead letters
-- ARGV: job_id, now_ms, tenant ("" = any)
-- Returns 1 if there was something to forget, 0 if not (or not the tenant's). A call sent again
-- because its reply was lost (a client repeats a command when the connection drops) finds its call
-- key and answers 1 again.
if redis.call("EXISTS", KEYS[6]) == 1 then return 1 end
local job = redis.call("HMGET", KEYS[1], F.CREATED_MS, F.TENANT, F.TENANT_KEY, F.REQUEST_ID, F.FINISHED_MS)
local created, tenant, tenant_key, request_id = job[1], job[2], job[3], job[4]
if not created then
  -- Only a tombstone may be left: forget it too, if it is the caller's.
  local owner = redis.call("GET", KEYS[3])
  if owner and (ARGV[3] == "" or owner == ARGV[3]) then redis.call("DEL", KEYS[3]) redis.call("SET", KEYS[6], 1, "EX", 120) return 1 end
  return 0
end
if ARGV[3] ~= "" and tenant ~= ARGV[3] then return 0 end
redis.call("DEL", KEYS[1], KEYS[2], KEYS[3])
redis.call("ZREM", tenant_key .. INDEX_SUFFIX, string.format(INDEX_MEMBER_FORMAT, tonumber(created), ARGV[1]))
redis.call("SREM", tenant_key .. ACTIVE_SUFFIX, ARGV[1])
redis.call("ZREM", KEYS[4], ARGV[1])
if job[5] then redis.call("ZREM", KEYS[7], string.format(INDEX_MEMBER_FORMAT, tonumber(job[5]), ARGV[1])) end
if request_id and request_id ~= "" then
  local idem_key = tenant_key .. IDEMPOTENCY_SUFFIX .. request_id
  local idem = redis.call("GET", idem_key)
  if idem and string.sub(idem, 1, #ARGV[1] + 1) == ARGV[1] .. IDEMPOTENCY_SEPARATOR then redis.call("DEL", idem_key) end
end
redis.call("ZADD", KEYS[5], ARGV[2], artifact_key(tenant_key, ARGV[1]))
redis.call("SET", KEYS[6], 1, "EX", 120)
return 1
