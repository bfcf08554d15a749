// Cloudflare KV REST API (the /client/v4 ... /storage/kv/namespaces/{id}/ paths)
// served on top of a Workers KV binding `KV`, for running inside Miniflare.
//
// Every JSON answer is Cloudflare's envelope:
//   {"success": bool, "errors": [{"code", "message"}], "messages": [], "result": ...}
// The value read (GET values/{key}) answers raw bytes instead.
//
// Limits and their messages come from the KV binding (Miniflare's KV simulator,
// which copies Cloudflare's texts); this file adds what the REST layer checks
// on its own (list page size, cursor, bulk sizes, request parsing) and maps
// every failure onto a REST status and error code.

const BASE = "/client/v4";
const NS_ROUTE =
  /^\/client\/v4\/accounts\/([^/]+)\/storage\/kv\/namespaces\/([^/]+)\/(.*)$/;

const LIMITS = {
  keyBytes: 512,
  valueBytes: 25 * 1024 * 1024,
  metadataBytes: 1024,
  minTtl: 60,
  listMin: 10,
  listMax: 1000,
  bulkWriteItems: 10000,
  bulkWriteBytes: 100 * 1000 * 1000,
  bulkDeleteItems: 10000,
  bulkGetKeys: 100,
  bulkGetBytes: 25 * 1024 * 1024,
};

// Error codes. 10000, 10009, 10033, 10034, 10041, 10042, 10047, 7000, 7001
// are Cloudflare's; where Cloudflare's code for a case is not documented the
// generic 10001 is used (as Miniflare's own local explorer API does).
const CODE = {
  auth: 10000,
  generic: 10001,
  keyNotFound: 10009,
  badExpiration: 10033,
  badExpirationTtl: 10034,
  badCursor: 10041,
  badKey: 10042,
  badMetadata: 10047,
  badListLimit: 10026,
  noRoute: 7000,
  badMethod: 7001,
};

const WRITE_CONCURRENCY = 32;

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const encoder = new TextEncoder();
const byteLength = (s) => encoder.encode(s).byteLength;

function envelope(status, result, extra = {}) {
  return new Response(
    JSON.stringify({ success: true, errors: [], messages: [], result, ...extra }),
    { status, headers: { "content-type": "application/json" } },
  );
}

function errorResponse(status, code, message) {
  return new Response(
    JSON.stringify({
      success: false,
      errors: [{ code, message }],
      messages: [],
      result: null,
    }),
    { status, headers: { "content-type": "application/json" } },
  );
}

// --- authentication -------------------------------------------------------

async function tokenMatches(provided, expected) {
  if (typeof expected !== "string" || expected === "") return false;
  // Hash both sides so the constant-time comparison always sees equal lengths.
  const [a, b] = await Promise.all([
    crypto.subtle.digest("SHA-256", encoder.encode(provided)),
    crypto.subtle.digest("SHA-256", encoder.encode(expected)),
  ]);
  return crypto.subtle.timingSafeEqual(a, b);
}

async function authenticate(request, env) {
  const header = request.headers.get("authorization") ?? "";
  const match = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
  const ok = await tokenMatches(match ? match[1] : "", env.API_TOKEN);
  if (!ok) throw new ApiError(401, CODE.auth, "Authentication error");
}

// --- keys -----------------------------------------------------------------

function decodeKeySegment(raw) {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new ApiError(400, CODE.badKey, "Could not URL-decode key name");
  }
}

