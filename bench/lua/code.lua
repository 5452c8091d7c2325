dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local auth = "Basic " .. basic(os.getenv("BENCH_CLIENT_ID"), os.getenv("BENCH_CLIENT_SECRET"))
local redirect = urlencode(os.getenv("BENCH_REDIRECT_URI"))
-- Codes minted with PKCE (bench/side_by_side.py) share one verifier.
local verifier = os.getenv("BENCH_VERIFIER") or ""
local pkce = verifier ~= "" and ("&code_verifier=" .. verifier) or ""
request = function()
  return wrk.format("POST", os.getenv("BENCH_PATH"),
    {["Authorization"] = auth, ["Content-Type"] = "application/x-www-form-urlencoded"},
    "grant_type=authorization_code&redirect_uri=" .. redirect .. "&code=" .. next_item() .. pkce)
end
