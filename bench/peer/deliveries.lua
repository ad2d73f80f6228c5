-- wrk script: verified QStash deliveries to one side of the peer benchmark (bench/peer/run.py).
--
-- As bench/load/deliveries.lua, with the path and the targets set per run: every request carries
-- a token of its own and a fresh Upstash-Message-Id (<run>-<thread>-<counter>). Settings come
-- from the environment:
--   BENCH_TOKENS      path prefix of the token files: thread N reads <prefix>-N (required)
--   BENCH_BODY        the exact body the tokens were minted for (required)
--   BENCH_PATH        the request path, e.g. /api/qstash or /qstash/webhook/ (required)
--   BENCH_TARGETS     space-separated X-Qstash-Target-Url values used in turn; empty: no header
--   BENCH_RUN         message id prefix, unique per run (required)

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_id", #threads)
end

local function required(name)
   local value = os.getenv(name)
   if value == nil or value == "" then
      error(name .. " is not set; run this script through bench/peer/run.py")
   end
   return value
end

function init(args)
   tokens = {}
   for line in io.lines(required("BENCH_TOKENS") .. "-" .. thread_id) do
      table.insert(tokens, line)
   end
   targets = {}
   for target in string.gmatch(os.getenv("BENCH_TARGETS") or "", "%S+") do
      table.insert(targets, target)
   end
   body = required("BENCH_BODY")
   path = required("BENCH_PATH")
   run_tag = required("BENCH_RUN")
   counter = 0
   sent = 0
   ok = 0
   not_ok = 0
   exhausted = 0
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
   if status >= 200 and status < 300 then
      ok = ok + 1
   else
      not_ok = not_ok + 1
   end
end

function done(summary, latency, requests)
   local sent_total, ok_total, not_ok_total, exhausted_total = 0, 0, 0, 0
   for _, thread in ipairs(threads) do
      sent_total = sent_total + thread:get("sent")
      ok_total = ok_total + thread:get("ok")
      not_ok_total = not_ok_total + thread:get("not_ok")
      exhausted_total = exhausted_total + thread:get("exhausted")
   end
   io.write(string.format(
      'BENCH_RESULT {"sent": %d, "ok": %d, "not_ok": %d, "exhausted": %d, "statuses": {}}\n',
      sent_total, ok_total, not_ok_total, exhausted_total))
end
