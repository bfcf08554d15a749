#!/usr/bin/env node
// Runs src/rest-api.mjs (Cloudflare's KV REST API on a KV binding) in Miniflare.
//
//   node serve.mjs [--host 127.0.0.1] [--port 0] [--token T] [--persist DIR] [--test-clock]
//
// The token may also come from the environment variable KV_SIM_TOKEN.
// Once listening, prints exactly one line to stdout:
//   READY http://127.0.0.1:<port>/client/v4
// Everything else (workerd's own output, errors) goes to stderr.
// SIGTERM / SIGINT dispose Miniflare (which stops workerd) and exit 0.

import { fileURLToPath } from "node:url";
import path from "node:path";
import { parseArgs } from "node:util";
import { Miniflare, Response, _enableControlEndpoints } from "miniflare";

const here = path.dirname(fileURLToPath(import.meta.url));
const KV_BINDING = "KV"; // binding name; with kvNamespaces: ["KV"] also the namespace id

function fail(message) {
  process.stderr.write(`kv-rest-sim: ${message}\n`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "0" },
      token: { type: "string" },
      persist: { type: "string" },
      "test-clock": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  }));
} catch (e) {
  fail(e.message);
}
if (args.help) {
  process.stdout.write(
    "usage: node serve.mjs [--host 127.0.0.1] [--port 0] [--token T] [--persist DIR] [--test-clock]\n" +
      "token: --token or env KV_SIM_TOKEN (required)\n",
  );
  process.exit(0);
}

const token = args.token ?? process.env.KV_SIM_TOKEN ?? "";
if (token === "") fail("a token is required: --token T or env KV_SIM_TOKEN");
const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`invalid --port ${args.port}`);
const testClock = args["test-clock"];

// --- simulated clock (only with --test-clock) ---------------------------------
//
// Miniflare's KV simulator is a Durable Object whose clock is `Timers.now()`:
// Date.now() unless fake timers are on. Fake timers are switched through
// Miniflare's internal "control ops", which Miniflare's own test-suite uses;
// they need _enableControlEndpoints() before the Miniflare instance is built.
// The clock is kept at real time + offset: the Worker asks /sync before every
// KV operation, and /sync re-pins the fake time to Date.now() + offset.
// Nothing is sent to the object until the first advance, because any control
// op marks the object "being tested", which lowers its value limit to 1 KiB.

let mf;
let offsetMs = 0;
let controlStub;

async function control(name, ...callArgs) {
  if (controlStub === undefined) {
    const ns = await mf._getInternalDurableObjectNamespace("kv", "kv:ns", "KVNamespaceObject");
    controlStub = ns.get(ns.idFromName(KV_BINDING));
  }
  const res = await controlStub.fetch("http://placeholder/", {
    cf: { miniflare: { controlOp: { name, args: callArgs } } },
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`control op ${name} failed: ${res.status} ${text}`);
}

let clockChain = Promise.resolve();
function serialized(fn) {
  const run = clockChain.then(fn, fn);
  clockChain = run.catch(() => {});
  return run;
}

async function clockService(request) {
  const { pathname } = new URL(request.url);
  try {
    if (pathname === "/advance") {
      const { advance } = await request.json();
      return await serialized(async () => {
        offsetMs += Math.round(advance * 1000);
        const now = Date.now() + offsetMs;
        if (offsetMs !== 0) await control("enableFakeTimers", now);
        return Response.json({ now_ms: now, offset_ms: offsetMs });
      });
    }
    if (pathname === "/sync") {
      return await serialized(async () => {
        const now = Date.now() + offsetMs;
        if (offsetMs !== 0) await control("enableFakeTimers", now);
        return Response.json({ now_ms: now, offset_ms: offsetMs });
      });
    }
    return new Response("not found", { status: 404 });
  } catch (e) {
    process.stderr.write(`kv-rest-sim: clock: ${e?.stack ?? e}\n`);
    return new Response(String(e?.message ?? e), { status: 500 });
  }
}

// --- start ------------------------------------------------------------------

if (testClock) _enableControlEndpoints();

const options = {
  modules: true,
  scriptPath: path.join(here, "src", "rest-api.mjs"),
  compatibilityDate: "2025-09-01",
  kvNamespaces: [KV_BINDING],
  bindings: { API_TOKEN: token },
  host: args.host,
  port,
  // Keep stdout for the READY line only.
  handleRuntimeStdio(stdout, stderr) {
    stdout.pipe(process.stderr);
    stderr.pipe(process.stderr);
  },
  logRequests: false,
};
if (testClock) options.serviceBindings = { SIM_CLOCK: clockService };
if (args.persist !== undefined) options.kvPersist = path.resolve(args.persist);

let stopping = false;
async function stop(code) {
  if (stopping) return;
  stopping = true;
  // If dispose hangs, exit anyway: Miniflare's "exit" hook still SIGKILLs workerd.
  setTimeout(() => process.exit(code || 1), 10_000).unref();
  try {
    await mf?.dispose(); // SIGKILLs workerd and waits for it to exit
  } catch (e) {
    process.stderr.write(`kv-rest-sim: dispose failed: ${e?.stack ?? e}\n`);
    code = code || 1;
  }
  process.exit(code);
}
const onSignal = () => void stop(0);
const SIGNALS = ["SIGTERM", "SIGINT", "SIGHUP"];
for (const signal of SIGNALS) process.on(signal, onSignal);

try {
  mf = new Miniflare(options);
  // Miniflare installs its own SIGTERM/SIGINT handlers, which kill workerd
  // without waiting and exit with 128+signal; keep only ours, which dispose
  // properly and exit 0. (Its "exit" hook stays as a last resort.)
  for (const signal of SIGNALS) {
    for (const listener of process.listeners(signal)) {
      if (listener !== onSignal) process.removeListener(signal, listener);
    }
  }
  const url = await mf.ready; // the entry URL, with the port actually bound
  process.stdout.write(`READY ${url.origin}/client/v4\n`);
} catch (e) {
  process.stderr.write(`kv-rest-sim: failed to start: ${e?.stack ?? e}\n`);
  await stop(1);
}
