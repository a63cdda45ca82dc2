-- Creates a job: record, first event, index and outbox entries and idempotency key, atomically.
-- The outbox entry stays until a reconciler has seen the job in the queue, so a server that dies
-- between this script and its enqueue cannot strand the job.
-- KEYS: job, events, index, outbox[, idempotency]
-- ARGV: job_id, fingerprint, idempotency_ttl_s, history_len, index_member, trim_below, created_ms,
--       the record's fields as one JSON object of strings (one argument, not two per field: each
--       argument costs the caller an encoding step)
-- Returns {"created", payload} | {"exists", job_id} | {"conflict", job_id}
local job_id, fingerprint = ARGV[1], ARGV[2]
if #KEYS == 5 then
  local existing = redis.call("GET", KEYS[5])
  if existing then
    local sep = string.find(existing, " ", 1, true)
    local other_id, other_fp = string.sub(existing, 1, sep - 1), string.sub(existing, sep + 1)
    if other_fp == fingerprint then return {"exists", other_id} end
    return {"conflict", other_id}
  end
end

local record = cjson.decode(ARGV[8])
local fields = {}
local event = {ev = "STATE_CHANGED"}
for name, value in pairs(record) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
  if name ~= "file_ids" then event[name] = value end
end
redis.call("HSET", KEYS[1], unpack(fields))
local payload = cjson.encode(event)
redis.call("XADD", KEYS[2], "MAXLEN", "~", ARGV[4], "1-0", "e", payload)
redis.call("ZADD", KEYS[3], 0, ARGV[5])
-- Forget index entries older than any job can still be remembered.
redis.call("ZREMRANGEBYLEX", KEYS[3], "-", "(" .. ARGV[6])
redis.call("ZADD", KEYS[4], ARGV[7], job_id)
if #KEYS == 5 then
  redis.call("SET", KEYS[5], job_id .. " " .. fingerprint, "EX", ARGV[3])
end
return {"created", payload}
