// brainbot KV gateway: runs signed batches of KV operations through the
// Worker's KV binding `KV`. Calls made through a binding do not count against
// the Cloudflare REST API's 1,200 requests / 5 minutes; one batch here is one
// Worker request. Protocol: see ../README.md.
//
//   POST /v1/batch   {"ops": [op, ...]}  ->  200 {"results": [result, ...]}
//
// ops: get, put, delete, list run on the binding here; xread and xcommit (the
// atomic read-modify-write of brainbot's KVStore) go to the Durable Object
// that owns the key (./coordinator.mjs), one request per shard per batch.
//
// Authentication (checked before the body is read, see authenticate()):
//   X-Brainbot-Timestamp       unix seconds, within 30 s of the Worker's clock
//   X-Brainbot-Nonce           32 hex digits, never accepted twice (./replay.mjs)
//   X-Brainbot-Namespace       the deployment's GATEWAY_NAMESPACE
//   X-Brainbot-Content-SHA256  hex SHA-256 of the body
//   X-Brainbot-Signature       hex HMAC-SHA256(secret, "brainbot-v2\n" + method
//                              + "\n" + host + "\n" + path + "\n" + namespace +
//                              "\n" + timestamp + "\n" + nonce + "\n" + body hash)
// by GATEWAY_SECRET or (during a rotation) GATEWAY_SECRET_PREVIOUS. A request
// is refused by its Content-Length and its headers' signature before its body
// is read; the body must then hash to the signed value.
//
// A failing op does not fail the batch: its result is
//   {"ok": false, "status", "code", "message"}
// with the status, Cloudflare KV error code and message the REST API gives.
// Those rules (limits, error codes and the binding-error mapping, key / expiry
// / metadata / list checks, the test clock, the expiration lookup, body
// reading, base64) live in ../../shared/kv-rules.mjs, shared with the REST
// Worker (../../kv-rest-sim) so both answer the same input the same; wrangler
// inlines that module into the one script it deploys.
//
// Bindings: KV (the namespace), COORDINATOR and REPLAY_GUARD (Durable Object
// namespaces), GATEWAY_SECRET, GATEWAY_SECRET_PREVIOUS (optional),
// GATEWAY_NAMESPACE (default "default"), COORDINATOR_SHARDS (default 1). Only
// under serve.mjs: SIM_CLOCK (--test-clock), SIM_STATS (the xstats op) and
// SIM_CURSOR_FORMAT = "miniflare" (checks cursors the way Miniflare forms them).

export { Coordinator } from "./coordinator.mjs";
export { ReplayGuard } from "./replay.mjs";

import { AnswerBudget, FULL } from "./coordinator.mjs";

import {
  CODE,
  KVError,
  LIMITS as KV_LIMITS,
  advanceClock as advanceSimClock,
  bindingExpiry,
  decodeBase64,
  encodeBase64,
  fromBindingError,
  isExpired,
  kv,
  lookupExpiration,
  parseExpiry,
  parseListLimit,
  readBody,
  syncClock,
  validateCursor,
  validateKey,
  validateMetadata,
  validatePrefix,
  validateValueLength,
} from "../../shared/kv-rules.mjs";

// KV's own limits, plus the gateway's.
const LIMITS = {
  ...KV_LIMITS,
  // Cloudflare allows 1,000 KV operations per Worker invocation.
  kvOpsPerBatch: 1000,
  // One 25 MiB value in base64 plus its op, and no more: an isolate has 128 MB
  // (GatewayKV keeps its batches far below, and sends a large value alone).
  bodyBytes: 36 * 1000 * 1000,
  replayWindowSeconds: 30,
};

// KV operations each op may use through the binding (an upper bound: a get of
// a missing key uses one); xread and xcommit count per key they name.
const KV_OPS = { get: 2, put: 1, delete: 1, list: 1, xread: 2, xcommit: 1, xstats: 0 };
const COORDINATED = new Set(["xread", "xcommit", "xstats"]);

// A whole-request failure: becomes {"error": message} with this status.
class RequestError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const encoder = new TextEncoder();

function json(status, body) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

// --- authentication -------------------------------------------------------

const keyCache = new Map(); // secret -> Promise<CryptoKey>

