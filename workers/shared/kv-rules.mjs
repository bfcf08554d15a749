// Workers KV's rules, shared by brainbot's two Workers:
//   - ../kv-gateway/src/gateway.mjs   (production: signed batches of KV ops)
//   - ../kv-rest-sim/src/rest-api.mjs (test-only: the KV REST API in Miniflare)
//
// Why one module: both Workers must answer an invalid input exactly as
// Cloudflare's KV REST API does (same HTTP status, KV error code and message),
// and both run the same test clock. They used to carry a copy each of the
// helpers below, and the copies drifted (different error-code mappings, two
// expiration-lookup algorithms, a null guard in one only). Here each rule
// exists once; tests/workers/test_rules.py sends the same invalid inputs to
// both Workers and checks the answers are equal.
//
// Both Workers import this file with a relative import. Miniflare loads it as
// a second ES module (serve.mjs sets modulesRoot to workers/); for deploy,
// wrangler (esbuild) inlines it into the one script it uploads. So it must stay
// plain Workers JavaScript: no npm imports, no Node APIs, no state that
// matters across requests.
//
// Where the copies differed, the behaviour kept is noted at the function
// ("drift:").

const encoder = new TextEncoder();

/** UTF-8 length of a string, the unit of every KV size limit. */
export const byteLength = (s) => encoder.encode(s).byteLength;

// --- limits and error codes -------------------------------------------------

/** Workers KV's limits (the same through the REST API and the binding). */
export const LIMITS = Object.freeze({
  keyBytes: 512,
  valueBytes: 25 * 1024 * 1024,
  metadataBytes: 1024,
  minTtl: 60,
  listMin: 10,
  listMax: 1000,
});

// Error codes. 10000, 10009, 10033, 10034, 10041, 10042, 10047, 7000, 7001
// are Cloudflare's; where Cloudflare's code for a case is not documented the
// generic 10001 is used (as Miniflare's own local explorer API does).
export const CODE = Object.freeze({
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
});

/**
 * A KV failure as the REST API reports it: HTTP status, KV error code,
 * message. The REST Worker answers it as an error envelope, the gateway as
 * an op result {"ok": false, status, code, message}.
 */
export class KVError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "KVError";
    this.status = status;
    this.code = code;
  }
}

// --- mapping what the binding throws ------------------------------------------

// drift: the REST Worker mapped 404 to 10009 but not "cursor" messages; the
// gateway mapped "cursor" messages to 10041 but 404 to 10001. Both are right
// (a 404 from KV is "key not found"; the production binding's complaint about
// a cursor is an invalid cursor), so both are kept.
export function codeForMessage(status, message) {
  if (/key length limit/.test(message)) return CODE.badKey;
  if (/^Invalid expiration_ttl /.test(message)) return CODE.badExpirationTtl;
  if (/^Invalid expiration /.test(message)) return CODE.badExpiration;
  if (/^Metadata length /.test(message)) return CODE.badMetadata;
  if (/^Invalid key_count_limit /.test(message)) return CODE.badListLimit;
  if (/cursor/i.test(message)) return CODE.badCursor;
  if (/key name|Key name/.test(message)) return CODE.badKey;
  if (status === 404) return CODE.keyNotFound;
  return CODE.generic;
}

/** Turns anything a binding call threw into a KVError (a KVError passes through). */
export function fromBindingError(e) {
  if (e instanceof KVError) return e;
  const message = String(e?.message ?? e);
  // "KV PUT failed: 413 Value length of 26214401 exceeds limit of 26214400."
  const m = /^KV [A-Z_]+ failed: (\d{3}) ([\s\S]*)$/.exec(message);
  if (m) {
    const status = Number(m[1]);
    return new KVError(status, codeForMessage(status, m[2]), m[2]);
  }
  if (e instanceof TypeError) {
    // Key checks the binding does itself (empty, "." and "..").
    if (/cannot be empty/.test(message)) {
      return new KVError(400, CODE.badKey, "Key names must not be empty");
    }
    const dots = /^"(\.\.?)" is not allowed as a key name\.$/.exec(message);
    if (dots) {
      return new KVError(
        400,
        CODE.badKey,
        `Illegal key name "${dots[1]}". Please use a different name.`,
      );
    }
    return new KVError(400, CODE.generic, message);
  }
  return new KVError(500, CODE.generic, `Internal error: ${message}`);
}

