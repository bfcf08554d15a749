// The Durable Object that makes brainbot's read-modify-writes atomic on KV.
//
// KV has no compare-and-swap and takes one write per second per key. Every
// write of a key brainbot's KVStore manages (counters, lists, hashes, sets,
// expiry, rename...) goes through the object that owns the key instead:
//
//   xread   {keys}                 -> the authoritative entries and their versions
//   xcommit {read: [[key, version]], write: [[key, put | null]], txid, sent}
//                                  -> applied only if every read key still has
//                                     its version, else 409 with the current
//                                     entries (the client re-runs its change)
//
// The object holds the value of every key it has written (durable storage:
// acknowledged means stored) and answers reads of them exactly; KV is written
// behind it by an alarm, at most once per second per key, coalescing every
// commit in between (a counter incremented 50 times a second costs one KV
// write a second). A key whose last write reached KV more than EVICT_AFTER_MS
// ago is dropped from the object; reads of it fall back to KV, which holds it
// by then. After an eviction or restart the write-behind resumes from storage.
//
// The logic of each Redis command stays in Python (brainbot.storage): the
// object only versions and orders whole entries, so there is one
// implementation of the commands, tested against Redis.
//
// Storage layout (the KV-style API of a SQLite-backed object):
//   "seq"            the last version handed out (versions never repeat)
//   "k:" + key       {version, expiration, metadata, chunks, size, dirty, kvAt, kvWrites}
//   "v:" + key + ":" + i   the value in chunks of CHUNK bytes (storage takes <= 2 MB a pair)
//   "d:" + key       when the key is due to be written to KV (ms)
//   "e:" + key       {at, version}: when the key may be dropped (ms)
//   "t:" + txid      {version, at}: a commit already applied (kept TXID_KEEP_MS)

import {
  CODE,
  KVError,
  LIMITS,
  bindingExpiry,
  decodeBase64,
  encodeBase64,
  fromBindingError,
  isExpired,
  kv,
  lookupExpiration,
  parseExpiry,
  syncClock,
  validateKey,
  validateMetadata,
  validateValueLength,
} from "../../shared/kv-rules.mjs";

// Values one answer of the gateway carries, in base64 characters: one 25 MiB
// value (four in one answer were 140 MB, past an isolate's 128 MB).
const ANSWER_CHARS = Math.ceil(LIMITS.valueBytes / 3) * 4;

// The answer to an op that did not fit in its batch's answer (the gateway
// bounds what one answer carries): the client sends the op again at once.
export const FULL = Object.freeze({
  ok: false,
  status: 503,
  code: CODE.generic,
  message: "the batch's answer is full: send the op again",
  retry: true,
});

// Base64 characters of values in an op's result (a get's value, the entries
// of an xread or of a conflict).
function answeredChars(result) {
  if (typeof result?.value === "string") return result.value.length;
  let n = 0;
  for (const entry of result?.entries ?? []) n += entry?.value?.length ?? 0;
  return n;
}

// What is left of one answer's room for values. A result with values past it
// becomes FULL, unless `first` (nothing with values answered yet in the whole
// batch): that one is answered whatever its size, so every batch answers at
// least one op. A result without values (a commit applied, a missing key) is
// never replaced: an applied commit is always answered as applied.
export class AnswerBudget {
  constructor(left, first) {
    this.left = Math.max(0, left);
    this.first = first;
  }

  // The room of a whole answer.
  static whole() {
    return new AnswerBudget(ANSWER_CHARS, true);
  }

  spent() {
    return this.left === 0 && !this.first;
  }

  take(result) {
    const chars = answeredChars(result);
    if (chars === 0) return result;
    if (chars > ANSWER_CHARS && (result.entries?.length ?? 0) > 1) {
      // read together, so answered together: never, within an isolate's memory
      throw new KVError(
        413,
        CODE.generic,
        `the values of these ${result.entries.length} keys are ${chars} base64 characters together; one answer carries at most ${ANSWER_CHARS}`,
      );
    }
    if (chars > this.left && !this.first) return FULL;
    this.first = false;
    this.left = Math.max(0, this.left - chars);
    return result;
  }
}

const CHUNK = 1024 * 1024;
const KV_INTERVAL_MS = 1000; // KV's one write per second per key
const EVICT_AFTER_MS = 10 * 60 * 1000; // well past KV's 60 s of propagation
const FLUSH_PER_ALARM = 400; // KV operations per invocation stay under 1,000
const RETRY_MAX_MS = 60_000;
const TXID_KEEP_MS = 5 * 60 * 1000; // a commit retried after a lost answer is applied once
// A commit first sent (its "sent", the client's ms) longer ago than this may be a retry
// whose mark is gone: refused, never applied twice. The margin covers clock skew (the
// gateway accepts 30 s).
const SENT_WITHIN_MS = TXID_KEEP_MS - 60_000;

