// Passkeys in a real browser: Debian's Chromium, driven by playwright-core, with a
// virtual authenticator (CDP `WebAuthn`) standing in for the person's device. It
// opens Keyledger's own page /pages/passkeys and goes through what a person does:
// an account with a password, a passkey registered for it, a sign-out, a
// discoverable sign-in (no email), the passkey as the password login's second
// factor, and a sign-in with an email hint. One line per step; any failure ends it
// with a message and exit code 1.
//
//   node passkeys.mjs http://localhost:PORT   the scenario against a running server
//                                             (the e2e test passkeys_browser runs it)
//   node passkeys.mjs --smoke                 no Keyledger needed: checks Chromium,
//                                             the authenticator and which options
//                                             make a resident credential, then runs
//                                             the scenario against mock-api.mjs
//                                             (the real page files, a fake API)
//
// The origin must be http://localhost:PORT (a secure context; the server's RP id is
// `localhost`), not 127.0.0.1: WebAuthn refuses IP addresses as RP ids.

import { chromium } from "playwright-core";
import { AUTHENTICATOR, CHROMIUM, FLAGS, check, explain, fail, stepRunner } from "./harness.mjs";

const PASSWORD = "correct horse battery staple";
const STEP_MS = 10_000;
const TOTAL_MS = 55_000;

/** Runs one step, bounded, and prints its line. */
const step = stepRunner({ stepMs: STEP_MS });

/** A browser with a page, a CDP session and a virtual authenticator. */
async function openBrowser() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    timeout: 20_000,
  });
  const context = await browser.newContext();
  const page = await context.newPage();
  // Anything the page's CSP refused, or any script error, fails the run at the end
  // of the step that caused it (see `pageProblems`).
  page.problems = [];
  // (A refused API call logs "Failed to load resource"; the steps check statuses.)
  page.on("console", (message) => {
    const text = message.text();
    if (message.type() === "error" && !text.startsWith("Failed to load resource: the server responded")) {
      page.problems.push(`console: ${text}`);
    }
  });
  page.on("pageerror", (error) => page.problems.push(`page error: ${error.message}`));
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable", { enableUI: false });
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: AUTHENTICATOR,
  });
  return { browser, page, cdp, authenticatorId };
}

function pageProblems(page) {
  check(page.problems.length === 0, `the page reported: ${page.problems.join(" | ")}`);
}

async function credentials(cdp, authenticatorId) {
  const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
  return credentials;
}

/** A request from the page (same origin, under the page's CSP): status and JSON. */
async function api(page, method, path, body, token) {
  return page.evaluate(
    async ({ method, path, body, token }) => {
      const headers = {};
      if (body !== undefined) headers["Content-Type"] = "application/json";
      if (token) headers.Authorization = `Bearer ${token}`;
      const response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await response.text();
      let json = null;
      try {
        json = text ? JSON.parse(text) : null;
      } catch {
        json = { unparsed: text.slice(0, 500) };
      }
      return { status: response.status, body: json };
    },
    { method, path, body, token },
  );
}

/** Calls `window.keyledgerPasskeys[name](...args)` in the page; its answer, or a Failure. */
async function ceremony(page, name, ...args) {
  const result = await page.evaluate(
    async ({ name, args }) => {
      try {
        return { ok: await window.keyledgerPasskeys[name](...args) };
      } catch (error) {
        return { error: `${error.name}: ${error.message}`, status: error.status, detail: error.detail };
      }
    },
    { name, args },
  );
  if ("error" in result) {
    fail(
      `keyledgerPasskeys.${name} threw ${result.error}` +
        (result.status ? ` (HTTP ${result.status}${result.detail ? `: ${result.detail}` : ""})` : ""),
    );
  }
  return result.ok;
}

const show = (value) => JSON.stringify(value);

