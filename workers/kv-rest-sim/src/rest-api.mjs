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
//
// The KV rules themselves (limits, error codes and the binding-error mapping,
// key / expiry / metadata / list checks, the test clock, the expiration
// lookup, body reading, base64) live in ../../shared/kv-rules.mjs, shared with
// the gateway Worker (../../kv-gateway) so both answer the same input the same.

import {
  CODE,
  KVError,
  LIMITS as KV_LIMITS,
  advanceClock,
  bindingExpiry,
  decodeBase64,
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

const BASE = "/client/v4";
const NS_ROUTE =
  /^\/client\/v4\/accounts\/([^/]+)\/storage\/kv\/namespaces\/([^/]+)\/(.*)$/;

// KV's own limits, plus the REST API's request limits.
const LIMITS = {
  ...KV_LIMITS,
  bulkWriteItems: 10000,
  bulkWriteBytes: 100 * 1000 * 1000,
  bulkDeleteItems: 10000,
  bulkGetKeys: 100,
  bulkGetBytes: 25 * 1024 * 1024,
};

const WRITE_CONCURRENCY = 32;

const encoder = new TextEncoder();

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
  if (!ok) throw new KVError(401, CODE.auth, "Authentication error");
}

// --- keys -----------------------------------------------------------------

function decodeKeySegment(raw) {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new KVError(400, CODE.badKey, "Could not URL-decode key name");
  }
}

// --- test clock (serve.mjs --test-clock; see ../../shared/kv-rules.mjs) ---------

async function handleClock(request, env) {
  if (!env.SIM_CLOCK) {
    throw new KVError(400, CODE.noRoute, "No route for that URI");
  }
  if (request.method !== "POST") {
    throw new KVError(405, CODE.badMethod, `Method ${request.method} not available for that URI.`);
  }
  let body;
  try {
    body = await request.json();
  } catch {
    throw new KVError(400, CODE.generic, 'Body must be JSON: {"advance": seconds}');
  }
  const advance = body?.advance ?? 0;
  if (typeof advance !== "number" || !Number.isFinite(advance) || advance < 0) {
    throw new KVError(400, CODE.generic, '"advance" must be a number of seconds >= 0');
  }
  return envelope(200, await advanceClock(env, advance));
}

function textDecode(buffer) {
  return new TextDecoder("utf-8").decode(buffer);
}

// --- handlers -------------------------------------------------------------

async function getValue(env, key, clock) {
  validateKey(key);
  const { value } = await kv(env.KV.getWithMetadata(key, { type: "arrayBuffer" }));
  if (value === null) {
    throw new KVError(404, CODE.keyNotFound, "get: 'key not found'");
  }
  const headers = { "content-type": "application/octet-stream" };
  const expiration = await lookupExpiration(env, key);
  if (isExpired(clock, expiration)) {
    throw new KVError(404, CODE.keyNotFound, "get: 'key not found'");
  }
  if (expiration !== null) headers.expiration = String(expiration);
  return new Response(value, { status: 200, headers });
}

async function getMetadata(env, key, clock) {
  validateKey(key);
  const { value, metadata } = await kv(
    env.KV.getWithMetadata(key, { type: "stream" }),
  );
  if (value === null) {
    throw new KVError(404, CODE.keyNotFound, "get: 'key not found'");
  }
  await value.cancel().catch(() => {});
  if (clock.emulate && isExpired(clock, await lookupExpiration(env, key))) {
    throw new KVError(404, CODE.keyNotFound, "get: 'key not found'");
  }
  return envelope(200, metadata ?? null);
}

async function readMultipart(request) {
  let form;
  try {
    form = await request.formData();
  } catch (e) {
    throw new KVError(400, CODE.generic, `Could not parse multipart body: ${e.message}`);
  }
  const value = form.get("value");
  if (value === null) {
    throw new KVError(400, CODE.generic, "Missing value field");
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
      throw new KVError(400, CODE.badMetadata, "Invalid metadata JSON");
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
      validateMetadata(part.metadata);
      options.metadata = part.metadata;
    }
  } else {
    const body = await readBody(request, LIMITS.valueBytes);
    validateValueLength(body.length);
    bytes = body.bytes;
  }
  validateValueLength(bytes.byteLength);
  await kv(env.KV.put(key, bytes, bindingExpiry(options, clock)));
  return envelope(200, null);
}

async function deleteValue(env, key) {
  validateKey(key);
  await kv(env.KV.delete(key));
  return envelope(200, null);
}

