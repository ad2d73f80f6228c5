// Calls methods of the official QStash JavaScript SDK and prints the results as JSON, so that
// pytest (tests/qstash_local/sdk/) drives the SDK and asserts in Python.
//
//   echo '<JSON array of arguments>' | node tests/js/client.mjs <target.method>
//   echo '[["<target.method>", [args...]], ...]' | node tests/js/client.mjs batch
//
// Arguments come on standard input, as a large body would not fit on a command line; a batch
// runs its calls in order in one process and prints the list of their answers.
// <target> is a client namespace (messages, schedules, dlq, ...), "client" for the client's own
// methods (publish, publishJSON, logs), or "receiver" for Receiver.verify. QSTASH_URL and
// QSTASH_TOKEN (and QSTASH_CURRENT_SIGNING_KEY / QSTASH_NEXT_SIGNING_KEY) come from the
// environment. An answer is {"ok": true, "result": ...} or {"ok": false, "error", "status"}.
import { Client, Receiver } from "@upstash/qstash";

const env = process.env;

function subject(target) {
  if (target === "receiver") {
    return new Receiver({
      currentSigningKey: env.QSTASH_CURRENT_SIGNING_KEY,
      nextSigningKey: env.QSTASH_NEXT_SIGNING_KEY,
    });
  }
  // devMode false: never start or look for the official dev server; retry false: a test sees
  // exactly the calls it makes.
  const client = new Client({
    baseUrl: env.QSTASH_URL,
    token: env.QSTASH_TOKEN,
    devMode: false,
    retry: false,
  });
  return target === "client" ? client : client[target];
}

async function call(operation, args) {
  const [target, method] = operation.split(".");
  try {
    const on = subject(target);
    if (typeof on?.[method] !== "function") {
      throw new TypeError(`no such SDK method: ${operation}`);
    }
    const result = await on[method](...args);
    return { ok: true, result: result ?? null };
  } catch (error) {
    return {
      ok: false,
      name: error?.name ?? null,
      status: error?.status ?? null,
      error: String(error?.message ?? error),
    };
  }
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const input = JSON.parse(Buffer.concat(chunks).toString("utf8") || "[]");
const operation = process.argv[2] ?? "";
const answer = [];
if (operation === "batch") {
  for (const [op, args] of input) answer.push(await call(op, args));
}
process.stdout.write(
  JSON.stringify(operation === "batch" ? answer : await call(operation, input)),
);