function hmacKey(secret) {
  let key = keyCache.get(secret);
  if (key === undefined) {
    key = crypto.subtle.importKey(
      "raw",
      encoder.encode(secret),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["verify"],
    );
    if (keyCache.size >= 4) keyCache.clear(); // only the current two are worth keeping
    keyCache.set(secret, key);
  }
  return key;
}

function secretsOf(env) {
  const secrets = [];
  for (const s of [env.GATEWAY_SECRET, env.GATEWAY_SECRET_PREVIOUS]) {
    if (typeof s === "string" && s !== "") secrets.push(s);
  }
  return secrets;
}

function hexToBytes(hex) {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) {
    bytes[i] = parseInt(hex.substr(i * 2, 2), 16);
  }
  return bytes;
}

const HEADER = {
  timestamp: "x-brainbot-timestamp",
  nonce: "x-brainbot-nonce",
  namespace: "x-brainbot-namespace",
  bodyHash: "x-brainbot-content-sha256",
  signature: "x-brainbot-signature",
};

function hex(buffer) {
  return [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// Everything but the body: the headers, their signature, the declared size.
// Throws RequestError (401 / 411 / 413) before a byte of the body is read.
async function authenticate(request, env) {
  const h = {};
  for (const [name, header] of Object.entries(HEADER)) h[name] = request.headers.get(header);
  if (
    !/^[0-9]{1,15}$/.test(h.timestamp ?? "") ||
    !/^[0-9a-f]{32}$/.test(h.nonce ?? "") ||
    !/^[\x21-\x7e]{1,64}$/.test(h.namespace ?? "") ||
    !/^[0-9a-f]{64}$/.test(h.bodyHash ?? "") ||
    !/^[0-9a-fA-F]{64}$/.test(h.signature ?? "")
  ) {
    throw new RequestError(401, "unauthorized");
  }
  // Real time, also under --test-clock: clients sign with their real clock.
  const skew = Date.now() / 1000 - Number(h.timestamp);
  if (!(Math.abs(skew) <= LIMITS.replayWindowSeconds)) {
    throw new RequestError(
      401,
      `clock skew: the request was signed ${Math.round(Math.abs(skew))} s ${skew > 0 ? "behind" : "ahead of"} the gateway's clock (allowed: ${LIMITS.replayWindowSeconds} s)`,
    );
  }
  const declared = request.headers.get("content-length");
  if (declared === null || !/^[0-9]{1,12}$/.test(declared)) {
    throw new RequestError(411, "a Content-Length is required");
  }
  const url = new URL(request.url);
  const text = [
    "brainbot-v2",
    request.method,
    url.hostname.toLowerCase(),
    url.pathname,
    h.namespace,
    h.timestamp,
    h.nonce,
    h.bodyHash,
  ].join("\n");
  const data = encoder.encode(text);
  const signature = hexToBytes(h.signature);
  let ok = false;
  for (const secret of secretsOf(env)) {
    // Both are tried every time, so the time taken does not tell which matched.
    const match = await crypto.subtle.verify("HMAC", await hmacKey(secret), signature, data);
    ok = ok || match;
  }
  if (!ok) throw new RequestError(401, "unauthorized");
  if (h.namespace !== (env.GATEWAY_NAMESPACE || "default")) {
    throw new RequestError(401, "signed for another gateway namespace");
  }
  if (Number(declared) > LIMITS.bodyBytes) {
    // refused unread; drained (not buffered) so a genuine client reads the answer
    const error = new RequestError(
      413,
      `request body of ${declared} bytes exceeds the limit of ${LIMITS.bodyBytes}`,
    );
    error.drain = true;
    throw error;
  }
  return { ...h, length: Number(declared) };
}

// The body, which must be as long as declared and hash to the signed value;
// then the nonce, which must be new.
async function signedBody(request, env, auth) {
  const body = await readBody(request, auth.length);
  if (body.tooLarge || body.length !== auth.length) {
    throw new RequestError(400, "the body is not as long as its Content-Length");
  }
  if (hex(await crypto.subtle.digest("SHA-256", body.bytes)) !== auth.bodyHash) {
    throw new RequestError(401, "the body does not match its signed hash");
  }
  const guard = env.REPLAY_GUARD.get(env.REPLAY_GUARD.idFromName(`nonces-${auth.nonce[0]}`));
  const answer = await guard.fetch("https://replay-guard/check", {
    method: "POST",
    body: JSON.stringify({ nonce: auth.nonce }),
  });
  if (!answer.ok) throw new RequestError(503, "replay guard unavailable");
  if (!(await answer.json()).fresh) {
    throw new RequestError(401, "replayed request: this nonce was already used");
  }
  return body.bytes;
}

// --- request parsing ----------------------------------------------------------

function isPlainObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function optional(v) {
  return v === undefined || v === null;
}

// Shape checks: a batch with a malformed op is refused whole (400) before any
// op runs. Limit checks (key length, TTL, sizes...) are per-op results instead.
function parseOps(body) {
  if (!isPlainObject(body) || !Array.isArray(body.ops)) {
    throw new RequestError(400, 'body must be a JSON object {"ops": [...]}');
  }
  let kvOps = 0;
  const ops = body.ops.map((op, i) => {
    const where = `ops[${i}]`;
    if (!isPlainObject(op)) throw new RequestError(400, `${where} must be an object`);
    const kind = op.op;
    if (!Object.hasOwn(KV_OPS, kind)) {
      throw new RequestError(
        400,
        `${where}.op must be one of "get", "put", "delete", "list", "xread", "xcommit"`,
      );
    }
    if (COORDINATED.has(kind)) {
      const keys = coordinatedKeys(op, where);
      kvOps += KV_OPS[kind] * keys.length + (kind === "xcommit" ? 2 * keys.length : 0);
      op.keysForShard = keys;
      return op;
    }
    kvOps += KV_OPS[kind];
    if (kind !== "list" && typeof op.key !== "string") {
      throw new RequestError(400, `${where}.key must be a string`);
    }
    if (kind === "put") checkEntryShape(op, where);
    if (kind === "list") {
      for (const name of ["prefix", "cursor"]) {
        if (!optional(op[name]) && typeof op[name] !== "string") {
          throw new RequestError(400, `${where}.${name} must be a string`);
        }
      }
      if (!optional(op.limit) && typeof op.limit !== "number") {
        throw new RequestError(400, `${where}.limit must be an integer`);
      }
    }
    return op;
  });
  if (kvOps > LIMITS.kvOpsPerBatch) {
    throw new RequestError(
      413,
      `batch needs ${kvOps} KV operations, more than the ${LIMITS.kvOpsPerBatch} one Worker invocation may make (get counts 2, put/delete/list 1): split it`,
    );
  }
  return ops;
}

// A written entry's shape: a base64 string value, integer expiries.
function checkEntryShape(entry, where) {
  if (!isPlainObject(entry) || typeof entry.value !== "string") {
    throw new RequestError(400, `${where}.value must be a base64 string`);
  }
  for (const name of ["expiration", "expiration_ttl"]) {
    if (!optional(entry[name]) && !Number.isSafeInteger(entry[name])) {
      throw new RequestError(400, `${where}.${name} must be an integer`);
    }
  }
}

// The keys an x-op names (its shape only; the Durable Object checks the rest).
function coordinatedKeys(op, where) {
  const pairs = (name) => {
    const list = op[name] ?? [];
    if (!Array.isArray(list) || list.some((p) => !Array.isArray(p) || typeof p[0] !== "string")) {
      throw new RequestError(400, `${where}.${name} must be a list of [key, ...] pairs`);
    }
    return list.map((p) => p[0]);
  };
  let keys;
  if (op.op === "xread") {
    if (!Array.isArray(op.keys) || op.keys.some((k) => typeof k !== "string")) {
      throw new RequestError(400, `${where}.keys must be a list of strings`);
    }
    keys = op.keys;
  } else if (op.op === "xcommit") {
    keys = [...pairs("read"), ...pairs("write")];
    // checked like puts: an entry KV would refuse must not be acknowledged
    for (const [, entry] of op.write ?? []) {
      if (entry !== null && entry !== undefined) checkEntryShape(entry, `${where}.write`);
    }
  } else {
    if (typeof op.key !== "string") throw new RequestError(400, `${where}.key must be a string`);
    keys = [op.key];
  }
  if (keys.length === 0) throw new RequestError(400, `${where} names no key`);
  return keys;
}

// --- coordinator shards --------------------------------------------------------
//
// A key belongs to shard fnv1a(tag) mod COORDINATOR_SHARDS, where the tag is
// the part between the first "{" and the next "}" when that is not empty (as
// Redis Cluster's hash tags), else the whole key. An op naming keys of two
// shards is refused (400, as Redis Cluster's CROSSSLOT): with the default of
// one shard every op may name any keys.

function shardCount(env) {
  const n = Number(env.COORDINATOR_SHARDS ?? 1);
  return Number.isSafeInteger(n) && n >= 1 ? n : 1;
}

function shardOf(key, shards) {
  if (shards === 1) return 0;
  const open = key.indexOf("{");
  const close = open >= 0 ? key.indexOf("}", open + 1) : -1;
  const tag = close > open + 1 ? key.slice(open + 1, close) : key;
  let hash = 0x811c9dc5;
  for (const byte of encoder.encode(tag)) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash % shards;
}

async function runCoordinated(env, ops, results, budget) {
  const shards = shardCount(env);
  const groups = new Map(); // shard -> [[index, op], ...]
  for (const [i, op] of ops) {
    const owners = new Set(op.keysForShard.map((k) => shardOf(k, shards)));
    if (owners.size > 1) {
      results[i] = {
        ok: false,
        status: 400,
        code: CODE.generic,
        message: "CROSSSLOT Keys in request don't hash to the same coordinator shard",
      };
      continue;
    }
    const [shard] = owners;
    if (!groups.has(shard)) groups.set(shard, []);
    const { keysForShard, ...clean } = op;
    groups.get(shard).push([i, clean]);
  }
  // Shards answer in parallel: each gets its part of what is left; only the
  // shard of the first coordinated op may go past it, and only if nothing with
  // values was answered before (every batch answers at least one op).
  const share = Math.floor(budget.left / Math.max(1, groups.size));
  const firstShard = groups.keys().next().value;
  await Promise.all(
    [...groups].map(async ([shard, group]) => {
      const part = { left: share, first: budget.first && shard === firstShard };
      const stub = env.COORDINATOR.get(env.COORDINATOR.idFromName(`shard-${shard}`));
      const answer = await stub.fetch("https://coordinator/ops", {
        method: "POST",
        body: JSON.stringify({ ops: group.map(([, op]) => op), budget: part }),
      });
      if (!answer.ok) throw new Error(`coordinator answered ${answer.status}`);
      const { results: answered } = await answer.json();
      group.forEach(([i], j) => {
        results[i] = answered[j];
      });
    }),
  );
}

function parseJson(bytes) {
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new RequestError(400, "body is not valid UTF-8");
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new RequestError(400, "body is not valid JSON");
  }
}

// --- ops --------------------------------------------------------------------

async function opGet(env, op, clock) {
  validateKey(op.key);
  const { value, metadata } = await kv(env.KV.getWithMetadata(op.key, { type: "arrayBuffer" }));
  const missing = { ok: true, value: null, expiration: null, metadata: null };
  if (value === null) return missing;
  const expiration = await lookupExpiration(env, op.key);
  if (isExpired(clock, expiration)) return missing;
  return { ok: true, value: encodeBase64(value), expiration, metadata: metadata ?? null };
}

async function opPut(env, op, clock) {
  validateKey(op.key);
  const bytes = decodeBase64(op.value);
  if (bytes === null) throw new KVError(400, CODE.generic, "value is not valid base64");
  validateValueLength(bytes.byteLength);
  // Checked here (not only by the binding) so the messages are always the
  // REST API's, whatever text the production binding throws.
  const options = bindingExpiry(parseExpiry(op.expiration, op.expiration_ttl), clock);
  if (!optional(op.metadata)) {
    validateMetadata(op.metadata);
    options.metadata = op.metadata;
  }
  await kv(env.KV.put(op.key, bytes, options));
  return { ok: true };
}

async function opDelete(env, op) {
  validateKey(op.key);
  await kv(env.KV.delete(op.key));
  return { ok: true };
}

async function opList(env, op, clock) {
  const options = { limit: parseListLimit(op.limit) };
  const prefix = op.prefix ?? "";
  if (prefix !== "") {
    validatePrefix(prefix);
    options.prefix = prefix;
  }
  const cursor = op.cursor ?? "";
  if (cursor !== "") {
    // Miniflare's cursors have a known form, which serve.mjs tells us
    // (SIM_CURSOR_FORMAT); a deployed Worker leaves cursors to the binding.
    validateCursor(cursor, { miniflareFormat: env.SIM_CURSOR_FORMAT === "miniflare" });
    options.cursor = cursor;
  }
  const res = await kv(env.KV.list(options));
  // With a simulated clock a page may come out short, even empty, while the
  // cursor says more keys remain: Cloudflare's pages can do the same.
  const keys = [];
  for (const k of res.keys) {
    if (isExpired(clock, k.expiration)) continue;
    const item = { name: k.name };
    if (k.expiration !== undefined && k.expiration !== null) item.expiration = k.expiration;
    if (k.metadata !== undefined && k.metadata !== null) item.metadata = k.metadata;
    keys.push(item);
  }
  return { ok: true, keys, cursor: res.list_complete ? "" : res.cursor };
}

const HANDLERS = { get: opGet, put: opPut, delete: opDelete, list: opList };

async function runBatch(env, ops) {
  const clock = await syncClock(env);
  const results = new Array(ops.length);
  const coordinated = [];
  // a get or coordinated op past the answer's room is answered FULL (AnswerBudget)
  const budget = AnswerBudget.whole();
  // In order, one at a time: a put then a get of the same key sees the put.
  for (const [i, op] of ops.entries()) {
    if (COORDINATED.has(op.op)) {
      coordinated.push([i, op]);
      continue;
    }
    if (op.op === "get" && budget.spent()) {
      results[i] = FULL; // not even read: the answer has no room left
      continue;
    }
    try {
      results[i] = budget.take(await HANDLERS[op.op](env, op, clock));
    } catch (e) {
      const err = fromBindingError(e);
      results[i] = { ok: false, status: err.status, code: err.code, message: err.message };
    }
  }
  if (coordinated.length > 0) await runCoordinated(env, coordinated, results, budget);
  return results;
}

// --- test clock ---------------------------------------------------------------

async function advanceClock(env, body) {
  if (!isPlainObject(body)) throw new RequestError(400, 'body must be {"advance": seconds}');
  const advance = body.advance ?? 0;
  if (typeof advance !== "number" || !Number.isFinite(advance) || advance < 0) {
    throw new RequestError(400, '"advance" must be a number of seconds >= 0');
  }
  return advanceSimClock(env, advance);
}

// --- routing --------------------------------------------------------------------

const DRAIN_BYTES = 1024 * 1024;

async function drain(request) {
  if (request.body !== null && !request.bodyUsed) {
    await request.body.pipeTo(new WritableStream()).catch(() => {});
  }
}

async function route(request, env) {
  if (typeof env.GATEWAY_SECRET !== "string" || env.GATEWAY_SECRET === "") {
    throw new RequestError(503, "gateway secret not configured");
  }
  const { pathname } = new URL(request.url);
  const isBatch = pathname === "/v1/batch";
  const isClock = pathname === "/__sim/clock" && env.SIM_CLOCK !== undefined;
  if (request.method !== "POST" || !(isBatch || isClock)) {
    throw new RequestError(404, "not found");
  }
  const auth = await authenticate(request, env);
  const parsed = parseJson(await signedBody(request, env, auth));
  if (isClock) return json(200, await advanceClock(env, parsed));
  const ops = parseOps(parsed);
  return json(200, { results: await runBatch(env, ops) });
}

export default {
  async fetch(request, env) {
    try {
      return await route(request, env);
    } catch (e) {
      // A small unread body, or an authenticated one, is drained (read and
      // dropped) so the client reads the answer; a large unauthenticated one (a
      // forged upload) is left unread.
      // No Content-Length (chunked): unbounded, so never drained unauthenticated.
      const declared = request.headers.get("content-length");
      if (e?.drain || (declared !== null && Number(declared) <= DRAIN_BYTES)) await drain(request);
      if (e instanceof RequestError) return json(e.status, { error: e.message });
      console.error(`kv-gateway: ${e?.stack ?? e}`);
      return json(500, { error: "internal error" });
    }
  },
};
