// The Durable Object that remembers the nonces of signed gateway requests, so
// a captured request cannot be sent again. A nonce is kept for KEEP_MS, longer
// than the window in which its timestamp is accepted, and then forgotten (an
// alarm sweeps them). The Worker spreads nonces over 16 objects by their first
// hex digit, so no one object carries every request.
//
//   POST /check  {"nonce": "<32 hex>"}  ->  200 {"fresh": true | false}

export const KEEP_MS = 120_000; // > 2 x the 30 s timestamp window
const SWEEP_MS = 60_000;

export class ReplayGuard {
  constructor(ctx) {
    this.storage = ctx.storage;
  }

  async fetch(request) {
    const { nonce } = await request.json();
    if (typeof nonce !== "string" || !/^[0-9a-f]{32}$/.test(nonce)) {
      return Response.json({ error: "bad nonce" }, { status: 400 });
    }
    const name = `n:${nonce}`;
    // get then put with only storage in between: atomic for this object
    if ((await this.storage.get(name)) !== undefined) return Response.json({ fresh: false });
    const forget = Date.now() + KEEP_MS;
    await this.storage.put(name, forget);
    const alarm = await this.storage.getAlarm();
    if (alarm === null) await this.storage.setAlarm(forget);
    return Response.json({ fresh: true });
  }

  async alarm() {
    const now = Date.now();
    const old = [];
    let next = null;
    for (const [name, forget] of await this.storage.list({ prefix: "n:" })) {
      if (forget <= now) old.push(name);
      else next = next === null ? forget : Math.min(next, forget);
    }
    for (let i = 0; i < old.length; i += 128) await this.storage.delete(old.slice(i, i + 128));
    // one sweep per SWEEP_MS at most: a forgotten nonce is harmless (its timestamp
    // is refused), while an alarm per nonce re-lists every kept nonce each time
    if (next !== null) await this.storage.setAlarm(Math.max(next, now + SWEEP_MS));
  }
}
