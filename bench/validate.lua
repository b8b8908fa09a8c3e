-- POST /v1/auth/validate with one valid access token, as fast as possible.
--   wrk ... -s bench/validate.lua http://HOST/v1/auth/validate -- ACCESS_TOKEN_FILE
-- The request never changes, so wrk builds it once per thread (no request()).
-- There is no response() either (it would slow wrk down): run.sh checks before and
-- after the run that the token still validates as active, and wrk counts non-2xx.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local lib = dofile(dir .. "lib.lua")

setup = lib.setup

function init(args)
  local token = lib.read_lines(args[1])[1]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"token":"' .. token .. '"}'
end

done = lib.report
