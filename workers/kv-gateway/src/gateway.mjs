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
// with the status, Cloudflare KV error code and message the REST API gives
// (the same mapping as workers/kv-rest-sim, which this file copies from; the
// two packages are kept independent on purpose).
//
// Bindings: KV (the namespace), GATEWAY_SECRET, GATEWAY_SECRET_PREVIOUS
// (optional). Only under serve.mjs: SIM_CLOCK (--test-clock) and
// SIM_CURSOR_FORMAT = "miniflare" (checks cursors the way Miniflare forms them).

const LIMITS = {
  keyBytes: 512,
  valueBytes: 25 * 1024 * 1024,
  metadataBytes: 1024,
  minTtl: 60,
  listMin: 10,
  listMax: 1000,
  // Cloudflare allows 1,000 KV operations per Worker invocation.
  kvOpsPerBatch: 1000,
  // Cloudflare's edge refuses request bodies above 100 MB (Free/Pro plans).
  bodyBytes: 100 * 1000 * 1000,
  replayWindowSeconds: 300,
};

// KV operations each op may use through the binding (an upper bound: a get of
// a missing key uses one).
const KV_OPS = { get: 2, put: 1, delete: 1, list: 1 };

// Cloudflare KV error codes (10001 where Cloudflare documents none for a case).
const CODE = {
  generic: 10001,
  badExpiration: 10033,
  badExpirationTtl: 10034,
  badCursor: 10041,
  badKey: 10042,
  badMetadata: 10047,
  badListLimit: 10026,
};

// An op's failure: becomes {"ok": false, status, code, message}.
class OpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// A whole-request failure: becomes {"error": message} with this status.
class RequestError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const encoder = new TextEncoder();
const byteLength = (s) => encoder.encode(s).byteLength;

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

// --- keys -----------------------------------------------------------------

function validateKey(key) {
  if (key === "") {
    throw new OpError(400, CODE.badKey, "Key names must not be empty");
  }
  if (key === "." || key === "..") {
    throw new OpError(400, CODE.badKey, `Illegal key name "${key}". Please use a different name.`);
  }
  const n = byteLength(key);
  if (n > LIMITS.keyBytes) {
    throw new OpError(
      414,
      CODE.badKey,
      `UTF-8 encoded length of ${n} exceeds key length limit of ${LIMITS.keyBytes}.`,
    );
  }
}

// --- mapping what the binding throws ----------------------------------------

function codeForMessage(status, message) {
  if (/key length limit/.test(message)) return CODE.badKey;
  if (/^Invalid expiration_ttl /.test(message)) return CODE.badExpirationTtl;
  if (/^Invalid expiration /.test(message)) return CODE.badExpiration;
  if (/^Metadata length /.test(message)) return CODE.badMetadata;
  if (/^Invalid key_count_limit /.test(message)) return CODE.badListLimit;
  if (/cursor/i.test(message)) return CODE.badCursor;
  if (/key name|Key name/.test(message)) return CODE.badKey;
  return CODE.generic;
}

function fromBindingError(e) {
  if (e instanceof OpError) return e;
  const message = String(e?.message ?? e);
  // "KV PUT failed: 413 Value length of 26214401 exceeds limit of 26214400."
  const m = /^KV [A-Z_]+ failed: (\d{3}) ([\s\S]*)$/.exec(message);
  if (m) {
    const status = Number(m[1]);
    return new OpError(status, codeForMessage(status, m[2]), m[2]);
  }
  if (e instanceof TypeError) {
    // Key checks the binding does itself (empty, "." and "..").
    if (/cannot be empty/.test(message)) {
      return new OpError(400, CODE.badKey, "Key names must not be empty");
    }
    const dots = /^"(\.\.?)" is not allowed as a key name\.$/.exec(message);
    if (dots) {
      return new OpError(
        400,
        CODE.badKey,
        `Illegal key name "${dots[1]}". Please use a different name.`,
      );
    }
    return new OpError(400, CODE.generic, message);
  }
  return new OpError(500, CODE.generic, `Internal error: ${message}`);
}

async function kv(promise) {
  try {
    return await promise;
  } catch (e) {
    throw fromBindingError(e);
  }
}

// --- expiry -----------------------------------------------------------------

