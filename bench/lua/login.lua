dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local body = "csrf_token=" .. urlencode(os.getenv("BENCH_CSRF")) .. "&email=" ..
  urlencode(os.getenv("BENCH_EMAIL")) .. "&password=" .. urlencode(os.getenv("BENCH_PASSWORD"))
request = function()
  return wrk.format("POST", "/login",
    {["Cookie"] = os.getenv("BENCH_COOKIE"), ["Content-Type"] = "application/x-www-form-urlencoded",
     ["User-Agent"] = "wrk"}, body)
end
