-- POST /v1/auth/login with the right password, cycling through the seeded users.
--   wrk ... -s bench/login.lua http://HOST/v1/auth/login -- USERS_FILE PASSWORD
-- Thread i starts at user i and steps by the thread count, so no two threads use
-- the same account at the same time (the server serialises logins per account).
-- Each success starts a new session.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local lib = dofile(dir .. "lib.lua")

setup = lib.setup

local users, password, step, next_user
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  users = lib.read_lines(args[1])
  password = args[2]
  step = tonumber(args[3]) or 1
  next_user = id % #users
end

function request()
  local email = users[next_user + 1]
  next_user = (next_user + step) % #users
  return wrk.format("POST", nil, headers,
    '{"email":"' .. email .. '","password":"' .. password .. '"}')
end

function response(status, _, _)
  lib.count(status)
end

done = lib.report
