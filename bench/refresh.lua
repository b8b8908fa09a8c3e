-- POST /v1/auth/refresh, each thread chaining the refresh tokens of its own session.
--   wrk -tT -cT ... -s bench/refresh.lua http://HOST/v1/auth/refresh -- SESSIONS_FILE T
--
-- Refresh tokens rotate: every answer carries a new one and presenting an old one
-- again revokes the session. So each thread must use ONE connection (-c equal to -t):
-- then request() and response() strictly alternate and the token sent is always the
-- last one received. Thread i owns lines i, i+T, i+2T, ... of SESSIONS_FILE (one
-- refresh token of a distinct session per line): it starts on the first and moves
-- to the next only when a refresh is refused with 401 (its chain is broken, e.g.
-- by a lost answer); a 5xx keeps the token, since nothing was rotated.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local lib = dofile(dir .. "lib.lua")

setup = lib.setup

local mine = {}
local current = 1
local token
local headers = { ["Content-Type"] = "application/json" }
switched = 0
exhausted = false

function init(args)
  local lines = lib.read_lines(args[1])
  local threads = tonumber(args[2])
  if not threads then
    io.stderr:write("bench: refresh.lua needs the thread count after the sessions file\n")
    os.exit(2)
  end
  for i = id + 1, #lines, threads do
    mine[#mine + 1] = lines[i]
  end
  if #mine == 0 then
    io.stderr:write("bench: no session for thread ", id, " in ", args[1], "\n")
    os.exit(2)
  end
  token = mine[current]
end

function request()
  return wrk.format("POST", nil, headers, '{"refresh_token":"' .. token .. '"}')
end

function response(status, _, body)
  lib.count(status)
  if status == 200 then
    local next_token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
    if next_token then
      token = next_token
      return
    end
    io.stderr:write("bench: thread ", id, ": 200 without a refresh_token\n")
  end
  if status == 401 or status == 200 then
    if current < #mine then
      current = current + 1
      token = mine[current]
      switched = switched + 1
    else
      exhausted = true
    end
  end
end

done = lib.report
