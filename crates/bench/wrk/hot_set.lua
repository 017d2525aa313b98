-- wrk script: GET /api/users/{id}/portfolio over a hot set of users.
--   LARDER_SERVICE_TOKEN=<the service's token> \
--     wrk -t2 -c64 -d30s --latency -s crates/bench/wrk/hot_set.lua http://127.0.0.1:8080
-- Reading any user's portfolio needs the service token (start the service with the same
-- LARDER_SERVICE_TOKEN, and LARDER_RATE_LIMIT_IP=0: wrk is one client IP).
-- HOT_USERS (default 1000) sets the size of the hot set.
local hot = tonumber(os.getenv("HOT_USERS") or "1000")
local token = os.getenv("LARDER_SERVICE_TOKEN")
local counter = 0

if token then
  wrk.headers["Authorization"] = "Bearer " .. token
end

request = function()
  counter = counter + 1
  -- A cheap deterministic spread over the hot set (no math.random cost).
  local id = (counter * 7919) % hot + 1
  return wrk.format("GET", "/api/users/" .. id .. "/portfolio")
end
