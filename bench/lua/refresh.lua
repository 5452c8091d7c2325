dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local auth = "Basic " .. basic(os.getenv("BENCH_CLIENT_ID"), os.getenv("BENCH_CLIENT_SECRET"))
request = function()
  return wrk.format("POST", os.getenv("BENCH_PATH"),
    {["Authorization"] = auth, ["Content-Type"] = "application/x-www-form-urlencoded"},
    "grant_type=refresh_token&refresh_token=" .. next_item())
end
