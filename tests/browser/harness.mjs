// What the browser scripts (passkeys.mjs, pages.mjs) share: how Chromium is
// launched, the virtual authenticator standing in for the person's device, and
// the steps: each bounded in time, one line per step passed, and any failure a
// `Failure` whose message ends the run.

/** The browser to launch (the e2e tests set `$KEYLEDGER_CHROMIUM`). */
export const CHROMIUM = process.env.KEYLEDGER_CHROMIUM ?? "/usr/bin/chromium";

// What this sandboxed machine needs (see the env doc): without the
// background-networking flags Chromium keeps dialling Google's hosts through a
// closed network. playwright adds --headless itself, and a fresh --user-data-dir of
// its own for every launch.
export const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // The server listens on 127.0.0.1 only; Chromium could try ::1 first.
  "--host-resolver-rules=MAP localhost 127.0.0.1",
];

/** The CDP virtual authenticator's options: a platform authenticator with resident keys and UV. */
export const AUTHENTICATOR = {
  protocol: "ctap2",
  ctap2Version: "ctap2_1",
  transport: "internal",
  hasResidentKey: true,
  hasUserVerification: true,
  isUserVerified: true,
  automaticPresenceSimulation: true,
};

/** A check that failed: its message is all a run reports (no stack). */
export class Failure extends Error {}

export function fail(message) {
  throw new Failure(message);
}

export function check(condition, message) {
  if (!condition) fail(message);
}

/** What to print for `error`: a Failure's message, anything else's stack. */
export function explain(error) {
  return error instanceof Failure ? error.message : (error?.stack ?? String(error));
}

/** `promise`, or a Failure after `ms`. */
export function bounded(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * A step runner: `step(name, run, ms = stepMs)` runs `run`, bounded by `ms`, and
 * prints `ok N name (… ms)` with `run`'s answer when that is a string; it returns
 * the answer. A failure becomes a Failure naming the step, followed by what
 * `whereWeAre()` says (say, the page the browser is on). Steps are numbered from 1
 * per runner.
 */
export function stepRunner({ stepMs, whereWeAre = async () => "" }) {
  let stepNumber = 0;
  return async function step(name, run, ms = stepMs) {
    stepNumber += 1;
    const started = Date.now();
    let detail;
    try {
      detail = await bounded(Promise.resolve().then(run), ms, name);
    } catch (error) {
      throw new Failure(`step ${stepNumber} (${name}) failed: ${explain(error)}${await whereWeAre()}`);
    }
    const suffix = typeof detail === "string" && detail ? `: ${detail}` : "";
    console.log(`ok ${stepNumber} ${name} (${Date.now() - started} ms)${suffix}`);
    return detail;
  };
}
