-- GET /health, as fast as possible (an orchestrator's or a load balancer's probe).
--   wrk ... -s bench/health.lua http://HOST/health

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local lib = dofile(dir .. "lib.lua")

setup = lib.setup
done = lib.report
