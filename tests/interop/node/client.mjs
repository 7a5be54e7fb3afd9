// A tierwise caller written in Node.js from protos/ alone: it loads the wire contract
// (tierwise.proto) at run time, calls Route, Complete and CompleteStream with a Bearer key,
// makes one deliberately unauthenticated call, and prints one JSON object with what it got.
// Any broken expectation exits with status 1 and the reason on stderr.
//
//   TIERWISE_API_KEY=... node client.mjs --target 127.0.0.1:50051 [--proto path/to/tierwise.proto]

import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const DEFAULT_PROTO = resolve(
  dirname(fileURLToPath(import.meta.url)),
  "../../../protos/tierwise/v1/tierwise.proto",
);
const DEADLINE_MS = 15000;
// Every `optional` field of RouteRequest / CompleteRequest (proto3 explicit presence).
const OPTIONAL_FIELDS = [
  "tier",
  "quality_target",
  "latency_budget_ms",
  "max_tokens",
  "temperature",
  "max_age_s",
];

class Failed extends Error {}

function check(condition, message) {
  if (!condition) throw new Failed(message);
}

function loadRouter(protoPath) {
  const definition = protoLoader.loadSync(protoPath, {
    keepCase: true, // field names exactly as in the .proto
    longs: String, // int64 arrives as a decimal string; converted with a range check below
    enums: String,
    defaults: true, // unset plain fields read as their zero value; `optional` ones stay absent
    oneofs: true, // a set member is named by its oneof (also the synthetic `_tier`, ...)
  });
  const loaded = grpc.loadPackageDefinition(definition);
  return loaded.tierwise.v1.Router;
}

function int64(value, what) {
  const number = Number(value);
  check(Number.isSafeInteger(number), `${what} is not a safe integer: ${JSON.stringify(value)}`);
  return number;
}

function usageOf(usage, what) {
  check(usage, `${what}: no usage`);
  return {
    input_tokens: int64(usage.input_tokens, `${what}.input_tokens`),
    output_tokens: int64(usage.output_tokens, `${what}.output_tokens`),
    cached_input_tokens: int64(usage.cached_input_tokens, `${what}.cached_input_tokens`),
  };
}

function decisionOf(decision) {
  return {
    request_id: decision.request_id,
    tier: decision.tier,
    model: decision.model,
    provider: decision.provider,
    reason: decision.reason,
    cache_hit: decision.cache_hit,
    estimated_input_tokens: int64(decision.estimated_input_tokens, "estimated_input_tokens"),
    estimated_cost_usd: decision.estimated_cost_usd,
  };
}

// Presence survives this client's encoder: unset optionals are not on the wire, and an
// optional set to its zero value is (it would vanish if presence were lost).
function checkPresence(Router) {
  const method = Router.service.Complete;
  const bare = method.requestDeserialize(method.requestSerialize({ messages: [] }));
  for (const field of OPTIONAL_FIELDS) {
    check(!(field in bare), `unset optional ${field} decoded as ${JSON.stringify(bare[field])}`);
    check(!(`_${field}` in bare), `unset optional ${field} has its synthetic oneof set`);
  }
  const zeros = method.requestDeserialize(
    method.requestSerialize({ messages: [], temperature: 0, max_age_s: 0 }),
  );
  check(
    zeros.temperature === 0 && zeros._temperature === "temperature",
    "temperature=0 was dropped",
  );
  check(
    int64(zeros.max_age_s, "max_age_s") === 0 && zeros._max_age_s === "max_age_s",
    "max_age_s=0 was dropped",
  );
  return { unset_absent: OPTIONAL_FIELDS, zero_kept: ["temperature", "max_age_s"] };
}

function unary(client, name, request, metadata) {
  return new Promise((resolvePromise, reject) => {
    const options = { deadline: Date.now() + DEADLINE_MS };
    client[name](request, metadata, options, (error, response) =>
      error ? reject(error) : resolvePromise(response),
    );
  });
}

