#!/usr/bin/env node
// Runs src/gateway.mjs (brainbot's KV gateway) in Miniflare, on a local KV
// namespace.
//
//   node serve.mjs [--host 127.0.0.1] [--port 0] [--secret S] [--previous-secret P]
//                  [--persist DIR] [--test-clock] [--namespace NAME] [--shards N]
//                  [--fail-write-behind] [--fail-mid-commit]
//
// --persist keeps the KV namespace and the Durable Objects' storage (the
// coordinator's values and pending write-behind, the seen nonces) in DIR, so a
// restart with the same DIR continues where the last one stopped.
//
// The secrets may also come from the environment variables KV_GATEWAY_SECRET
// and KV_GATEWAY_SECRET_PREVIOUS. Without a secret the gateway still starts and
// answers every request 503 (as a deployed Worker without GATEWAY_SECRET does).
// Once listening, prints exactly one line to stdout:
//   READY http://127.0.0.1:<port>
// Everything else (workerd's own output, errors) goes to stderr; the secrets
// are never printed. SIGTERM / SIGINT dispose Miniflare (which stops workerd)
// and exit 0.

import { fileURLToPath } from "node:url";
import path from "node:path";
import { parseArgs } from "node:util";
import { Miniflare, Response } from "miniflare";

const here = path.dirname(fileURLToPath(import.meta.url));
const KV_BINDING = "KV"; // binding name; with kvNamespaces: ["KV"] also the namespace id
const USAGE =
  "usage: node serve.mjs [--host 127.0.0.1] [--port 0] [--secret S] [--previous-secret P]\n" +
  "                      [--persist DIR] [--test-clock] [--namespace NAME] [--shards N]\n" +
  "                      [--fail-write-behind] [--fail-mid-commit]\n" +
  "secrets: --secret / env KV_GATEWAY_SECRET, --previous-secret / env KV_GATEWAY_SECRET_PREVIOUS\n";

function fail(message) {
  process.stderr.write(`kv-gateway: ${message}\n`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "0" },
      secret: { type: "string" },
      "previous-secret": { type: "string" },
      persist: { type: "string" },
      "test-clock": { type: "boolean", default: false },
      namespace: { type: "string", default: "default" },
      shards: { type: "string", default: "1" },
      "fail-write-behind": { type: "boolean", default: false },
      "fail-mid-commit": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  }));
} catch (e) {
  fail(e.message);
}
if (args.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}

const secret = args.secret ?? process.env.KV_GATEWAY_SECRET ?? "";
const previousSecret =
  args["previous-secret"] ?? process.env.KV_GATEWAY_SECRET_PREVIOUS ?? "";
const port = Number(args.port);
if (!/^[0-9]+$/.test(args.port) || port > 65535) fail(`invalid --port ${args.port}`);
const testClock = args["test-clock"];
if (secret === "") {
  process.stderr.write(
    "kv-gateway: no secret (--secret or env KV_GATEWAY_SECRET): every request will be answered 503\n",
  );
}

// --- simulated clock (only with --test-clock) ---------------------------------
//
// The Worker reaches this through the service binding SIM_CLOCK: POST /now
// answers the simulated time (real time + offset), POST /advance moves the
// offset forward. The Worker applies the offset to expiry (see
// ../shared/kv-rules.mjs, "clock"). Miniflare's internal fake timers are not used
// (they cap values at 1 KiB once switched on; see kv-rest-sim's README).

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
    process.stderr.write(`kv-gateway: clock: ${e?.stack ?? e}\n`);
    return new Response(String(e?.message ?? e), { status: 500 });
  }
}

// --- start ------------------------------------------------------------------

if (!/^[1-9][0-9]{0,3}$/.test(args.shards)) fail(`invalid --shards ${args.shards}`);
const bindings = {
  // Miniflare's cursors have a known form; the Worker checks it (see
  // validateCursor in ../shared/kv-rules.mjs). A deployed Worker does not get this.
  SIM_CURSOR_FORMAT: "miniflare",
  // the coordinator's xstats op (per-key KV write counts), for tests only
  SIM_STATS: "1",
  GATEWAY_NAMESPACE: args.namespace,
  COORDINATOR_SHARDS: args.shards,
};
// a fault for tests: every write-behind to KV fails, once a commit of its key
// landed while it was under way (see Coordinator.flush)
if (args["fail-write-behind"]) bindings.SIM_FAIL_WRITE_BEHIND = "1";
// a fault for tests: a commit stored in several parts fails after its first part
// (see putAll in ./src/coordinator.mjs)
if (args["fail-mid-commit"]) bindings.SIM_FAIL_MID_COMMIT = "1";
if (secret !== "") bindings.GATEWAY_SECRET = secret;
if (previousSecret !== "") bindings.GATEWAY_SECRET_PREVIOUS = previousSecret;

let mf;

const options = {
  // The Worker imports ../../shared/kv-rules.mjs: with modules: true Miniflare
  // follows the import and loads each file as an ES module named by its path
  // relative to modulesRoot. The root is workers/ so that both files (and the
  // import between them) stay inside it: "kv-gateway/src/gateway.mjs" imports
  // "shared/kv-rules.mjs". (Relative to this directory the shared file would be
  // "../shared/...", a name workerd cannot resolve.)
  modules: true,
  modulesRoot: path.join(here, ".."),
  scriptPath: path.join(here, "src", "gateway.mjs"),
  compatibilityDate: "2026-04-01", // as in wrangler.toml
  kvNamespaces: [KV_BINDING],
  // as wrangler.toml declares them (SQLite-backed classes)
  durableObjects: {
    COORDINATOR: { className: "Coordinator", useSQLite: true },
    REPLAY_GUARD: { className: "ReplayGuard", useSQLite: true },
  },
  bindings,
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
if (args.persist !== undefined) {
  options.kvPersist = path.join(path.resolve(args.persist), "kv");
  options.durableObjectsPersist = path.join(path.resolve(args.persist), "do");
}

let stopping = false;
async function stop(code) {
  if (stopping) return;
  stopping = true;
  // If dispose hangs, exit anyway: Miniflare's "exit" hook still SIGKILLs workerd.
  setTimeout(() => process.exit(code || 1), 10_000).unref();
  try {
    await mf?.dispose(); // SIGKILLs workerd and waits for it to exit
  } catch (e) {
    process.stderr.write(`kv-gateway: dispose failed: ${e?.message ?? e}\n`);
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
  process.stdout.write(`READY ${url.origin}\n`);
} catch (e) {
  // The message only: Miniflare's errors can quote the options (and so the secret).
  process.stderr.write(`kv-gateway: failed to start: ${e?.message ?? e}\n`);
  await stop(1);
}
