-- wrk script for bench/harness.py "mix": 9 in 10 requests are POST /buy (as bench/post_buy.lua),
-- the 10th is an analytics read, taking each of the five reads in turn, so every read gets 2% of
-- the traffic. Promotion ids 0-49 are the ones the buys use, so promotion stats hit real rows.
local counter = 0
local reads = {
  "/stats",
  "/stats?timeframe_hours=24",
  "/promotions",
  "/promotions/%d/stats",
  "/stats/timeseries?bucket=minute&timeframe_hours=1",
}
request = function()
  counter = counter + 1
  if counter % 10 == 0 then
    local path = reads[1 + (counter / 10) % #reads]
    return wrk.format("GET", string.format(path, counter % 50))
  end
  return buy_request(counter)
end

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "result.lua")
