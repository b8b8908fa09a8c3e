-- POST /v1/auth/authorize for one member, one organization, one permission, as
-- fast as possible (the platform's hot path).
--   wrk ... -s bench/authorize.lua http://HOST/v1/auth/authorize -- AUTHZ_FILE
-- AUTHZ_FILE (written by seed.py authz): access token, organization id, permission,
-- one per line. run.sh checks before and after the run that the answer is
-- "allowed"; wrk counts non-2xx.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local lib = dofile(dir .. "lib.lua")

setup = lib.setup

function init(args)
  local lines = lib.read_lines(args[1])
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"token":"' .. lines[1] .. '","organization_id":"' .. lines[2]
    .. '","permission":"' .. lines[3] .. '"}'
end

done = lib.report