function validateKey(key) {
  if (typeof key !== "string") {
    throw new ApiError(400, CODE.badKey, "Key names must be strings");
  }
  if (key === "") {
    throw new ApiError(400, CODE.badKey, "Key names must not be empty");
  }
  if (key === "." || key === "..") {
    throw new ApiError(
      400,
      CODE.badKey,
      `Illegal key name "${key}". Please use a different name.`,
    );
  }
  const n = byteLength(key);
  if (n > LIMITS.keyBytes) {
    throw new ApiError(
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
  if (/key name|Key name/.test(message)) return CODE.badKey;
  if (status === 404) return CODE.keyNotFound;
  return CODE.generic;
}

function fromBindingError(e) {
  if (e instanceof ApiError) return e;
  const message = String(e?.message ?? e);
  // "KV PUT failed: 413 Value length of 26214401 exceeds limit of 26214400."
  const m = /^KV [A-Z_]+ failed: (\d{3}) ([\s\S]*)$/.exec(message);
  if (m) {
    const status = Number(m[1]);
    return new ApiError(status, codeForMessage(status, m[2]), m[2]);
  }
  if (e instanceof TypeError) {
    // Key checks the binding does itself (empty, "." and "..").
    if (/cannot be empty/.test(message)) {
      return new ApiError(400, CODE.badKey, "Key names must not be empty");
    }
    const dots = /^"(\.\.?)" is not allowed as a key name\.$/.exec(message);
    if (dots) {
      return new ApiError(
        400,
        CODE.badKey,
        `Illegal key name "${dots[1]}". Please use a different name.`,
      );
    }
    return new ApiError(400, CODE.generic, message);
  }
  return new ApiError(500, CODE.generic, `Internal error: ${message}`);
}

async function kv(promise) {
  try {
    return await promise;
  } catch (e) {
    throw fromBindingError(e);
  }
}

// --- expiry parameters ----------------------------------------------------

// Same parsing as Cloudflare / Miniflare (parseInt of the text); an
// unparsable value gets the service's message for it.
function parseExpiry(rawExpiration, rawTtl) {
  const has = (v) => v !== null && v !== undefined && v !== "";
  if (has(rawTtl)) {
    const ttl = parseInt(String(rawTtl), 10);
    if (Number.isNaN(ttl) || ttl <= 0) {
      throw new ApiError(
        400,
        CODE.badExpirationTtl,
        `Invalid expiration_ttl of ${rawTtl}. Please specify integer greater than 0.`,
      );
    }
    return { expirationTtl: ttl };
  }
  if (has(rawExpiration)) {
    const exp = parseInt(String(rawExpiration), 10);
    if (Number.isNaN(exp) || exp <= 0) {
      throw new ApiError(
        400,
        CODE.badExpiration,
        `Invalid expiration of ${rawExpiration}. Please specify integer greater than the current number of seconds since the UNIX epoch.`,
      );
    }
    return { expiration: exp };
  }
  return {};
}

// The checks the KV service makes against its clock (used where a request
// must be validated as a whole before anything is written).
function checkExpiry(opts, nowSeconds) {
  if (opts.expirationTtl !== undefined) {
    if (opts.expirationTtl < LIMITS.minTtl) {
      throw new ApiError(
        400,
        CODE.badExpirationTtl,
        `Invalid expiration_ttl of ${opts.expirationTtl}. Expiration TTL must be at least ${LIMITS.minTtl}.`,
      );
    }
  } else if (opts.expiration !== undefined) {
    if (opts.expiration <= nowSeconds) {
      throw new ApiError(
        400,
        CODE.badExpiration,
        `Invalid expiration of ${opts.expiration}. Please specify integer greater than the current number of seconds since the UNIX epoch.`,
      );
    }
    if (opts.expiration < nowSeconds + LIMITS.minTtl) {
      throw new ApiError(
        400,
        CODE.badExpiration,
        `Invalid expiration of ${opts.expiration}. Expiration times must be at least ${LIMITS.minTtl} seconds in the future.`,
      );
    }
  }
}

function metadataTooLarge(length) {
  return new ApiError(
    413,
    CODE.badMetadata,
    `Metadata length of ${length} exceeds limit of ${LIMITS.metadataBytes}.`,
  );
}

function valueTooLarge(length) {
  return new ApiError(
    413,
    CODE.generic,
    `Value length of ${length} exceeds limit of ${LIMITS.valueBytes}.`,
  );
}

// --- clock ----------------------------------------------------------------

// Without --test-clock the KV simulator's own clock (real time) rules alone.
// With `serve.mjs --test-clock` the binding SIM_CLOCK reaches the launcher,
// which keeps an offset that tests advance (POST /__sim/clock). Simulated
// time is real time + offset, and while the offset is non-zero this layer
// applies it:
//   - expiration / expiration_ttl are checked against simulated time, and the
//     entry is stored with an absolute expiration in simulated time;
//   - an entry whose expiration <= simulated now is treated as gone: reads
//     answer 404 / null, lists leave it out (the simulator itself drops it
//     later, when real time gets there).
// Miniflare's own fake timers are not used: switching them on marks the KV
// object "being tested", which lowers its value limit to 1 KiB (see README).
const REAL_CLOCK = { emulate: false, nowMs: 0, offsetMs: 0 };

async function syncClock(env) {
  if (!env.SIM_CLOCK) return { ...REAL_CLOCK, nowMs: Date.now() };
  const res = await env.SIM_CLOCK.fetch("http://sim-clock/now", { method: "POST" });
  if (!res.ok) {
    throw new ApiError(500, CODE.generic, `clock sync failed: ${await res.text()}`);
  }
  const state = await res.json();
  return {
    emulate: state.offset_ms > 0,
    nowMs: state.now_ms,
    offsetMs: state.offset_ms,
  };
}

function isExpired(clock, expiration) {
  return clock.emulate && expiration !== undefined && expiration * 1000 <= clock.nowMs;
}

// Turns parsed expiry options into what the binding gets. With a simulated
// clock ahead of real time: validate against simulated time here and store an
// absolute expiration in simulated time (now + ttl, as the service computes
// it). The binding checks that against real time, which is behind, so it
// passes; only for an offset under 2 s (where a second boundary could fall
// between the two checks) is the TTL lengthened by the rounded offset instead.
function bindingExpiry(options, clock) {
  if (!clock.emulate) return options;
  const nowSeconds = Math.floor(clock.nowMs / 1000);
  checkExpiry(options, nowSeconds);
  if (options.expirationTtl === undefined) return options;
  const { expirationTtl, ...rest } = options;
  if (clock.offsetMs >= 2000) return { ...rest, expiration: nowSeconds + expirationTtl };
  return { ...rest, expirationTtl: expirationTtl + Math.round(clock.offsetMs / 1000) };
}

async function handleClock(request, env) {
  if (!env.SIM_CLOCK) {
    throw new ApiError(400, CODE.noRoute, "No route for that URI");
  }
  if (request.method !== "POST") {
    throw new ApiError(405, CODE.badMethod, `Method ${request.method} not available for that URI.`);
  }
  let body;
  try {
    body = await request.json();
  } catch {
    throw new ApiError(400, CODE.generic, 'Body must be JSON: {"advance": seconds}');
  }
  const advance = body?.advance ?? 0;
  if (typeof advance !== "number" || !Number.isFinite(advance) || advance < 0) {
    throw new ApiError(400, CODE.generic, '"advance" must be a number of seconds >= 0');
  }
  const res = await env.SIM_CLOCK.fetch("http://sim-clock/advance", {
    method: "POST",
    body: JSON.stringify({ advance }),
  });
  if (!res.ok) {
    throw new ApiError(500, CODE.generic, `clock advance failed: ${await res.text()}`);
  }
  const state = await res.json();
  return envelope(200, {
    now: Math.floor(state.now_ms / 1000),
    offset: state.offset_ms / 1000,
  });
}

// --- helpers for reads ------------------------------------------------------

// getWithMetadata() does not report the expiration; list() does. The key is
// the smallest name carrying itself as prefix (list is sorted by UTF-8 bytes),
// so the first listed name is the key whenever it exists.
async function lookupExpiration(env, key) {
  let cursor;
  for (let page = 0; page < 1000; page++) {
    const res = await kv(env.KV.list({ prefix: key, limit: 1, cursor }));
    for (const k of res.keys) {
      if (k.name === key) return k.expiration;
      return undefined; // sorted: a longer name first means the key is absent
    }
    if (res.list_complete) return undefined;
    cursor = res.cursor;
  }
  return undefined;
}

function textDecode(buffer) {
  return new TextDecoder("utf-8").decode(buffer);
}

// --- handlers -------------------------------------------------------------

async function getValue(env, key, clock) {
  validateKey(key);
  const { value } = await kv(env.KV.getWithMetadata(key, { type: "arrayBuffer" }));
  if (value === null) {
    throw new ApiError(404, CODE.keyNotFound, "get: 'key not found'");
  }
  const headers = { "content-type": "application/octet-stream" };
  const expiration = await lookupExpiration(env, key);
  if (isExpired(clock, expiration)) {
    throw new ApiError(404, CODE.keyNotFound, "get: 'key not found'");
  }
  if (expiration !== undefined) headers.expiration = String(expiration);
  return new Response(value, { status: 200, headers });
}

async function getMetadata(env, key, clock) {
  validateKey(key);
  const { value, metadata } = await kv(
    env.KV.getWithMetadata(key, { type: "stream" }),
  );
  if (value === null) {
    throw new ApiError(404, CODE.keyNotFound, "get: 'key not found'");
  }
  await value.cancel().catch(() => {});
  if (clock.emulate && isExpired(clock, await lookupExpiration(env, key))) {
    throw new ApiError(404, CODE.keyNotFound, "get: 'key not found'");
  }
  return envelope(200, metadata ?? null);
}

async function readMultipart(request) {
  let form;
  try {
    form = await request.formData();
  } catch (e) {
    throw new ApiError(400, CODE.generic, `Could not parse multipart body: ${e.message}`);
  }
  const value = form.get("value");
  if (value === null) {
    throw new ApiError(400, CODE.generic, "Missing value field");
  }
  const bytes =
    typeof value === "string" ? encoder.encode(value) : new Uint8Array(await value.arrayBuffer());
  let metadata;
  const rawMetadata = form.get("metadata");
  if (rawMetadata !== null) {
    const text = typeof rawMetadata === "string" ? rawMetadata : await rawMetadata.text();
    try {
      metadata = JSON.parse(text);
    } catch {
      throw new ApiError(400, CODE.badMetadata, "Invalid metadata JSON");
    }
  }
  return { bytes, metadata };
}

async function putValue(request, env, key, url, clock) {
  validateKey(key);
  const options = parseExpiry(
    url.searchParams.get("expiration"),
    url.searchParams.get("expiration_ttl"),
  );
  const contentType = (request.headers.get("content-type") ?? "").toLowerCase();
  let bytes;
  if (contentType.startsWith("multipart/form-data")) {
    const part = await readMultipart(request);
    bytes = part.bytes;
    if (part.metadata !== undefined) {
      const n = byteLength(JSON.stringify(part.metadata));
      if (n > LIMITS.metadataBytes) throw metadataTooLarge(n);
      options.metadata = part.metadata;
    }
  } else {
    const body = await readBody(request, LIMITS.valueBytes);
    if (body.tooLarge) throw valueTooLarge(body.length);
    bytes = body.bytes;
  }
  if (bytes.byteLength > LIMITS.valueBytes) throw valueTooLarge(bytes.byteLength);
  await kv(env.KV.put(key, bytes, bindingExpiry(options, clock)));
  return envelope(200, null);
}

async function deleteValue(env, key) {
  validateKey(key);
  await kv(env.KV.delete(key));
  return envelope(200, null);
}

function decodeCursor(cursor) {
  // Cursors handed out are base64 of the last listed name (Miniflare's form).
  const invalid = () => new ApiError(400, CODE.badCursor, "Invalid cursor");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(cursor) || cursor.length % 4 !== 0) throw invalid();
  let binary;
  try {
    binary = atob(cursor);
  } catch {
    throw invalid();
  }
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw invalid();
  }
}