async function listKeys(env, url, clock) {
  const params = url.searchParams;
  const prefix = params.get("prefix") ?? "";
  const cursor = params.get("cursor") ?? "";
  const options = { limit: parseListLimit(params.get("limit")) };
  if (prefix !== "") {
    validatePrefix(prefix);
    options.prefix = prefix;
  }
  if (cursor !== "") {
    // Cursors handed out here are Miniflare's (base64 of the last listed name).
    validateCursor(cursor, { miniflareFormat: true });
    options.cursor = cursor;
  }
  const res = await kv(env.KV.list(options));
  // With a simulated clock a page may come out short, even empty, while the
  // cursor says more keys remain: Cloudflare's pages can do the same.
  const live = res.keys.filter((k) => !isExpired(clock, k.expiration));
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

async function readJsonBody(request, maxBytes) {
  const body = await readBody(request, maxBytes);
  if (body.tooLarge) {
    throw new KVError(413, CODE.generic, `Request body of ${body.length} bytes exceeds limit of ${maxBytes} bytes.`);
  }
  try {
    return JSON.parse(textDecode(body.bytes));
  } catch {
    throw new KVError(400, CODE.generic, "Could not parse request body: invalid JSON");
  }
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
    throw new KVError(400, CODE.generic, "Request body must be a JSON array of key-value pairs");
  }
  if (body.length > LIMITS.bulkWriteItems) {
    throw new KVError(
      413,
      CODE.generic,
      `Too many key-value pairs: ${body.length} exceeds limit of ${LIMITS.bulkWriteItems}.`,
    );
  }
  // Validate everything first: one bad pair rejects the request, nothing is written.
  const writes = body.map((item, index) => {
    if (item === null || typeof item !== "object" || Array.isArray(item)) {
      throw new KVError(400, CODE.generic, `Item ${index} must be an object`);
    }
    validateKey(item.key);
    if (typeof item.value !== "string") {
      throw new KVError(400, CODE.generic, `Value for key "${item.key}" must be a string`);
    }
    if (item.base64 !== undefined && typeof item.base64 !== "boolean") {
      throw new KVError(400, CODE.generic, `base64 for key "${item.key}" must be a boolean`);
    }
    let bytes;
    if (item.base64) {
      bytes = decodeBase64(item.value);
      if (bytes === null) {
        throw new KVError(400, CODE.generic, `Value for key "${item.key}" is not valid base64`);
      }
    } else {
      bytes = encoder.encode(item.value);
    }
    validateValueLength(bytes.byteLength);
    // Checked against the request's clock here, before anything is written.
    const options = bindingExpiry(parseExpiry(item.expiration, item.expiration_ttl), clock);
    if (item.metadata !== undefined) {
      validateMetadata(item.metadata);
      options.metadata = item.metadata;
    }
    return { key: item.key, bytes, options };
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
    throw new KVError(400, CODE.generic, "Request body must be a JSON array of key names");
  }
  if (body.length > LIMITS.bulkDeleteItems) {
    throw new KVError(
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
    throw new KVError(400, CODE.generic, 'Request body must be {"keys": [...]}');
  }
  const keys = body.keys;
  const type = body.type ?? "text";
  if (type !== "text" && type !== "json") {
    throw new KVError(400, CODE.generic, `"${type}" is not a valid type. Use "json" or "text"`);
  }
  if (keys.length > LIMITS.bulkGetKeys) {
    throw new KVError(400, CODE.generic, `You can request a maximum of ${LIMITS.bulkGetKeys} keys`);
  }
  if (keys.length < 1) {
    throw new KVError(400, CODE.generic, "You must request a minimum of 1 key");
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
      withMetadata || clock.emulate ? await lookupExpiration(env, key) : null;
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
        throw new KVError(
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
    if (expiration !== null) entry.expiration = expiration;
    entries[i] = entry;
  });
  if (total > LIMITS.bulkGetBytes) {
    throw new KVError(
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
  return new KVError(405, CODE.badMethod, `Method ${method} not available for that URI.`);
}

async function route(request, env) {
  const url = new URL(request.url);
  const path = url.pathname;

  if (path === "/__sim/clock") {
    await authenticate(request, env);
    return handleClock(request, env);
  }
  if (path !== BASE && !path.startsWith(`${BASE}/`)) {
    throw new KVError(400, CODE.noRoute, "No route for that URI");
  }
  await authenticate(request, env);

  const m = NS_ROUTE.exec(path);
  if (!m) throw new KVError(400, CODE.noRoute, "No route for that URI");
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
      throw new KVError(400, CODE.noRoute, "No route for that URI");
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
