-- wrk script for bench/harness.py "view-64": POST /views with BATCH views per request, every
-- view with a new user id, as bench/batch.lua sends buys (the two are compared record for record).
local BATCH = 100
local counter = 0
request = function()
  local items = {}
  for i = 1, BATCH do
    counter = counter + 1
    items[i] = string.format('{"user_id": %d, "promotion_id": %d, "product_id": %d}',
      counter, counter % 50, counter % 500)
  end
  return wrk.format("POST", "/views", {["Content-Type"] = "application/json"},
    '{"views": [' .. table.concat(items, ", ") .. ']}')
end

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "result.lua")
