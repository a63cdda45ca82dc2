-- Creates a job: record, first event, index entry and idempotency key, atomically.
-- KEYS: job, events, index[, idempotency]
-- ARGV: job_id, fingerprint, idempotency_ttl_s, history_len, index_member, trim_below, field, value, ...
-- Returns {"created", payload} | {"exists", job_id} | {"conflict", job_id}
local job_id, fingerprint = ARGV[1], ARGV[2]
if #KEYS == 4 then
  local existing = redis.call("GET", KEYS[4])
  if existing then
    local sep = string.find(existing, " ", 1, true)
    local other_id, other_fp = string.sub(existing, 1, sep - 1), string.sub(existing, sep + 1)
    if other_fp == fingerprint then return {"exists", other_id} end
    return {"conflict", other_id}
  end
end

local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call("HSET", KEYS[1], unpack(fields))

local event = {ev = "STATE_CHANGED"}
for i = 1, #fields, 2 do
  if fields[i] ~= "file_ids" then event[fields[i]] = fields[i + 1] end
end
local payload = cjson.encode(event)
redis.call("XADD", KEYS[2], "MAXLEN", "~", ARGV[4], "1-0", "e", payload)
redis.call("ZADD", KEYS[3], 0, ARGV[5])
-- Forget index entries older than any job can still be remembered.
redis.call("ZREMRANGEBYLEX", KEYS[3], "-", "(" .. ARGV[6])
if #KEYS == 4 then
  redis.call("SET", KEYS[4], job_id .. " " .. fingerprint, "EX", ARGV[3])
end
return {"created", payload}
