dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
-- A signed-in browser: the session cookie (the bench issuer is plain http, so no __Host-).
request = function()
  return wrk.format("GET", os.getenv("BENCH_PATH"), {["Cookie"] = "idp_session=" .. next_item()})
end