const metaKey = (key) => `k:${key}`;
const chunkKey = (key, i) => `v:${key}:${i}`;

export class Coordinator {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.storage = ctx.storage;
    this.env = env;
  }

  async fetch(request) {
    let ops, room;
    try {
      ({ ops, budget: room } = await request.json());
    } catch {
      return Response.json({ error: "body must be JSON" }, { status: 400 });
    }
    const clock = await syncClock(this.env);
    const results = [];
    // The gateway's answer is bounded: its part of the room for values.
    const budget = Number.isSafeInteger(room?.left)
      ? new AnswerBudget(room.left, room.first === true)
      : AnswerBudget.whole();
    for (const op of ops) {
      try {
        if (op.op === "xread" && budget.spent()) {
          results.push(FULL); // not even read: the answer has no room left
          continue;
        }
        let result;
        if (op.op === "xread") result = await this.read(op.keys, clock);
        else if (op.op === "xcommit") result = await this.commit(op, clock);
        else if (op.op === "xstats" && this.env.SIM_STATS) result = await this.stats(op.key);
        else throw new KVError(400, CODE.generic, `unknown coordinator op ${op.op}`);
        results.push(budget.take(result));
      } catch (e) {
        const err = fromBindingError(e);
        results.push({ ok: false, status: err.status, code: err.code, message: err.message });
      }
    }
    return Response.json({ results });
  }

  // --- reads ----------------------------------------------------------------

  async held(key) {
    const meta = await this.storage.get(metaKey(key));
    if (meta === undefined) return undefined;
    let value = null;
    if (meta.chunks !== null) {
      const names = Array.from({ length: meta.chunks }, (_, i) => chunkKey(key, i));
      const parts = await this.storage.get(names);
      value = new Uint8Array(meta.size);
      let offset = 0;
      for (const name of names) {
        const part = parts.get(name);
        value.set(part, offset);
        offset += part.byteLength;
      }
    }
    return { meta, value };
  }

  entryOf(held, clock) {
    const { meta, value } = held;
    if (value === null || isExpired(clock, meta.expiration) || expiredNow(meta.expiration)) {
      return null;
    }
    return { value: encodeBase64(value), expiration: meta.expiration, metadata: meta.metadata };
  }

  // Not held: what KV has (only this object writes the keys it owns, so KV
  // holds exactly the last flushed value of a key dropped from here).
  async fromKV(key, clock) {
    const { value, metadata } = await kv(this.env.KV.getWithMetadata(key, { type: "arrayBuffer" }));
    if (value === null) return null;
    const expiration = await lookupExpiration(this.env, key);
    if (isExpired(clock, expiration)) return null;
    return { value: encodeBase64(value), expiration, metadata: metadata ?? null };
  }

  async read(keys, clock) {
    if (!Array.isArray(keys) || keys.some((k) => typeof k !== "string")) {
      throw new KVError(400, CODE.generic, "keys must be a list of strings");
    }
    keys.forEach(validateKey);
    const entries = [];
    const versions = [];
    for (const key of keys) {
      const held = await this.held(key);
      if (held !== undefined) {
        entries.push(this.entryOf(held, clock));
        versions.push(held.meta.version);
      } else {
        entries.push(await this.fromKV(key, clock));
        versions.push(0);
      }
    }
    return { ok: true, entries, versions };
  }

  // --- commits --------------------------------------------------------------

  async commit(op, clock) {
    const read = op.read ?? [];
    const write = op.write ?? [];
    if (!Array.isArray(read) || !Array.isArray(write)) {
      throw new KVError(400, CODE.generic, "read and write must be lists");
    }
    // Everything is checked before anything is stored: a write that KV would
    // refuse later, in the alarm, would be lost after its acknowledgement.
    const puts = write.map((pair) => this.parseWrite(pair, clock));
    // One entry per key: two writes of a key in one commit would store both
    // values' chunks under one meta, orphaning the longer one's tail.
    if (new Set(puts.map(({ key }) => key)).size !== puts.length) {
      throw new KVError(400, CODE.generic, "a key may be written once per commit");
    }
    for (const pair of read) {
      if (!Array.isArray(pair) || typeof pair[0] !== "string" || !Number.isSafeInteger(pair[1])) {
        throw new KVError(400, CODE.generic, "read must hold [key, version] pairs");
      }
      validateKey(pair[0]);
    }
    // From here to the last put only storage is awaited, so no other request
    // of this object runs in between (its input gate): check-and-set is atomic.
    // A txid makes a retried commit apply once; a malformed one is refused, not
    // ignored (ignored, its retry would apply twice).
    if (op.txid !== undefined && (typeof op.txid !== "string" || !/^[0-9a-f]{32}$/.test(op.txid))) {
      throw new KVError(400, CODE.generic, "txid must be 32 lowercase hex digits");
    }
    if (op.sent !== undefined && !Number.isSafeInteger(op.sent)) {
      throw new KVError(400, CODE.generic, "sent must be an integer (ms)");
    }
    const txid = op.txid ?? null;
    if (txid !== null) {
      const done = await this.storage.get(`t:${txid}`);
      if (done !== undefined) return { ok: true, version: done.version, duplicate: true };
    }
    if (op.sent !== undefined && Date.now() - op.sent > SENT_WITHIN_MS) {
      throw new KVError(
        409,
        CODE.generic,
        "commit first sent too long ago: it may have been applied already (its mark is gone); nothing was written now, re-read the key",
      );
    }
    for (const [key, version] of read) {
      const meta = await this.storage.get(metaKey(key));
      if ((meta?.version ?? 0) !== version) {
        const current = await this.read(
          read.map(([k]) => k),
          clock,
        );
        return {
          ok: false,
          status: 409,
          code: CODE.generic,
          message: `conflict: ${key} changed since it was read`,
          conflict: true,
          entries: current.entries,
          versions: current.versions,
        };
      }
    }
    const version = ((await this.storage.get("seq")) ?? 0) + 1;
    const now = Date.now();
    const batch = { seq: version };
    if (txid !== null) batch[`t:${txid}`] = { version, at: now + TXID_KEEP_MS };
    const stale = [];
    for (const { key, bytes, expiration, metadata } of puts) {
      const old = await this.storage.get(metaKey(key));
      const chunks = bytes === null ? null : Math.max(1, Math.ceil(bytes.byteLength / CHUNK));
      for (let i = chunks ?? 0; i < (old?.chunks ?? 0); i++) stale.push(chunkKey(key, i));
      for (let i = 0; i < (chunks ?? 0); i++) {
        batch[chunkKey(key, i)] = bytes.slice(i * CHUNK, (i + 1) * CHUNK);
      }
      batch[metaKey(key)] = {
        version,
        expiration,
        metadata,
        chunks,
        size: bytes === null ? 0 : bytes.byteLength,
        dirty: true,
        kvAt: old?.kvAt ?? 0,
        kvWrites: old?.kvWrites ?? 0,
      };
      batch[`d:${key}`] = Math.max(now, (old?.kvAt ?? 0) + KV_INTERVAL_MS);
    }
    // One storage transaction: a commit is stored in parts (128 pairs a call), and a
    // failure after some of them (the transaction id among them) must leave none, or
    // the client's retry is answered "already applied" with the commit half stored.
    await this.storage.transaction(async (txn) => {
      await putAll(txn, batch, this.env.SIM_FAIL_MID_COMMIT === "1");
      for (let i = 0; i < stale.length; i += 128) await txn.delete(stale.slice(i, i + 128));
    });
    if (puts.length > 0) await this.wake(Math.min(...puts.map(({ key }) => batch[`d:${key}`])));
    return { ok: true, version };
  }

  parseWrite(pair, clock) {
    if (!Array.isArray(pair) || typeof pair[0] !== "string") {
      throw new KVError(400, CODE.generic, "write must hold [key, entry or null] pairs");
    }
    const [key, put] = pair;
    validateKey(key);
    if (put === null) return { key, bytes: null, expiration: null, metadata: null };
    if (typeof put !== "object" || typeof put.value !== "string") {
      throw new KVError(400, CODE.generic, "a written entry needs a base64 value");
    }
    const bytes = decodeBase64(put.value);
    if (bytes === null) throw new KVError(400, CODE.generic, "value is not valid base64");
    validateValueLength(bytes.byteLength);
    const options = bindingExpiry(parseExpiry(put.expiration, put.expiration_ttl), clock);
    const nowSeconds = Math.floor(clock.nowMs / 1000);
    const expiration =
      options.expiration ??
      (options.expirationTtl !== undefined ? nowSeconds + options.expirationTtl : null);
    const metadata = put.metadata ?? null;
    if (metadata !== null) validateMetadata(metadata);
    return { key, bytes, expiration, metadata };
  }

  // --- write-behind -----------------------------------------------------------

  // The alarm fires at `due` or sooner (one storage read: cheap on every commit).
  async wake(due) {
    const current = await this.storage.getAlarm();
    if (current === null || current > due) await this.storage.setAlarm(due);
  }

  // After an alarm: the next due write-behind or eviction, if any.
  async reschedule() {
    const due = [];
    for (const prefix of ["d:", "e:", "t:"]) {
      for (const value of (await this.storage.list({ prefix })).values()) {
        due.push(typeof value === "number" ? value : value.at);
      }
    }
    if (due.length === 0) return;
    await this.wake(Math.min(...due));
  }

  async alarm() {
    const now = Date.now();
    let budget = FLUSH_PER_ALARM;
    for (const [name, due] of await this.storage.list({ prefix: "d:" })) {
      if (due > now || budget <= 0) continue;
      budget -= 1;
      await this.flush(name.slice(2), now);
    }
    const done = [];
    for (const [name, mark] of await this.storage.list({ prefix: "t:" })) {
      if (mark.at <= now) done.push(name);
    }
    for (let i = 0; i < done.length; i += 128) await this.storage.delete(done.slice(i, i + 128));
    for (const [name, mark] of await this.storage.list({ prefix: "e:" })) {
      if (mark.at > now) continue;
      const key = name.slice(2);
      const meta = await this.storage.get(metaKey(key));
      if (meta !== undefined && !meta.dirty && meta.version === mark.version) {
        const chunks = Array.from({ length: meta.chunks ?? 0 }, (_, i) => chunkKey(key, i));
        await this.storage.delete([metaKey(key), name, ...chunks]);
      } else {
        await this.storage.delete(name);
      }
    }
    await this.reschedule();
  }

  async flush(key, now) {
    const held = await this.held(key);
    if (held === undefined) {
      await this.storage.delete(`d:${key}`);
      return;
    }
    const { meta, value } = held;
    try {
      const nowSeconds = Math.floor(now / 1000);
      if (this.env.SIM_FAIL_WRITE_BEHIND === "1") await this.failAfterACommit(key, meta.version);
      if (value === null || (meta.expiration !== null && meta.expiration <= nowSeconds)) {
        await kv(this.env.KV.delete(key));
      } else {
        // KV keeps nothing for under 60 s: an entry flushed late keeps its exact
        // expiry in its metadata (brainbot's reads enforce it) and lives on KV
        // at most a minute longer.
        const options = {};
        if (meta.expiration !== null) {
          options.expiration = Math.max(meta.expiration, nowSeconds + 61);
        }
        if (meta.metadata !== null) options.metadata = meta.metadata;
        await kv(this.env.KV.put(key, value, options));
      }
    } catch (e) {
      // Recorded on the entry as it is now: commits made while KV was being written
      // (the input gate opens then) keep their version, size and chunks.
      const current = await this.storage.get(metaKey(key));
      if (current === undefined) return;
      const failures = (current.failures ?? 0) + 1;
      const wait = Math.min(RETRY_MAX_MS, KV_INTERVAL_MS * 2 ** (failures - 1));
      await putAll(this.storage, {
        [metaKey(key)]: { ...current, failures },
        [`d:${key}`]: now + wait,
      });
      console.error(`kv-gateway: write-behind of a key failed (${fromBindingError(e).message})`);
      return;
    }
    // A commit made while KV was being written keeps the key dirty.
    const after = await this.storage.get(metaKey(key));
    if (after === undefined) return;
    const kvWrites = (after.kvWrites ?? 0) + 1;
    if (after.version === meta.version) {
      await putAll(this.storage, {
        [metaKey(key)]: { ...after, dirty: false, kvAt: now, kvWrites, failures: 0 },
        [`e:${key}`]: { at: now + EVICT_AFTER_MS, version: meta.version },
      });
      await this.storage.delete(`d:${key}`);
    } else {
      await putAll(this.storage, {
        [metaKey(key)]: { ...after, kvAt: now, kvWrites },
        [`d:${key}`]: now + KV_INTERVAL_MS,
      });
    }
  }

  // Only under serve.mjs --fail-write-behind: a KV write that fails once a commit
  // of the key landed while it was under way (as a slow, failing KV.put can).
  async failAfterACommit(key, version) {
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      const meta = await this.storage.get(metaKey(key));
      if (meta?.version !== version) break;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    throw new Error("simulated write-behind failure");
  }

  async stats(key) {
    const meta = await this.storage.get(metaKey(key));
    return {
      ok: true,
      held: meta !== undefined,
      version: meta?.version ?? 0,
      dirty: meta?.dirty ?? false,
      kv_writes: meta?.kvWrites ?? 0,
    };
  }
}

function expiredNow(expiration) {
  return expiration !== null && expiration !== undefined && expiration * 1000 <= Date.now();
}

// storage.put takes at most 128 pairs at once (delete, 128 keys).
async function putAll(storage, entries, failMidway = false) {
  const pairs = Object.entries(entries);
  for (let i = 0; i < pairs.length; i += 128) {
    await storage.put(Object.fromEntries(pairs.slice(i, i + 128)));
    if (failMidway && i + 128 < pairs.length) {
      throw new Error("simulated failure mid-commit (--fail-mid-commit)");
    }
  }
}
