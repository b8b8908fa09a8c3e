-- POST /v1/auth/validate with many live access tokens in turn, as a gateway sees
-- them: each token used many times, thousands of them alive.
--   wrk ... -s bench/validate_mix.lua http://HOST/v1/auth/validate -- TOKENS_FILE
-- Thread i starts at line i and steps through every line; each request is built
-- once in init(), so request() costs wrk next to nothing.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local lib = dofile(dir .. "lib.lua")

setup = lib.setup

local requests = {}
local next_one = 1

function init(args)
  local headers = { ["Content-Type"] = "application/json" }
  for _, token in ipairs(lib.read_lines(args[1])) do
    requests[#requests + 1] =
      wrk.format("POST", nil, headers, '{"token":"' .. token .. '"}')
  end
  if #requests == 0 then
    io.stderr:write("bench: no token in ", args[1], "\n")
    os.exit(2)
  end
  next_one = (id % #requests) + 1
end

function request()
  local r = requests[next_one]
  next_one = next_one % #requests + 1
  return r
end

done = lib.report