async function listKeys(env, url, clock) {
  const params = url.searchParams;
  const prefix = params.get("prefix") ?? "";
  const cursor = params.get("cursor") ?? "";
  const rawLimit = params.get("limit");
  let limit = LIMITS.listMax;
  if (rawLimit !== null && rawLimit !== "") {
    limit = Number(rawLimit);
    if (!Number.isInteger(limit) || limit < LIMITS.listMin) {
      throw new ApiError(
        400,
        CODE.badListLimit,
        `Invalid key_count_limit of ${rawLimit}. Please specify an integer greater than ${LIMITS.listMin}.`,
      );
    }
    if (limit > LIMITS.listMax) {
      throw new ApiError(
        400,
        CODE.badListLimit,
        `Invalid key_count_limit of ${rawLimit}. Please specify an integer less than ${LIMITS.listMax}.`,
      );
    }
  }
  const options = { limit };
  if (prefix !== "") {
    const n = byteLength(prefix);
    if (n > LIMITS.keyBytes) {
      throw new ApiError(
        414,
        CODE.badKey,
        `UTF-8 encoded length of ${n} exceeds key length limit of ${LIMITS.keyBytes}.`,
      );
    }
    options.prefix = prefix;
  }
  if (cursor !== "") {
    decodeCursor(cursor);
    options.cursor = cursor;
  }
  const res = await kv(env.KV.list(options));
  // With a simulated clock a page may come out short, even empty, while the
  // cursor says more keys remain: Cloudflare's pages can do the same.
  const live = res.keys.filter((k) => !isExpired(clock, k.expiration ?? undefined));
  const result = live.map((k) => {
    const item = { name: k.name };
    if (k.expiration !== undefined && k.expiration !== null) item.expiration = k.expiration;
    if (k.metadata !== undefined && k.metadata !== null) item.metadata = k.metadata;
    return item;
  });
  return envelope(200, result, {
    result_info: {
      count: result.length,
      cursor: res.list_complete ? "" : res.cursor,
    },
  });
}

