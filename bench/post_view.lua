-- wrk script: POST /view as a shop's page sends it with navigator.sendBeacon (text/plain holding
-- JSON), a new user each time, 50 promotions, 500 products.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "result.lua")

local counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"user_id": %d, "promotion_id": %d, "product_id": %d}',
    counter, counter % 50, counter % 500)
  return wrk.format("POST", "/view", {["Content-Type"] = "text/plain;charset=UTF-8"}, body)
end
