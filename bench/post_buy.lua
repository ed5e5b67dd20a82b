-- wrk script: POST /buy with a valid body, varying ids so rows differ.
-- buy_request and the RESULT line come from bench/result.lua, found beside this file whatever the
-- working directory.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "result.lua")

local counter = 0
request = function()
  counter = counter + 1
  return buy_request(counter)
end