// Reads the whole body, keeping at most maxBytes: past that the rest is read
// and dropped (so the client can finish sending and read the error answer).
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

async function readJsonBody(request, maxBytes) {
  const body = await readBody(request, maxBytes);
  if (body.tooLarge) {
    throw new ApiError(413, CODE.generic, `Request body of ${body.length} bytes exceeds limit of ${maxBytes} bytes.`);
  }
  try {
    return JSON.parse(textDecode(body.bytes));
  } catch {
    throw new ApiError(400, CODE.generic, "Could not parse request body: invalid JSON");
  }
}

function decodeBase64(text) {
  let binary;
  try {
    binary = atob(text);
  } catch {
    return null;
  }
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

// Runs `fn` over `items` with at most `limit` calls in flight.
async function pool(items, limit, fn) {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  });
  await Promise.all(workers);
}

async function bulkWrite(request, env, clock) {
  const body = await readJsonBody(request, LIMITS.bulkWriteBytes);
  if (!Array.isArray(body)) {
    throw new ApiError(400, CODE.generic, "Request body must be a JSON array of key-value pairs");
  }
  if (body.length > LIMITS.bulkWriteItems) {
    throw new ApiError(
      413,
      CODE.generic,
      `Too many key-value pairs: ${body.length} exceeds limit of ${LIMITS.bulkWriteItems}.`,
    );
  }
  const nowSeconds = Math.floor(clock.nowMs / 1000);
  // Validate everything first: one bad pair rejects the request, nothing is written.
  const writes = body.map((item, index) => {
    if (item === null || typeof item !== "object" || Array.isArray(item)) {
      throw new ApiError(400, CODE.generic, `Item ${index} must be an object`);
    }
    validateKey(item.key);
    if (typeof item.value !== "string") {
      throw new ApiError(400, CODE.generic, `Value for key "${item.key}" must be a string`);
    }
    if (item.base64 !== undefined && typeof item.base64 !== "boolean") {
      throw new ApiError(400, CODE.generic, `base64 for key "${item.key}" must be a boolean`);
    }
    let bytes;
    if (item.base64) {
      bytes = decodeBase64(item.value);
      if (bytes === null) {
        throw new ApiError(400, CODE.generic, `Value for key "${item.key}" is not valid base64`);
      }
    } else {
      bytes = encoder.encode(item.value);
    }
    if (bytes.byteLength > LIMITS.valueBytes) throw valueTooLarge(bytes.byteLength);
    const options = parseExpiry(item.expiration, item.expiration_ttl);
    checkExpiry(options, nowSeconds);
    if (item.metadata !== undefined) {
      const n = byteLength(JSON.stringify(item.metadata));
      if (n > LIMITS.metadataBytes) throw metadataTooLarge(n);
      options.metadata = item.metadata;
    }
    return { key: item.key, bytes, options: bindingExpiry(options, clock) };
  });
  // Last pair wins for a key given twice; writes run concurrently.
  const lastIndex = new Map();
  writes.forEach((w, i) => lastIndex.set(w.key, i));
  const unique = writes.filter((w, i) => lastIndex.get(w.key) === i);
  const failed = new Set();
  await pool(unique, WRITE_CONCURRENCY, async (w) => {
    try {
      await env.KV.put(w.key, w.bytes, w.options);
    } catch {
      failed.add(w.key);
    }
  });
  const successful = writes.filter((w) => !failed.has(w.key)).length;
  return envelope(200, {
    successful_key_count: successful,
    unsuccessful_keys: [...failed],
  });
}

