-- The one wrk script of benches/load.rs. BENCH_MODE picks the request:
--   get       the URL as given, with no per-request Lua (wrk's fastest path): pass-through
--   get_close the same with "Connection: close": a new connection for every request
--   whoami    GET with X-Session-Token: a direct call to the Kratos stand-in
--   exchange  POST the RFC 8693 form (Basic client authentication from BENCH_AUTHORIZATION)
--             with scope "email": Iris answers an access token, one signed JWT, as the cookbook
--             baseline does (which ignores the client credentials)
--   exchange_openid  the same with scope "openid email": an access token and an ID token
-- Session tokens rotate through ory_st_bench000...0 .. BENCH_SESSIONS-1, as the stand-in holds
-- them. done() prints one BENCH_JSON line that load.rs reads (latencies in microseconds).

local mode = os.getenv("BENCH_MODE") or "get"
local sessions = tonumber(os.getenv("BENCH_SESSIONS") or "1")
local authorization = os.getenv("BENCH_AUTHORIZATION") or ""

local FORM_HEAD = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
  .. "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asession"
  .. (mode == "exchange_openid" and "&scope=openid+email" or "&scope=email")
  .. "&audience=https%3A%2F%2Forders.example.com&subject_token="

local threads = 0
function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end

local counter = 0
function init(args)
  counter = offset or 0
end

local function token()
  counter = counter + 1
  return string.format("ory_st_bench%027d", counter % sessions)
end

if mode == "get_close" then
  wrk.headers["Connection"] = "close"
elseif mode == "exchange" or mode == "exchange_openid" then
  local headers = {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Authorization"] = authorization,
  }
  request = function()
    return wrk.format("POST", nil, headers, FORM_HEAD .. token())
  end
elseif mode == "whoami" then
  request = function()
    return wrk.format("GET", nil, { ["X-Session-Token"] = token(), ["Accept"] = "application/json" })
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,'
      .. '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(99)), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