/** Awaits a binding call, mapping what it throws (see fromBindingError). */
export async function kv(promise) {
  try {
    return await promise;
  } catch (e) {
    throw fromBindingError(e);
  }
}

// --- keys, metadata, values ---------------------------------------------------

// drift: only the REST Worker checked the type (the gateway checks it earlier,
// when it parses the batch); kept, it costs nothing there.
export function validateKey(key) {
  if (typeof key !== "string") {
    throw new KVError(400, CODE.badKey, "Key names must be strings");
  }
  if (key === "") {
    throw new KVError(400, CODE.badKey, "Key names must not be empty");
  }
  if (key === "." || key === "..") {
    throw new KVError(400, CODE.badKey, `Illegal key name "${key}". Please use a different name.`);
  }
  checkKeyLength(key);
}

function checkKeyLength(text) {
  if (!text.isWellFormed()) {
    // a lone surrogate has no UTF-8 form: the binding refuses it, SQLite rewrites it
    throw new KVError(400, CODE.badKey, "Could not URL-decode key name");
  }
  const n = byteLength(text);
  if (n > LIMITS.keyBytes) {
    throw new KVError(
      414,
      CODE.badKey,
      `UTF-8 encoded length of ${n} exceeds key length limit of ${LIMITS.keyBytes}.`,
    );
  }
}

/** A list prefix: any string, but no longer than a key may be. */
export function validatePrefix(prefix) {
  checkKeyLength(prefix);
}

/** Throws the service's 413 when the metadata's JSON is over 1,024 bytes. */
export function validateMetadata(metadata) {
  const n = byteLength(JSON.stringify(metadata));
  if (n > LIMITS.metadataBytes) {
    throw new KVError(
      413,
      CODE.badMetadata,
      `Metadata length of ${n} exceeds limit of ${LIMITS.metadataBytes}.`,
    );
  }
}

export function valueTooLarge(length) {
  return new KVError(
    413,
    CODE.generic,
    `Value length of ${length} exceeds limit of ${LIMITS.valueBytes}.`,
  );
}

/** Throws the service's 413 when a value is over 25 MiB. */
export function validateValueLength(length) {
  if (length > LIMITS.valueBytes) throw valueTooLarge(length);
}

// --- list parameters ----------------------------------------------------------

/**
 * The page size of a list call: `raw` as given (a query-string text or a JSON
 * number; absent, null or "" means the default, 1000), checked against 10..1000
 * with the service's messages (which quote it as given).
 */
export function parseListLimit(raw) {
  if (raw === undefined || raw === null || raw === "") return LIMITS.listMax;
  const limit = Number(raw);
  if (!Number.isInteger(limit) || limit < LIMITS.listMin) {
    throw new KVError(
      400,
      CODE.badListLimit,
      `Invalid key_count_limit of ${raw}. Please specify an integer greater than ${LIMITS.listMin}.`,
    );
  }
  if (limit > LIMITS.listMax) {
    throw new KVError(
      400,
      CODE.badListLimit,
      `Invalid key_count_limit of ${raw}. Please specify an integer less than ${LIMITS.listMax}.`,
    );
  }
  return limit;
}

/**
 * Refuses a list cursor that cannot be one (400, 10041 "Invalid cursor").
 * Cloudflare's cursors are opaque printable ASCII: deployed, that is all that
 * is checked, and the binding judges the rest (its complaint maps to 10041,
 * see codeForMessage). Miniflare's cursors are base64 of the last listed name
 * and Miniflare accepts any text as one, so under Miniflare (`miniflareFormat`)
 * that form is checked too, where the real service would refuse.
 */
// drift: the REST Worker checked only Miniflare's form, the gateway checked
// printable ASCII first and Miniflare's form only when told it runs there.
// Miniflare's form implies printable ASCII, so both checks together answer
// the same for both; the REST Worker (test-only) always passes
// miniflareFormat, the gateway only under serve.mjs.
export function validateCursor(cursor, { miniflareFormat }) {
  const invalid = () => new KVError(400, CODE.badCursor, "Invalid cursor");
  if (!/^[\x21-\x7e]+$/.test(cursor)) throw invalid();
  if (!miniflareFormat) return;
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(cursor) || cursor.length % 4 !== 0) throw invalid();
  const bytes = decodeBase64(cursor);
  if (bytes === null) throw invalid();
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw invalid();
  }
}

// --- expiry -------------------------------------------------------------------

