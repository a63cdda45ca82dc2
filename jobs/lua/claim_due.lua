-- Takes up to ARGV[2] members of a schedule whose time (score) is at most ARGV[1] and pushes each
-- one's time to ARGV[3]: a lease. The taker removes a member once its chore is done; if the taker
-- dies first, the member falls due again when the lease ends, so every chore is done at least once
-- while several processes share the schedule.
-- KEYS: schedule zset
-- Returns the members taken.
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call("ZADD", KEYS[1], ARGV[3], member)
end
return due
