-- wrk script: rotate the uid header through a fixed, deterministic cycle.
--
-- The cycle is uid 1..250 in order, with a request without uid after every
-- 10th value and one with "uid: abc" after every 25th: 285 requests, of which
-- 100 go to s1, 100 to s2, 50 to s3 and 35 are round robin. Each thread starts
-- at its own offset so the threads do not send in lockstep.
--
-- Every thread counts what it sent per expected destination; done() prints the
-- totals on one line ("uid-mix: s1=... s2=... s3=... rr=...") so the runner can
-- compare them with the hits each site really received.

local cycle = {}   -- { uid or false, expected destination }

local function expected(uid)
   if uid <= 100 then return "s1" end
   if uid <= 200 then return "s2" end
   return "s3"
end

for uid = 1, 250 do
   cycle[#cycle + 1] = { tostring(uid), expected(uid) }
   if uid % 10 == 0 then cycle[#cycle + 1] = { false, "rr" } end
   if uid % 25 == 0 then cycle[#cycle + 1] = { "abc", "rr" } end
end

local threads = {}
local next_id = 0

function setup(thread)
   next_id = next_id + 1
   thread:set("id", next_id)
   threads[#threads + 1] = thread
end

local requests, destinations, position

function init(args)
   requests, destinations = {}, {}
   for i, entry in ipairs(cycle) do
      local headers = {}
      if entry[1] then headers["uid"] = entry[1] end
      requests[i] = wrk.format("GET", "/", headers)
      destinations[i] = entry[2]
   end
   position = ((id - 1) * 97) % #cycle   -- id is set by setup()
   counts = { s1 = 0, s2 = 0, s3 = 0, rr = 0 }
end

function request()
   position = position % #requests + 1
   local destination = destinations[position]
   counts[destination] = counts[destination] + 1
   return requests[position]
end

function done(summary, latency, requests)
   local total = { s1 = 0, s2 = 0, s3 = 0, rr = 0 }
   for _, thread in ipairs(threads) do
      local c = thread:get("counts")
      for k, v in pairs(c) do total[k] = total[k] + v end
   end
   io.write(string.format("uid-mix: s1=%d s2=%d s3=%d rr=%d\n",
                          total.s1, total.s2, total.s3, total.rr))
end