// The service's own checks, with its messages. expiration_ttl wins when both
// are given (as in Cloudflare's REST API).
function parseExpiry(op) {
  const has = (v) => v !== undefined && v !== null;
  if (has(op.expiration_ttl)) {
    const ttl = op.expiration_ttl;
    if (ttl <= 0) {
      throw new OpError(
        400,
        CODE.badExpirationTtl,
        `Invalid expiration_ttl of ${ttl}. Please specify integer greater than 0.`,
      );
    }
    return { expirationTtl: ttl };
  }
  if (has(op.expiration)) {
    const exp = op.expiration;
    if (exp <= 0) {
      throw new OpError(
        400,
        CODE.badExpiration,
        `Invalid expiration of ${exp}. Please specify integer greater than the current number of seconds since the UNIX epoch.`,
      );
    }
    return { expiration: exp };
  }
  return {};
}

function checkExpiry(opts, nowSeconds) {
  if (opts.expirationTtl !== undefined) {
    if (opts.expirationTtl < LIMITS.minTtl) {
      throw new OpError(
        400,
        CODE.badExpirationTtl,
        `Invalid expiration_ttl of ${opts.expirationTtl}. Expiration TTL must be at least ${LIMITS.minTtl}.`,
      );
    }
  } else if (opts.expiration !== undefined) {
    if (opts.expiration <= nowSeconds) {
      throw new OpError(
        400,
        CODE.badExpiration,
        `Invalid expiration of ${opts.expiration}. Please specify integer greater than the current number of seconds since the UNIX epoch.`,
      );
    }
    if (opts.expiration < nowSeconds + LIMITS.minTtl) {
      throw new OpError(
        400,
        CODE.badExpiration,
        `Invalid expiration of ${opts.expiration}. Expiration times must be at least ${LIMITS.minTtl} seconds in the future.`,
      );
    }
  }
}

// --- clock ------------------------------------------------------------------

// Without --test-clock the binding's clock (real time) rules alone. With
// `serve.mjs --test-clock` the service binding SIM_CLOCK reaches the launcher,
// which keeps an offset that tests advance (POST /__sim/clock). Simulated time
// is real time + offset, and while the offset is non-zero this layer applies it
// (as kv-rest-sim does):
//   - expiration / expiration_ttl are checked against simulated time, and the
//     entry is stored with an absolute expiration in simulated time;
//   - an entry whose expiration <= simulated now is treated as gone: get
//     answers null, list leaves it out (the simulator itself drops it later,
//     when real time gets there).
// Miniflare's own fake timers are not used: switching them on lowers the KV
// simulator's value limit to 1 KiB (see kv-rest-sim's README).
async function syncClock(env) {
  if (!env.SIM_CLOCK) return { emulate: false, nowMs: Date.now(), offsetMs: 0 };
  const res = await env.SIM_CLOCK.fetch("http://sim-clock/now", { method: "POST" });
  if (!res.ok) throw new Error(`clock sync failed: ${await res.text()}`);
  const state = await res.json();
  return { emulate: state.offset_ms > 0, nowMs: state.now_ms, offsetMs: state.offset_ms };
}

function isExpired(clock, expiration) {
  return (
    clock.emulate &&
    expiration !== undefined &&
    expiration !== null &&
    expiration * 1000 <= clock.nowMs
  );
}

// With a simulated clock ahead of real time (options already checked against
// simulated time): store an absolute expiration in simulated time. The binding
// checks that against real time, which is behind, so it passes; for an offset
// under 2 s the TTL is lengthened by the rounded offset instead.
function bindingExpiry(options, clock) {
  if (!clock.emulate) return options;
  const nowSeconds = Math.floor(clock.nowMs / 1000);
  if (options.expirationTtl === undefined) return options;
  const { expirationTtl, ...rest } = options;
  if (clock.offsetMs >= 2000) return { ...rest, expiration: nowSeconds + expirationTtl };
  return { ...rest, expirationTtl: expirationTtl + Math.round(clock.offsetMs / 1000) };
}

// --- base64 -----------------------------------------------------------------

function decodeBase64(text) {
  let binary;
  try {
    binary = atob(text);
  } catch {
    return null;
  }
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function encodeBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  const CHUNK = 0x8000;
  for (let i = 0; i < bytes.length; i += CHUNK) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + CHUNK));
  }
  return btoa(binary);
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

