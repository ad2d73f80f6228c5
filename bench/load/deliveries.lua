-- wrk script: verified QStash deliveries, each with its own message id, for the load benchmark
-- (bench/load/run_load.py) and both sides of the peer benchmark (bench/peer/run.py).
--
-- Every request carries a token of its own, as QStash's are (the service refuses a token that
-- was already used), and a fresh Upstash-Message-Id (<run>-<thread>-<counter>). wrk.py
-- mints the tokens into one file per thread, so no token appears on a command line. Settings
-- come from the environment:
--   BENCH_TOKENS      path prefix of the token files: thread N reads <prefix>-N (required)
--   BENCH_BODY        the exact body the tokens were minted for (required)
--   BENCH_PATH        the request path, e.g. /api/qstash or /qstash/webhook/ (required)
--   BENCH_TARGETS     space-separated X-Qstash-Target-Url values used in turn, e.g.
--                     /api/cron/noop; empty: no such header
--   BENCH_RUN         message id prefix, unique per run (required)
--
-- done() prints one line "BENCH_RESULT {json}" with the counters of every thread; "exhausted"
-- counts requests sent after a thread used up its tokens (they reuse its last one and fail).

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_id", #threads)
end

local function required(name)
   local value = os.getenv(name)
   if value == nil or value == "" then
      error(name .. " is not set; run this script through bench/load/wrk.py")
   end
   return value
end

function init(args)
   tokens = {}
   for line in io.lines(required("BENCH_TOKENS") .. "-" .. thread_id) do
      table.insert(tokens, line)
   end
   if #tokens == 0 then
      error("no tokens for thread " .. thread_id)
   end
   targets = {}
   for target in string.gmatch(os.getenv("BENCH_TARGETS") or "", "%S+") do
      table.insert(targets, target)
   end
   exhausted = 0
   body = required("BENCH_BODY")
   path = required("BENCH_PATH")
   run_tag = required("BENCH_RUN")
   counter = 0
   sent = 0
   responses = 0
   ok = 0
   not_ok = 0
   statuses = {}
end

function request()
   counter = counter + 1
   sent = sent + 1
   local token = tokens[counter]
   if token == nil then
      exhausted = exhausted + 1
      token = tokens[#tokens]
   end
   local headers = {
      ["Upstash-Signature"] = token,
      ["Upstash-Message-Id"] = string.format("%s-%d-%d", run_tag, thread_id, counter),
      ["Upstash-Retried"] = "0",
      ["Content-Type"] = "application/json",
      ["User-Agent"] = "Upstash-QStash",
   }
   if #targets > 0 then
      -- The two threads walk opposite halves of the jobs, so that they do not meet on one.
      local offset = (thread_id - 1) * math.floor(#targets / 2)
      headers["X-Qstash-Target-Url"] = targets[((counter + offset) % #targets) + 1]
   end
   return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
   responses = responses + 1
   if status >= 200 and status < 300 then
      ok = ok + 1
   else
      not_ok = not_ok + 1
   end
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
   local sent_total, responses_total, ok_total, not_ok_total, exhausted_total = 0, 0, 0, 0, 0
   local by_status = {}
   for _, thread in ipairs(threads) do
      sent_total = sent_total + thread:get("sent")
      responses_total = responses_total + thread:get("responses")
      ok_total = ok_total + thread:get("ok")
      not_ok_total = not_ok_total + thread:get("not_ok")
      exhausted_total = exhausted_total + thread:get("exhausted")
      for status, count in pairs(thread:get("statuses")) do
         by_status[status] = (by_status[status] or 0) + count
      end
   end
   local parts = {}
   for status, count in pairs(by_status) do
      table.insert(parts, string.format('"%s": %d', status, count))
   end
   io.write(string.format(
      'BENCH_RESULT {"sent": %d, "responses": %d, "ok": %d, "not_ok": %d, "exhausted": %d, '
         .. '"statuses": {%s}, '
         .. '"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
      sent_total, responses_total, ok_total, not_ok_total, exhausted_total,
      table.concat(parts, ", "),
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      latency.max, summary.errors.connect, summary.errors.read, summary.errors.write,
      summary.errors.status, summary.errors.timeout))
end