/** The scenario against the server at `base`. */
async function scenario(base, { page, cdp, authenticatorId }) {
  const email = `passkey-${Date.now()}-${Math.random().toString(36).slice(2, 8)}@example.com`;
  let access;

  await step(`open ${base}/pages/passkeys`, async () => {
    const response = await page.goto(`${base}/pages/passkeys`, { timeout: STEP_MS });
    check(response?.status() === 200, `status ${response?.status()}`);
    const policy = response.headers()["content-security-policy"] ?? "";
    check(policy.includes("script-src 'self'"), `its Content-Security-Policy is ${show(policy)}`);
    check(
      await page.evaluate(() => typeof window.keyledgerPasskeys?.register === "function"),
      "window.keyledgerPasskeys is not defined: /pages/passkeys.js did not run",
    );
    check(
      await page.evaluate(() => typeof PublicKeyCredential?.parseCreationOptionsFromJSON === "function"),
      "this Chromium lacks PublicKeyCredential.parseCreationOptionsFromJSON",
    );
    pageProblems(page);
    return await page.title();
  });

  await step("a. register an account with a password and log in", async () => {
    const registered = await api(page, "POST", "/v1/auth/register", {
      email,
      password: PASSWORD,
      display_name: "Passkey Tester",
    });
    check(
      registered.status === 201,
      `register answered ${registered.status} ${show(registered.body)} (201 expected: ` +
        "the test server runs with email verification off)",
    );
    const login = await api(page, "POST", "/v1/auth/login", { email, password: PASSWORD });
    check(login.status === 200 && login.body?.access_token, `login answered ${login.status} ${show(login.body)}`);
    access = login.body.access_token;
    return email;
  });

  let signCount;
  await step("b. register a passkey (navigator.credentials.create)", async () => {
    const passkey = await ceremony(page, "register", access, "Laptop");
    check(typeof passkey?.id === "string" && passkey.id, `no id in ${show(passkey)}`);
    check(passkey.name === "Laptop", `name ${show(passkey.name)}, not "Laptop"`);
    check(passkey.discoverable === true, `discoverable is ${show(passkey.discoverable)}: ${show(passkey)}`);
    const held = await credentials(cdp, authenticatorId);
    check(held.length === 1, `the authenticator holds ${held.length} credentials, not 1`);
    check(held[0].isResidentCredential === true, `not a resident credential: ${show(held[0])}`);
    signCount = held[0].signCount;
    pageProblems(page);
    return `id ${passkey.id}, resident, signCount ${signCount}`;
  });

  await step("c. sign out", async () => {
    const out = await api(page, "POST", "/v1/auth/logout", undefined, access);
    check(out.status === 204 || out.status === 200, `logout answered ${out.status} ${show(out.body)}`);
    const after = await api(page, "GET", "/v1/auth/me", undefined, access);
    check(after.status === 401, `the old token still works after logout: ${after.status}`);
    access = undefined;
  });

  await step("d. discoverable sign-in, no email (navigator.credentials.get)", async () => {
    const tokens = await ceremony(page, "signIn");
    check(tokens?.access_token, `no access_token in ${show(tokens)}`);
    const me = await api(page, "GET", "/v1/auth/me", undefined, tokens.access_token);
    check(me.status === 200, `me answered ${me.status} ${show(me.body)}`);
    check(me.body.email === email, `signed in as ${show(me.body.email)}, not ${email}`);
    const [held] = await credentials(cdp, authenticatorId);
    check(
      held.signCount > signCount || (held.signCount === 0 && signCount === 0),
      `signCount went from ${signCount} to ${held.signCount}`,
    );
    const moved = `signCount ${signCount} -> ${held.signCount}`;
    signCount = held.signCount;
    pageProblems(page);
    return `as ${me.body.email}, ${moved}`;
  });

  await step("e. password login asks for the passkey as second factor", async () => {
    const login = await api(page, "POST", "/v1/auth/login", { email, password: PASSWORD });
    check(login.status === 200, `login answered ${login.status} ${show(login.body)}`);
    check(login.body?.mfa_required === true, `no mfa_required in ${show(login.body)}`);
    check(String(login.body.mfa_token).startsWith("klf1"), `mfa_token ${show(login.body.mfa_token)}`);
    // The contract says `kind`/`method_id`; the server's TOTP methods say `type`/`id`.
    const method = (login.body.methods ?? []).find((m) => (m.kind ?? m.type) === "passkey");
    check(method, `no passkey among the methods ${show(login.body.methods)}`);
    const methodId = method.method_id ?? method.id;
    check(methodId, `the passkey method has no method_id: ${show(method)}`);
    const tokens = await ceremony(page, "secondFactor", login.body.mfa_token, methodId);
    check(tokens?.access_token, `no access_token in ${show(tokens)}`);
    pageProblems(page);
    return `method ${methodId}`;
  });

  await step("f. sign-in with an email hint", async () => {
    const tokens = await ceremony(page, "signIn", email);
    check(tokens?.access_token, `no access_token in ${show(tokens)}`);
    const me = await api(page, "GET", "/v1/auth/me", undefined, tokens.access_token);
    check(me.status === 200 && me.body.email === email, `me answered ${me.status} ${show(me.body)}`);
    pageProblems(page);
  });

  await step("g. the page's own form: sign in, then register a passkey on a new device", async () => {
    // By label, role and accessible name, as a screen reader finds them.
    const status = page.getByRole("status");
    const statusSays = async (pattern) => {
      const deadline = Date.now() + 8_000;
      let text;
      while (Date.now() < deadline) {
        text = (await status.textContent()) ?? "";
        if (pattern.test(text)) return text;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      fail(`the status region says ${show(text)}, not ${pattern}`);
    };
    await page.getByLabel("Email (optional)").fill(email);
    await page.getByRole("button", { name: "Sign in with a passkey" }).click({ timeout: 5_000 });
    await statusSays(/^Signed in\./);
    // A new device: this authenticator forgets its passkey (the server's
    // excludeCredentials would rightly refuse a second one on the same device).
    const [old] = await credentials(cdp, authenticatorId);
    await cdp.send("WebAuthn.removeCredential", { authenticatorId, credentialId: old.credentialId });
    await page.getByRole("button", { name: "Register a passkey" }).click({ timeout: 5_000 });
    const said = await statusSays(/^Registered/);
    const held = await credentials(cdp, authenticatorId);
    check(held.length === 1 && held[0].credentialId !== old.credentialId, "no new credential");
    check(
      await page.evaluate(() => localStorage.length === 0 && sessionStorage.length === 0),
      "the page wrote to web storage",
    );
    pageProblems(page);
    return said;
  }, 20_000);
}

/**
 * Which creation options make this Chromium's virtual authenticator store a
 * resident (discoverable) credential, and whether a discoverable get (empty
 * allowCredentials) then finds it: one credential per case, each on an
 * authenticator of its own, from hand-made options in webauthn-rs's shape (no
 * server). Prints a line per case; fails unless `residentKey: "preferred"` with
 * webauthn-rs's passkey settings (UV required, credProtect UV-required, not
 * enforced) gives a resident credential that a discoverable get finds.
 */
async function residentKeyProbe(browser, base) {
  const credProtect = {
    credentialProtectionPolicy: "userVerificationRequired",
    enforceCredentialProtectionPolicy: false,
  };
  const cases = [
    { residentKey: "required", userVerification: "required", extensions: credProtect },
    { residentKey: "preferred", userVerification: "required", extensions: credProtect, needed: true },
    { residentKey: "discouraged", userVerification: "required", extensions: credProtect },
    { residentKey: "preferred", userVerification: "preferred", extensions: {} },
    // Chromium refuses a UV-required credProtect unless UV is required too.
    { residentKey: "preferred", userVerification: "preferred", extensions: credProtect },
  ];
  const lines = [];
  for (const { needed, ...settings } of cases) {
    const context = await browser.newContext();
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send("WebAuthn.enable", { enableUI: false });
    const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
      options: AUTHENTICATOR,
    });
    await page.goto(`${base}/pages/passkeys`, { timeout: STEP_MS });
    const outcome = await page.evaluate(async ({ residentKey, userVerification, extensions }) => {
      const b64url = (bytes) =>
        btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
      const random = () => b64url(crypto.getRandomValues(new Uint8Array(32)));
      let created;
      try {
        created = await navigator.credentials.create({
          publicKey: PublicKeyCredential.parseCreationOptionsFromJSON({
            rp: { id: "localhost", name: "Keyledger" },
            user: { id: random(), name: "probe@example.com", displayName: "Probe" },
            challenge: random(),
            pubKeyCredParams: [
              { type: "public-key", alg: -7 },
              { type: "public-key", alg: -257 },
            ],
            timeout: 5000,
            attestation: "none",
            authenticatorSelection: {
              residentKey,
              requireResidentKey: residentKey === "required",
              userVerification,
            },
            extensions: { credProps: true, uvm: true, ...extensions },
          }),
        });
      } catch (error) {
        return { created: `${error.name}: ${error.message}` };
      }
      let discovered;
      try {
        const got = await navigator.credentials.get({
          publicKey: PublicKeyCredential.parseRequestOptionsFromJSON({
            challenge: random(),
            rpId: "localhost",
            allowCredentials: [],
            userVerification: "required",
            timeout: 3000,
          }),
        });
        discovered = got.id === created.id;
      } catch (error) {
        discovered = error.name;
      }
      return { created: true, credProps: created.toJSON().clientExtensionResults?.credProps, discovered };
    }, settings);
    const [held] = await credentials(cdp, authenticatorId);
    const asked =
      `residentKey ${settings.residentKey}, UV ${settings.userVerification}` +
      (settings.extensions.credentialProtectionPolicy ? ", credProtect UV-required" : "");
    lines.push(
      outcome.created === true
        ? `${asked}: isResidentCredential ${held?.isResidentCredential}, credProps ` +
            `${show(outcome.credProps)}, discoverable get found it: ${outcome.discovered}`
        : `${asked}: create failed: ${outcome.created}`,
    );
    if (needed) {
      check(
        held?.isResidentCredential === true && outcome.discovered === true,
        `${lines.at(-1)}; the server's default residentKey "preferred" would not give discoverable passkeys`,
      );
    }
    await context.close();
  }
  return lines;
}

