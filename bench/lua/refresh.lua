dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local auth = "Basic " .. basic(os.getenv("BENCH_CLIENT_ID"), os.getenv("BENCH_CLIENT_SECRET"))
-- BENCH_CHAIN=1: each connection goes on with the refresh token its last answer rotated
-- to (as a client does), taking a fresh one from the data file only to start or after a
-- failure; otherwise every request presents the next token of the file.
local chain = os.getenv("BENCH_CHAIN") == "1"
local rotated = {}
request = function()
  local token = (chain and #rotated > 0) and table.remove(rotated) or next_item()
  return wrk.format("POST", os.getenv("BENCH_PATH"),
    {["Authorization"] = auth, ["Content-Type"] = "application/x-www-form-urlencoded"},
    "grant_type=refresh_token&refresh_token=" .. token)
end
if chain then
  response = function(status, headers, body)
    local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
    if token then table.insert(rotated, token) end
  end
end