/**
 * Parses `expiration` / `expiration_ttl` as given (query-string texts, JSON
 * numbers, or absent: undefined, null or "") into the binding's options, the
 * way Cloudflare and Miniflare do (parseInt of the text), refusing values of
 * 0 or less with the service's messages. expiration_ttl wins when both are
 * given (as in Cloudflare's REST API).
 */
// drift: the REST Worker parsed texts, the gateway took integers as they were
// (its batch parser has already refused anything but safe integers): for an
// integer both give the same result and message, so the REST form is kept.
export function parseExpiry(rawExpiration, rawTtl) {
  const has = (v) => v !== null && v !== undefined && v !== "";
  if (has(rawTtl)) {
    const ttl = parseInt(String(rawTtl), 10);
    if (Number.isNaN(ttl) || ttl <= 0) {
      throw new KVError(
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
      throw new KVError(
        400,
        CODE.badExpiration,
        `Invalid expiration of ${rawExpiration}. Please specify integer greater than the current number of seconds since the UNIX epoch.`,
      );
    }
    return { expiration: exp };
  }
  return {};
}

const MAX_EXPIRATION = 2 ** 31 - 1; // the binding keeps 32-bit seconds

/** The checks the KV service makes against its clock, with its messages. */
export function checkExpiry(opts, nowSeconds) {
  const at = opts.expirationTtl !== undefined ? nowSeconds + opts.expirationTtl : opts.expiration;
  if (at !== undefined && at > MAX_EXPIRATION) {
    // the messages of brainbot.kv.limits.absolute_expiration
    throw opts.expirationTtl !== undefined
      ? new KVError(
          400,
          CODE.badExpirationTtl,
          `Invalid expiration_ttl of ${opts.expirationTtl}. It ends after ${MAX_EXPIRATION} seconds since the epoch, the latest expiry KV stores.`,
        )
      : new KVError(
          400,
          CODE.badExpiration,
          `Invalid expiration of ${opts.expiration}. Please specify an integer no greater than ${MAX_EXPIRATION}.`,
        );
  }
  if (opts.expirationTtl !== undefined) {
    if (opts.expirationTtl < LIMITS.minTtl) {
      throw new KVError(
        400,
        CODE.badExpirationTtl,
        `Invalid expiration_ttl of ${opts.expirationTtl}. Expiration TTL must be at least ${LIMITS.minTtl}.`,
      );
    }
  } else if (opts.expiration !== undefined) {
    if (opts.expiration <= nowSeconds) {
      throw new KVError(
        400,
        CODE.badExpiration,
        `Invalid expiration of ${opts.expiration}. Please specify integer greater than the current number of seconds since the UNIX epoch.`,
      );
    }
    if (opts.expiration < nowSeconds + LIMITS.minTtl) {
      throw new KVError(
        400,
        CODE.badExpiration,
        `Invalid expiration of ${opts.expiration}. Expiration times must be at least ${LIMITS.minTtl} seconds in the future.`,
      );
    }
  }
}

// --- clock --------------------------------------------------------------------

// Without --test-clock the KV simulator's own clock (real time) rules alone.
// With `serve.mjs --test-clock` the service binding SIM_CLOCK reaches the
// launcher, which keeps an offset that tests advance (POST /__sim/clock).
// Simulated time is real time + offset, and while the offset is non-zero the
// Workers apply it:
//   - expiration / expiration_ttl are checked against simulated time, and the
//     entry is stored with an absolute expiration in simulated time;
//   - an entry whose expiration <= simulated now is treated as gone: reads
//     answer 404 / null, lists leave it out (the simulator itself drops it
//     later, when real time gets there).
// Miniflare's own fake timers are not used: switching them on marks the KV
// object "being tested", which lowers its value limit to 1 KiB (see
// ../kv-rest-sim/README.md). A deployed Worker has no SIM_CLOCK.

/** The clock of one request: {emulate, nowMs, offsetMs}. */
// drift: the REST Worker threw an ApiError (500, 10001) when the launcher did
// not answer, the gateway a plain Error; both end as a 500 (the gateway
// answers any non-request error "internal error"), so the KVError is kept.
export async function syncClock(env) {
  if (!env.SIM_CLOCK) return { emulate: false, nowMs: Date.now(), offsetMs: 0 };
  const res = await env.SIM_CLOCK.fetch("http://sim-clock/now", { method: "POST" });
  if (!res.ok) {
    throw new KVError(500, CODE.generic, `clock sync failed: ${await res.text()}`);
  }
  const state = await res.json();
  return { emulate: state.offset_ms > 0, nowMs: state.now_ms, offsetMs: state.offset_ms };
}

/** Asks the launcher to move the simulated clock forward; answers {now, offset} (seconds). */
export async function advanceClock(env, advance) {
  const res = await env.SIM_CLOCK.fetch("http://sim-clock/advance", {
    method: "POST",
    body: JSON.stringify({ advance }),
  });
  if (!res.ok) {
    throw new KVError(500, CODE.generic, `clock advance failed: ${await res.text()}`);
  }
  const state = await res.json();
  return { now: Math.floor(state.now_ms / 1000), offset: state.offset_ms / 1000 };
}

/**
 * Whether an entry with this expiration is gone under the simulated clock.
 * null and undefined both mean "no expiry" (the binding's list gives either).
 */
// drift: only the gateway's copy guarded null; the REST Worker's passed null
// on to `null * 1000 <= now`, which is true: an entry without expiry would
// have read as expired (its callers happened to turn null into undefined
// first). Both guards are kept.
export function isExpired(clock, expiration) {
  return (
    clock.emulate &&
    expiration !== undefined &&
    expiration !== null &&
    expiration * 1000 <= clock.nowMs
  );
}

/**
 * Checks parsed expiry options against the request's clock (checkExpiry) and
 * turns them into what the binding gets. With a simulated clock ahead of real
 * time an absolute expiration in simulated time is stored (now + ttl, as the
 * service computes it). The binding checks that against real time, which is
 * behind, so it passes; only for an offset under 2 s (where a second boundary
 * could fall between the two checks) is the TTL lengthened by the rounded
 * offset instead.
 */
// drift: the REST Worker checked here (only under a simulated clock, leaving
// real time to the binding), the gateway checked before calling (always, so
// the messages are the REST API's whatever text the production binding
// throws). Checking here, always, does both.
export function bindingExpiry(options, clock) {
  const nowSeconds = Math.floor(clock.nowMs / 1000);
  checkExpiry(options, nowSeconds);
  if (!clock.emulate || options.expirationTtl === undefined) return options;
  const { expirationTtl, ...rest } = options;
  if (clock.offsetMs >= 2000) return { ...rest, expiration: nowSeconds + expirationTtl };
  return { ...rest, expirationTtl: expirationTtl + Math.round(clock.offsetMs / 1000) };
}

// --- reads ----------------------------------------------------------------------

/**
 * The expiration of `key` (epoch seconds), or null when it has none or is
 * absent. getWithMetadata() does not report the expiration; list() does.
 *
 * One list call with prefix = key, limit 10, keeping the entry named `key`.
 * That is enough: list is sorted by UTF-8 bytes and the key is the smallest
 * name having itself as prefix (every other such name is the key plus more
 * bytes), so when the key exists it is the first name on the first page.
 * limit 10 rather than 1000: no need to pull up to 1,000 names and their
 * metadata for a key that prefixes many others; rather than 1: 10 is the REST
 * API's minimum page, in case the production binding enforces one too.
 */
// drift: the REST Worker listed with limit 1 and followed cursors over up to
// 1,000 pages (more KV operations, and a limit below the API's minimum); the
// gateway made the one call above, which its KV-operation budget (a get counts
// 2) relies on. The gateway's algorithm is kept.
export async function lookupExpiration(env, key) {
  const res = await kv(env.KV.list({ prefix: key, limit: 10 }));
  const entry = res.keys.find((k) => k.name === key);
  return entry?.expiration ?? null;
}

// --- bodies and base64 ------------------------------------------------------------

/**
 * Reads the whole body, keeping at most maxBytes: past that the rest is read
 * and dropped (so the client can finish sending and read the error answer).
 * Answers {bytes, length, tooLarge}; bytes is null when tooLarge.
 */
export async function readBody(request, maxBytes) {
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

/** Standard base64 (padding optional, as atob takes it) to bytes; null when invalid. */
export function decodeBase64(text) {
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

/** Bytes (ArrayBuffer or Uint8Array) to standard base64 with padding. */
export function encodeBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  const CHUNK = 0x8000;
  for (let i = 0; i < bytes.length; i += CHUNK) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + CHUNK));
  }
  return btoa(binary);
}
