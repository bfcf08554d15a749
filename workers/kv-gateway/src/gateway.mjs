// brainbot KV gateway: runs signed batches of KV operations through the
// Worker's KV binding `KV`. Calls made through a binding do not count against
// the Cloudflare REST API's 1,200 requests / 5 minutes; one batch here is one
// Worker request. Protocol: see ../README.md.
//
//   POST /v1/batch   {"ops": [op, ...]}  ->  200 {"results": [result, ...]}
//
// Authentication: X-Brainbot-Timestamp (unix seconds) and
// X-Brainbot-Signature = lowercase hex HMAC-SHA256(secret,
// timestamp + "\n" + raw body bytes), by GATEWAY_SECRET or (during a rotation)
// GATEWAY_SECRET_PREVIOUS, within 300 s of the Worker's clock.
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
// Bindings: KV (the namespace), GATEWAY_SECRET, GATEWAY_SECRET_PREVIOUS
// (optional). Only under serve.mjs: SIM_CLOCK (--test-clock) and
// SIM_CURSOR_FORMAT = "miniflare" (checks cursors the way Miniflare forms them).

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
  // Cloudflare's edge refuses request bodies above 100 MB (Free/Pro plans).
  bodyBytes: 100 * 1000 * 1000,
  replayWindowSeconds: 300,
};

// KV operations each op may use through the binding (an upper bound: a get of
// a missing key uses one).
const KV_OPS = { get: 2, put: 1, delete: 1, list: 1 };

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

// Checks the headers that need no body (so a request without them is refused
// before its body is read). Returns what verify() needs.
function authHeaders(request) {
  const timestamp = request.headers.get("x-brainbot-timestamp");
  const signature = request.headers.get("x-brainbot-signature");
  if (timestamp === null || signature === null) return null;
  if (!/^[0-9]{1,15}$/.test(timestamp)) return null;
  if (!/^[0-9a-fA-F]{64}$/.test(signature)) return null;
  // Real time, also under --test-clock: clients sign with their real clock.
  const skew = Math.abs(Date.now() / 1000 - Number(timestamp));
  if (!(skew <= LIMITS.replayWindowSeconds)) return null;
  return { timestamp, signature: hexToBytes(signature) };
}

// HMAC-SHA256(secret, timestamp + "\n" + body), compared in constant time by
// crypto.subtle.verify; either configured secret is accepted.
async function verify(env, auth, body) {
  const prefix = encoder.encode(`${auth.timestamp}\n`);
  const data = new Uint8Array(prefix.byteLength + body.byteLength);
  data.set(prefix, 0);
  data.set(body, prefix.byteLength);
  let ok = false;
  for (const secret of secretsOf(env)) {
    // Both are tried every time, so the time taken does not tell which matched.
    const match = await crypto.subtle.verify("HMAC", await hmacKey(secret), auth.signature, data);
    ok = ok || match;
  }
  return ok;
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
      throw new RequestError(400, `${where}.op must be one of "get", "put", "delete", "list"`);
    }
    kvOps += KV_OPS[kind];
    if (kind !== "list" && typeof op.key !== "string") {
      throw new RequestError(400, `${where}.key must be a string`);
    }
    if (kind === "put") {
      if (typeof op.value !== "string") {
        throw new RequestError(400, `${where}.value must be a base64 string`);
      }
      for (const name of ["expiration", "expiration_ttl"]) {
        if (!optional(op[name]) && !Number.isSafeInteger(op[name])) {
          throw new RequestError(400, `${where}.${name} must be an integer`);
        }
      }
    }
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
  const results = [];
  // In order, one at a time: a put then a get of the same key sees the put.
  for (const op of ops) {
    try {
      results.push(await HANDLERS[op.op](env, op, clock));
    } catch (e) {
      const err = fromBindingError(e);
      results.push({ ok: false, status: err.status, code: err.code, message: err.message });
    }
  }
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
  const auth = authHeaders(request);
  if (auth === null) throw new RequestError(401, "unauthorized");
  const body = await readBody(request, LIMITS.bodyBytes);
  if (body.tooLarge) {
    throw new RequestError(
      413,
      `request body of ${body.length} bytes exceeds the limit of ${LIMITS.bodyBytes}`,
    );
  }
  if (!(await verify(env, auth, body.bytes))) throw new RequestError(401, "unauthorized");
  const parsed = parseJson(body.bytes);
  if (isClock) return json(200, await advanceClock(env, parsed));
  const ops = parseOps(parsed);
  return json(200, { results: await runBatch(env, ops) });
}

export default {
  async fetch(request, env) {
    try {
      return await route(request, env);
    } catch (e) {
      await drain(request);
      if (e instanceof RequestError) return json(e.status, { error: e.message });
      console.error(`kv-gateway: ${e?.stack ?? e}`);
      return json(500, { error: "internal error" });
    }
  },
};