// Reads the whole body, keeping at most maxBytes (the rest is read and dropped,
// so the client can finish sending and read the answer).
async function readBody(request, maxBytes) {
  if (request.body === null) return { bytes: new Uint8Array(0), length: 0, tooLarge: false };
  const chunks = [];
  let length = 0;
  const reader = request.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    length += value.byteLength;
    if (length <= maxBytes) chunks.push(value);
    else chunks.length = 0;
  }
  if (length > maxBytes) return { bytes: null, length, tooLarge: true };
  const bytes = new Uint8Array(length);
  let offset = 0;
  for (const c of chunks) {
    bytes.set(c, offset);
    offset += c.byteLength;
  }
  return { bytes, length, tooLarge: false };
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

// getWithMetadata() does not report the expiration; list() does. The key is
// the smallest name having itself as prefix (list is sorted by UTF-8 bytes), so
// when it exists it comes first on the first page: one list call finds it.
// limit 10 (not 1000): enough for that, without pulling up to 1,000 names and
// their metadata for a key that prefixes many others; 10 is also the REST API's
// minimum page, in case the production binding enforces one.
async function lookupExpiration(env, key) {
  const res = await kv(env.KV.list({ prefix: key, limit: 10 }));
  const entry = res.keys.find((k) => k.name === key);
  return entry?.expiration ?? null;
}

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
  if (bytes === null) throw new OpError(400, CODE.generic, "value is not valid base64");
  if (bytes.byteLength > LIMITS.valueBytes) {
    throw new OpError(
      413,
      CODE.generic,
      `Value length of ${bytes.byteLength} exceeds limit of ${LIMITS.valueBytes}.`,
    );
  }
  const options = parseExpiry(op);
  // Checked here too (not only by the binding) so the messages are always the
  // REST API's, whatever text the production binding throws.
  checkExpiry(options, Math.floor((clock.emulate ? clock.nowMs : Date.now()) / 1000));
  if (!optional(op.metadata)) {
    const n = byteLength(JSON.stringify(op.metadata));
    if (n > LIMITS.metadataBytes) {
      throw new OpError(
        413,
        CODE.badMetadata,
        `Metadata length of ${n} exceeds limit of ${LIMITS.metadataBytes}.`,
      );
    }
    options.metadata = op.metadata;
  }
  await kv(env.KV.put(op.key, bytes, bindingExpiry(options, clock)));
  return { ok: true };
}

async function opDelete(env, op) {
  validateKey(op.key);
  await kv(env.KV.delete(op.key));
  return { ok: true };
}

function checkCursor(env, cursor) {
  const invalid = () => new OpError(400, CODE.badCursor, "Invalid cursor");
  // Cloudflare's cursors are opaque printable ASCII; the binding judges them.
  if (!/^[\x21-\x7e]+$/.test(cursor)) throw invalid();
  if (env.SIM_CURSOR_FORMAT !== "miniflare") return;
  // Miniflare's cursors are base64 of the last listed name, and Miniflare
  // accepts any text as one: check the form here, as kv-rest-sim does.
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(cursor) || cursor.length % 4 !== 0) throw invalid();
  const bytes = decodeBase64(cursor);
  if (bytes === null) throw invalid();
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw invalid();
  }
}

async function opList(env, op, clock) {
  let limit = LIMITS.listMax;
  if (!optional(op.limit)) {
    limit = op.limit;
    if (!Number.isInteger(limit) || limit < LIMITS.listMin) {
      throw new OpError(
        400,
        CODE.badListLimit,
        `Invalid key_count_limit of ${op.limit}. Please specify an integer greater than ${LIMITS.listMin}.`,
      );
    }
    if (limit > LIMITS.listMax) {
      throw new OpError(
        400,
        CODE.badListLimit,
        `Invalid key_count_limit of ${op.limit}. Please specify an integer less than ${LIMITS.listMax}.`,
      );
    }
  }
  const options = { limit };
  const prefix = op.prefix ?? "";
  if (prefix !== "") {
    const n = byteLength(prefix);
    if (n > LIMITS.keyBytes) {
      throw new OpError(
        414,
        CODE.badKey,
        `UTF-8 encoded length of ${n} exceeds key length limit of ${LIMITS.keyBytes}.`,
      );
    }
    options.prefix = prefix;
  }
  const cursor = op.cursor ?? "";
  if (cursor !== "") {
    checkCursor(env, cursor);
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
  const res = await env.SIM_CLOCK.fetch("http://sim-clock/advance", {
    method: "POST",
    body: JSON.stringify({ advance }),
  });
  if (!res.ok) throw new Error(`clock advance failed: ${await res.text()}`);
  const state = await res.json();
  return { now: Math.floor(state.now_ms / 1000), offset: state.offset_ms / 1000 };
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