function collectStream(client, request, metadata) {
  return new Promise((resolvePromise, reject) => {
    const chunks = [];
    const call = client.CompleteStream(request, metadata, { deadline: Date.now() + DEADLINE_MS });
    call.on("data", (chunk) => chunks.push(chunk));
    call.on("error", reject);
    call.on("end", () => resolvePromise(chunks));
  });
}

function streamResult(chunks) {
  const kinds = chunks.map((chunk) => chunk.body);
  check(chunks.length >= 2, `stream ended after ${chunks.length} chunk(s)`);
  check(kinds[0] === "decision", `first chunk is ${kinds[0]}, not the decision`);
  check(kinds.at(-1) === "end", `last chunk is ${kinds.at(-1)}, not the end`);
  check(
    kinds.slice(1, -1).every((kind) => kind === "delta"),
    `between decision and end: ${kinds.slice(1, -1)}`,
  );
  const requestId = chunks[0].decision.request_id;
  check(
    chunks.every((chunk) => chunk.request_id === requestId),
    "chunks carry different request ids",
  );
  const end = chunks.at(-1).end;
  return {
    request_id: requestId,
    decision: decisionOf(chunks[0].decision),
    deltas: kinds.length - 2,
    content: chunks.slice(1, -1).map((chunk) => chunk.delta).join(""),
    finish_reason: end.finish_reason,
    usage: usageOf(end.usage, "stream end"),
    cost_usd: end.cost_usd,
    cost_usd_exact: end.cost_usd_exact,
  };
}

async function unauthenticated(client, request) {
  try {
    await unary(client, "Route", request, new grpc.Metadata());
  } catch (error) {
    check(typeof error.code === "number", `unauthenticated call failed without a status: ${error}`);
    return { code: error.code, code_name: grpc.status[error.code], details: error.details };
  }
  throw new Failed("a Route call without credentials succeeded");
}

async function main() {
  const { values } = parseArgs({
    options: { target: { type: "string" }, proto: { type: "string", default: DEFAULT_PROTO } },
  });
  check(values.target, "--target HOST:PORT is required");
  const key = process.env.TIERWISE_API_KEY;
  check(key, "set TIERWISE_API_KEY to a key the server accepts");

  const Router = loadRouter(values.proto);
  const presence = checkPresence(Router);
  const client = new Router(values.target, grpc.credentials.createInsecure());
  const auth = new grpc.Metadata();
  auth.set("authorization", `Bearer ${key}`);
  const messages = [{ role: "user", content: "What is 2+2?" }];
  try {
    const decision = await unary(client, "Route", { messages, feature: "interop" }, auth);
    // temperature is set to its zero value on purpose; max_tokens is left unset.
    const completeRequest = { messages, feature: "interop", temperature: 0 };
    const response = await unary(client, "Complete", completeRequest, auth);
    check(response.decision, "Complete answered without its decision");
    const chunks = await collectStream(client, completeRequest, auth);
    const result = {
      presence,
      route: decisionOf(decision),
      complete: {
        request_id: response.request_id,
        decision: decisionOf(response.decision),
        content: response.content,
        finish_reason: response.finish_reason,
        usage: usageOf(response.usage, "Complete"),
        cost_usd: response.cost_usd,
        cost_usd_exact: response.cost_usd_exact,
        attempts: response.attempts.map((a) => ({ tier: a.tier, model: a.model, ok: a.ok })),
      },
      stream: streamResult(chunks),
      unauthenticated: await unauthenticated(client, { messages }),
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    client.close();
  }
}

main().catch((error) => {
  const grpcStatus = typeof error.code === "number" && error.details !== undefined;
  const reason =
    error instanceof Failed
      ? error.message
      : grpcStatus
        ? `gRPC status ${error.code} (${grpc.status[error.code]}): ${error.details}`
        : (error.stack ?? String(error));
  process.stderr.write(`interop client failed: ${reason}\n`);
  process.exit(1);
});
