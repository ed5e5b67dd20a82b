-- wrk script: POST /buy with a valid body, varying ids so rows differ.
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format(
    '{"user_id": %d, "promotion_id": %d, "product_id": %d, "product_quantity": %d}',
    counter, counter % 50, counter % 500, 1 + counter % 5)
  return wrk.format("POST", "/buy", {["Content-Type"] = "application/json"}, body)
end

-- The RESULT line (bench/result.lua), found beside this file whatever the working directory.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "result.lua")
