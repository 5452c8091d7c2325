dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
request = function()
  return wrk.format("GET", os.getenv("BENCH_PATH"), {["Authorization"] = "Bearer " .. next_item()})
end
