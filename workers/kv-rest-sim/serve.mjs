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
import { Miniflare, Response } from "miniflare";

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
// The Worker reaches this through the service binding SIM_CLOCK: POST /now
// answers the simulated time (real time + offset), POST /advance moves the
// offset forward. The Worker applies the offset to expiry (see
// ../shared/kv-rules.mjs, "clock"). Miniflare's internal fake timers are not used
// (they cap values at 1 KiB once switched on, see README.md).

let offsetMs = 0;

async function clockService(request) {
  const { pathname } = new URL(request.url);
  try {
    if (pathname === "/advance") {
      const { advance } = await request.json();
      if (typeof advance !== "number" || !Number.isFinite(advance) || advance < 0) {
        return new Response("advance must be a number >= 0", { status: 400 });
      }
      offsetMs += Math.round(advance * 1000);
    } else if (pathname !== "/now") {
      return new Response("not found", { status: 404 });
    }
    return Response.json({ now_ms: Date.now() + offsetMs, offset_ms: offsetMs });
  } catch (e) {
    process.stderr.write(`kv-rest-sim: clock: ${e?.stack ?? e}\n`);
    return new Response(String(e?.message ?? e), { status: 500 });
  }
}

// --- start ------------------------------------------------------------------

let mf;

const options = {
  // The Worker imports ../../shared/kv-rules.mjs: with modules: true Miniflare
  // follows the import and loads each file as an ES module named by its path
  // relative to modulesRoot. The root is workers/ so that both files (and the
  // import between them) stay inside it: "kv-rest-sim/src/rest-api.mjs" imports
  // "shared/kv-rules.mjs". (Relative to this directory the shared file would be
  // "../shared/...", a name workerd cannot resolve.)
  modules: true,
  modulesRoot: path.join(here, ".."),
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
