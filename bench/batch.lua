-- wrk script for bench/harness.py "batch": POST /buys with BATCH buys per request, every buy with
-- a new user id (as bench/post_buy.lua), so each batch inserts as many new rows as it would live.
local BATCH = 100
local counter = 0
request = function()
  local items = {}
  for i = 1, BATCH do
    counter = counter + 1
    items[i] = string.format(
      '{"user_id": %d, "promotion_id": %d, "product_id": %d, "product_quantity": %d}',
      counter, counter % 50, counter % 500, 1 + counter % 5)
  end
  return wrk.format("POST", "/buys", {["Content-Type"] = "application/json"},
    '{"buys": [' .. table.concat(items, ", ") .. ']}')
end

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "result.lua")