async function bulkDelete(request, env) {
  const body = await readJsonBody(request, LIMITS.bulkWriteBytes);
  if (!Array.isArray(body)) {
    throw new ApiError(400, CODE.generic, "Request body must be a JSON array of key names");
  }
  if (body.length > LIMITS.bulkDeleteItems) {
    throw new ApiError(
      413,
      CODE.generic,
      `Too many keys: ${body.length} exceeds limit of ${LIMITS.bulkDeleteItems}.`,
    );
  }
  body.forEach((key) => validateKey(key));
  const unique = [...new Set(body)];
  const failed = new Set();
  await pool(unique, WRITE_CONCURRENCY, async (key) => {
    try {
      await env.KV.delete(key);
    } catch {
      failed.add(key);
    }
  });
  return envelope(200, {
    successful_key_count: body.filter((k) => !failed.has(k)).length,
    unsuccessful_keys: [...failed],
  });
}

async function bulkGet(request, env, clock) {
  const body = await readJsonBody(request, LIMITS.bulkWriteBytes);
  if (body === null || typeof body !== "object" || !Array.isArray(body.keys)) {
    throw new ApiError(400, CODE.generic, 'Request body must be {"keys": [...]}');
  }
  const keys = body.keys;
  const type = body.type ?? "text";
  if (type !== "text" && type !== "json") {
    throw new ApiError(400, CODE.generic, `"${type}" is not a valid type. Use "json" or "text"`);
  }
  if (keys.length > LIMITS.bulkGetKeys) {
    throw new ApiError(400, CODE.generic, `You can request a maximum of ${LIMITS.bulkGetKeys} keys`);
  }
  if (keys.length < 1) {
    throw new ApiError(400, CODE.generic, "You must request a minimum of 1 key");
  }
  keys.forEach((key) => validateKey(key));
  const withMetadata = body.withMetadata === true;
  const entries = new Array(keys.length);
  let total = 0;
  await pool(keys, WRITE_CONCURRENCY, async (key, i) => {
    const { value, metadata } = await kv(
      env.KV.getWithMetadata(key, { type: "arrayBuffer" }),
    );
    if (value === null) {
      entries[i] = null;
      return;
    }
    const expiration =
      withMetadata || clock.emulate ? await lookupExpiration(env, key) : undefined;
    if (isExpired(clock, expiration)) {
      entries[i] = null;
      return;
    }
    total += value.byteLength;
    const text = textDecode(value);
    let decoded = text;
    if (type === "json") {
      try {
        decoded = JSON.parse(text);
      } catch {
        throw new ApiError(
          400,
          CODE.generic,
          "At least one of the requested keys corresponds to a non-json value",
        );
      }
    }
    if (!withMetadata) {
      entries[i] = decoded;
      return;
    }
    const entry = { value: decoded, metadata: metadata ?? null };
    if (expiration !== undefined) entry.expiration = expiration;
    entries[i] = entry;
  });
  if (total > LIMITS.bulkGetBytes) {
    throw new ApiError(
      413,
      CODE.generic,
      `Total size of request exceeds the limit of ${LIMITS.bulkGetBytes / 1024 / 1024}MB`,
    );
  }
  const values = {};
  keys.forEach((key, i) => {
    values[key] = entries[i];
  });
  return envelope(200, { values });
}

