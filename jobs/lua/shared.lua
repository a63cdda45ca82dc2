-- Functions more than one script uses (after the generated prelude, before each script).

-- Appends the job as it now stands, as an event of `event_type`, to its history (the last
-- `history_len` kept) and publishes it on `channel`; returns the event's JSON.
local function record_event(job_key, events_key, job_id, event_type, history_len, channel)
  local all = redis.call("HGETALL", job_key)
  local event = {[F.EVENT] = event_type}
  for i = 1, #all, 2 do
    local k = all[i]
    if not PRIVATE[k] then event[k] = all[i + 1] end
  end
  local payload = cjson.encode(event)
  redis.call("RPUSH", events_key, payload)
  redis.call("LTRIM", events_key, -tonumber(history_len), -1)
  redis.call("PUBLISH", channel, job_id .. CHANNEL_SEPARATOR .. payload)
  return payload
end

-- How many jobs a tenant has queued or running, after dropping from its active set the members
-- whose record is gone or over another way (forgotten, expired), so that a stray member cannot eat
-- the quota for good. Members normally leave when their job ends (transition.lua). It reads job
-- keys it was not given: fine on one Redis, as bullmq's own scripts do.
local function active_jobs(active_key, limit, job_prefix)
  local active = redis.call("SCARD", active_key)
  if active < limit then return active end
  for _, member in ipairs(redis.call("SMEMBERS", active_key)) do
    local state = redis.call("HGET", job_prefix .. member, F.STATE)
    if not state or TERMINAL[state] then redis.call("SREM", active_key, member) end
  end
  return redis.call("SCARD", active_key)
end
