dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local auth = "Basic " .. basic(os.getenv("BENCH_CLIENT_ID"), os.getenv("BENCH_CLIENT_SECRET"))
local redirect = urlencode(os.getenv("BENCH_REDIRECT_URI"))
request = function()
  return wrk.format("POST", "/oauth/token",
    {["Authorization"] = auth, ["Content-Type"] = "application/x-www-form-urlencoded"},
    "grant_type=authorization_code&redirect_uri=" .. redirect .. "&code=" .. next_item())
end