// --- routing --------------------------------------------------------------

function methodNotAllowed(method) {
  return new ApiError(405, CODE.badMethod, `Method ${method} not available for that URI.`);
}

async function route(request, env) {
  const url = new URL(request.url);
  const path = url.pathname;

  if (path === "/__sim/clock") {
    await authenticate(request, env);
    return handleClock(request, env);
  }
  if (path !== BASE && !path.startsWith(`${BASE}/`)) {
    throw new ApiError(400, CODE.noRoute, "No route for that URI");
  }
  await authenticate(request, env);

  const m = NS_ROUTE.exec(path);
  if (!m) throw new ApiError(400, CODE.noRoute, "No route for that URI");
  const rest = m[3];
  const method = request.method;

  const keyRoute = /^(values|metadata)\/(.*)$/s.exec(rest);
  if (keyRoute) {
    const key = decodeKeySegment(keyRoute[2]);
    if (keyRoute[1] === "values") {
      if (method === "GET") return getValue(env, key, await syncClock(env));
      if (method === "PUT") return putValue(request, env, key, url, await syncClock(env));
      if (method === "DELETE") return deleteValue(env, key);
      throw methodNotAllowed(method);
    }
    if (method === "GET") return getMetadata(env, key, await syncClock(env));
    throw methodNotAllowed(method);
  }
  switch (rest) {
    case "keys":
      if (method !== "GET") throw methodNotAllowed(method);
      return listKeys(env, url, await syncClock(env));
    case "bulk":
      if (method === "PUT") return bulkWrite(request, env, await syncClock(env));
      if (method === "DELETE") return bulkDelete(request, env);
      throw methodNotAllowed(method);
    case "bulk/delete":
      if (method !== "POST") throw methodNotAllowed(method);
      return bulkDelete(request, env);
    case "bulk/get":
      if (method !== "POST") throw methodNotAllowed(method);
      return bulkGet(request, env, await syncClock(env));
    default:
      throw new ApiError(400, CODE.noRoute, "No route for that URI");
  }
}

export default {
  async fetch(request, env) {
    try {
      return await route(request, env);
    } catch (e) {
      const err = fromBindingError(e);
      // Read what is left of the body, so the client is not cut off mid-upload.
      if (request.body !== null && !request.bodyUsed) {
        await request.body.pipeTo(new WritableStream()).catch(() => {});
      }
      return errorResponse(err.status, err.code, err.message);
    }
  },
};