async function main() {
  const args = process.argv.slice(2);
  const smoke = args.includes("--smoke");
  let base = args.find((a) => !a.startsWith("--"));
  if (!smoke && !base) {
    fail("usage: node passkeys.mjs http://localhost:PORT | node passkeys.mjs --smoke");
  }
  if (base) base = base.replace(/\/+$/, "");
  check(smoke || new URL(base).hostname === "localhost", `${base}: the origin must be http://localhost:PORT`);

  let mock;
  if (smoke) {
    const { startMockApi } = await import("./mock-api.mjs");
    mock = await startMockApi();
    base = `http://localhost:${mock.port}`;
    console.log(`smoke: the real page files with a mock API (no signature checked) at ${base}`);
  }

  let session;
  try {
    session = await step("launch Chromium with a virtual authenticator", openBrowser, 25_000);
    console.log(`   ${CHROMIUM}: Chromium ${session.browser.version()}, authenticator ${session.authenticatorId}`);
    if (smoke) {
      const lines = await step("probe which options make a resident credential", () => residentKeyProbe(session.browser, base), 30_000);
      for (const line of lines) console.log(`   ${line}`);
    }
    await scenario(base, session);
    console.log(smoke ? "smoke passed" : "passkeys in a real browser: all steps passed");
  } finally {
    await session?.browser.close().catch(() => {});
    await mock?.close();
  }
}

const overall = setTimeout(() => {
  console.error(`FAILED: the whole run took over ${TOTAL_MS} ms`);
  process.exit(1);
}, TOTAL_MS);

main()
  .then(() => {
    clearTimeout(overall);
    process.exit(0);
  })
  .catch((error) => {
    console.error(`FAILED: ${explain(error)}`);
    process.exit(1);
  });
