-- Forgets a job (google.longrunning DeleteOperation): record, history, tombstone, index and outbox
-- entries, its idempotency key if that still names it; its artifact is scheduled for deletion now.
-- A run still working on it finds the record gone at its next write and stops.
-- KEYS: job, events, tombstone, index, outbox, sweep[, idempotency]
-- ARGV: job_id, artifact_key, now_ms
-- Returns 1 if there was something to forget, 0 if not.
local created = redis.call("HGET", KEYS[1], "created_ms")
local existed = redis.call("DEL", KEYS[1], KEYS[2], KEYS[3])
if created then
  redis.call("ZREM", KEYS[4], string.format("%013d:%s", tonumber(created), ARGV[1]))
end
redis.call("ZREM", KEYS[5], ARGV[1])
if #KEYS == 7 then
  local idem = redis.call("GET", KEYS[7])
  if idem and string.sub(idem, 1, #ARGV[1] + 1) == ARGV[1] .. " " then redis.call("DEL", KEYS[7]) end
end
if existed == 0 then return 0 end
redis.call("ZADD", KEYS[6], ARGV[3], ARGV[2])
return 1
