-- Records one attempt to deliver a job's ending to its webhook (worker/webhooks.py): the attempt in
-- the record (count, the latest few, the next attempt's time or the final state) and the job's place
-- in the schedule of deliveries, atomically.
-- An attempt at an ending that is no longer the job's to deliver changes nothing: the job was
-- retried (and perhaps ended again: the schedule's member is then the new ending's), or another
-- worker, whose lease on a slow attempt ran out, recorded the ending first.
-- KEYS: job, webhook deliveries
-- ARGV: job_id, hook_seq (the ending's), attempt (JSON [time_ms, http_status, error]), new state,
--       next attempt's time in ms ("" when none), how many attempts the record keeps
-- Returns "ok" | "stale"
local current = redis.call("HMGET", KEYS[1], F.HOOK_SEQ, F.HOOK_STATE, F.HOOK_LOG)
if current[1] ~= ARGV[2] or current[2] ~= WEBHOOK.SENDING then return "stale" end
local attempts = cjson.decode(current[3] or "[]")
attempts[#attempts + 1] = cjson.decode(ARGV[3])
while #attempts > tonumber(ARGV[6]) do table.remove(attempts, 1) end
redis.call("HSET", KEYS[1], F.HOOK_LOG, cjson.encode(attempts), F.HOOK_STATE, ARGV[4])
redis.call("HINCRBY", KEYS[1], F.HOOK_ATTEMPTS, 1)
if ARGV[5] ~= "" then
  redis.call("HSET", KEYS[1], F.HOOK_NEXT_MS, ARGV[5])
  redis.call("ZADD", KEYS[2], ARGV[5], ARGV[1])
else
  redis.call("HDEL", KEYS[1], F.HOOK_NEXT_MS)
  redis.call("ZREM", KEYS[2], ARGV[1])
end
return "ok"
