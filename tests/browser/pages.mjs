// The hosted pages in a real browser: Debian's Chromium, driven by playwright-core,
// against a running Keyledger (the e2e test pages_browser starts it, with a real
// SMTP server whose Maildir this script reads). What a person does, one line per
// step: sign up, follow the mailed link, sign in, enrol TOTP (codes from pyotp),
// sign out, sign in with the second factor, register a passkey (a CDP virtual
// authenticator), sign in with it, revoke another session, delete the account.
// On the way: the cookies' flags, another origin's form post and credentialed
// fetch refused, no page policy allowing inline script, axe-core on every page,
// and screenshots (desktop and phone, English and Korean). Any failure ends the
// run with a message and exit code 1.
//
//   node pages.mjs '{"origin":"http://localhost:PORT","maildir":"…/new",
//                    "python":"…/python","screenshots":"…","email":"…"}'

import { readFileSync, readdirSync } from "node:fs";
import { createServer } from "node:http";
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { AUTHENTICATOR, CHROMIUM, FLAGS, bounded, check, explain, fail, stepRunner } from "./harness.mjs";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const PASSWORD = "correct horse battery staple";
const STEP_MS = 20_000;
const TOTAL_MS = 200_000;
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };

const config = JSON.parse(process.argv[2] ?? "{}");
for (const key of ["origin", "maildir", "python", "screenshots", "email"]) {
  if (!config[key]) {
    console.error(`pages.mjs: the configuration lacks "${key}"`);
    process.exit(2);
  }
}
const ORIGIN = config.origin;
const EMAIL = config.email;

/** The page a failing step reports on (its address and what it shows). */
let watched = null;
async function whereWeAre() {
  if (!watched) return "";
  try {
    const text = await bounded(watched.evaluate(() => document.body?.innerText.slice(0, 600) ?? ""), 2_000, "page text");
    return `\n  at ${watched.url()}\n  showing: ${text.replace(/\s+/g, " ")}`;
  } catch {
    return `\n  at ${watched.url()}`;
  }
}

const step = stepRunner({ stepMs: STEP_MS, whereWeAre });

/** Every page answer's policy must forbid inline script; every one is recorded. */
function watchPolicies(page) {
  page.policies = [];
  page.on("response", (response) => {
    const type = response.headers()["content-type"] ?? "";
    if (response.url().startsWith(ORIGIN) && type.startsWith("text/html")) {
      page.policies.push([response.url(), response.headers()["content-security-policy"] ?? ""]);
    }
  });
}

function watchProblems(page) {
  page.problems = [];
  page.on("console", (message) => {
    const text = message.text();
    // A refused request logs "Failed to load resource"; steps check statuses.
    if (message.type() === "error" && !text.startsWith("Failed to load resource")) {
      page.problems.push(`console: ${text}`);
    }
  });
  page.on("pageerror", (error) => page.problems.push(`page error: ${error.message}`));
}

function noProblems(page) {
  check(page.problems.length === 0, `the page reported: ${page.problems.join(" | ")}`);
}

/** axe-core in the page: no serious or critical violation (WCAG 2 A and AA). */
const audited = new Set();
async function audit(page, name) {
  const present = await page.evaluate(() => typeof window.axe !== "undefined");
  if (!present) await page.evaluate(AXE);
  const violations = await page.evaluate(
    async () =>
      (await window.axe.run(document, { runOnly: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] }))
        .violations,
  );
  const bad = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(
    bad.length === 0,
    `axe on ${name}: ${bad
      .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`)
      .join("; ")}`,
  );
  audited.add(name);
}

/** Desktop and phone screenshots of the page as it is, named `<name>-<lang>-<width>.png`. */
const shots = [];
async function shoot(page, name) {
  const lang = await page.evaluate(() => document.documentElement.lang);
  for (const [label, size] of [["desktop", DESKTOP], ["phone", PHONE]]) {
    await page.setViewportSize(size);
    const path = join(config.screenshots, `${name}-${lang}-${label}.png`);
    await page.screenshot({ path, fullPage: true });
    shots.push(path);
  }
  await page.setViewportSize(DESKTOP);
}

/** Audits and shoots the page as it is in the dark colour scheme, then back to light. */
async function dark(page, name) {
  await page.emulateMedia({ colorScheme: "dark" });
  await audit(page, `${name} (dark)`);
  const path = join(config.screenshots, `${name}-dark-desktop.png`);
  await page.screenshot({ path, fullPage: true });
  shots.push(path);
  await page.emulateMedia({ colorScheme: "light" });
}

/** Audits and shoots a page reached by GET in English and in Korean (by the switch). */
async function bothLanguages(page, path, name) {
  for (const lang of ["ko", "en"]) {
    const separator = path.includes("?") ? "&" : "?";
    await page.goto(`${ORIGIN}${path}${separator}lang=${lang}`);
    const htmlLang = await page.evaluate(() => document.documentElement.lang);
    check(htmlLang === lang, `${path} in ${lang}: <html lang="${htmlLang}">`);
    await audit(page, `${name} (${lang})`);
    await shoot(page, name);
  }
}

/** The link to `path` in the newest mail to `to` (quoted-printable undone). */
async function mailedLink(to, path) {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    const files = readdirSync(config.maildir).map((f) => join(config.maildir, f));
    for (const file of files) {
      const raw = readFileSync(file, "utf8").replace(/=\r?\n/g, "").replace(/=3D/gi, "=");
      if (!raw.toLowerCase().includes(to.toLowerCase())) continue;
      const match = raw.match(new RegExp(`https?://[^\\s"<>]*${path}\\?token=[A-Za-z0-9_\\-.~%]+`));
      if (match) return match[0];
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  fail(`no mail to ${to} with a ${path} link within 15 s`);
}

/** The TOTP code of `secret` at unix time `at`, from pyotp (not our implementation). */
function totpAt(secret, at) {
  return execFileSync(config.python, [
    "-c",
    "import sys, pyotp; print(pyotp.TOTP(sys.argv[1]).at(int(sys.argv[2])))",
    secret,
    String(at),
  ])
    .toString()
    .trim();
}

/** Waits for the next 30-second TOTP step after `step`, and returns its code. */
async function codeAfter(secret, usedStep) {
  for (;;) {
    const now = Math.floor(Date.now() / 1000);
    if (Math.floor(now / 30) > usedStep) return { code: totpAt(secret, now), step: Math.floor(now / 30) };
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** Another origin's page: a form posting to Keyledger's sign-out and account
 *  deletion, and a credentialed fetch of `/v1/auth/me`, reporting what it saw. */
function startEvilSite() {
  const html = `<!doctype html><html lang="en"><title>evil</title><body>
<form id="delete" method="post" action="${ORIGIN}/account/delete">
  <input name="password" value="${PASSWORD}"><input name="csrf_token" value="guess">
  <button id="delete-submit">go</button></form>
<form id="signout" method="post" action="${ORIGIN}/sign-out">
  <input name="csrf_token" value="guess"><button id="signout-submit">go</button></form>
<p id="fetch-result">pending</p>
<script>
fetch(${JSON.stringify(`${ORIGIN}/v1/auth/me`)}, { credentials: "include" })
  .then((r) => r.text().then((t) => { document.getElementById("fetch-result").textContent = "read:" + r.status + ":" + t.slice(0, 80); }))
  .catch(() => { document.getElementById("fetch-result").textContent = "blocked"; });
</script></body></html>`;
  const server = createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(html);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve({ server, url: `http://127.0.0.1:${server.address().port}/` }));
  });
}

async function json(url, options = {}) {
  const response = await fetch(url, options);
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: response.status, headers: response.headers, body };
}

async function run() {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS, timeout: 20_000 });
  const context = await browser.newContext({ viewport: DESKTOP });
  const page = await context.newPage();
  watched = page;
  watchPolicies(page);
  watchProblems(page);
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable", { enableUI: false });
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", { options: AUTHENTICATOR });
  const evil = await startEvilSite();
  let totpSecret;
  let usedStep;
  let backupCodes = [];

  try {
    await step("the sign-up page, in both languages", async () => {
      await bothLanguages(page, "/sign-up", "sign-up");
      noProblems(page);
    });

    await step("sign up: the page says to check the inbox", async () => {
      await page.goto(`${ORIGIN}/sign-up?lang=en`);
      await page.fill("#email", EMAIL);
      await page.fill("#password", PASSWORD);
      await page.fill("#display-name", "Pat Browser");
      await page.click("#sign-up-submit");
      await page.waitForSelector("#check-inbox");
      await bothLanguages(page, new URL(page.url()).pathname + new URL(page.url()).search, "check-inbox");
      await page.waitForSelector("#check-inbox");
      noProblems(page);
    });

    await step("the mailed link verifies the address (after a click, not on load)", async () => {
      const link = await mailedLink(EMAIL, "/verify-email");
      check(link.startsWith(`${ORIGIN}/verify-email?token=`), `the link is ${link.replace(/token=.*/, "token=…")}`);
      await page.goto(link);
      await page.waitForSelector("#verify-email-form");
      check(!page.url().includes("token="), "the token stays in the address bar");
      await bothLanguages(page, new URL(page.url()).pathname, "verify-email");
      await page.waitForSelector("#verify-email-form");
      await page.click("#verify-email-submit");
      await page.waitForSelector("#email-verified");
      check(!page.url().includes("token="), "the token stays in the address bar after verifying");
      noProblems(page);
    });

    await step("the sign-in and forgot-password pages, in both languages", async () => {
      await bothLanguages(page, "/sign-in", "sign-in");
      await dark(page, "sign-in");
      await bothLanguages(page, "/forgot-password", "forgot-password");
      noProblems(page);
    });

    await step("forgot password: the mailed link's reset page (not submitted), and an error page", async () => {
      await page.goto(`${ORIGIN}/forgot-password?lang=en`);
      await page.fill("#email", EMAIL);
      await page.click("#forgot-password-submit");
      await page.waitForSelector("#reset-link-sent");
      await audit(page, "reset link sent");
      await shoot(page, "reset-link-sent");
      const link = await mailedLink(EMAIL, "/reset-password");
      await page.goto(link);
      await page.waitForSelector("#reset-password-form");
      await bothLanguages(page, "/reset-password", "reset-password");
      // A link page opened without its token: the error page.
      await page.goto(`${ORIGIN}/unlock`);
      await page.waitForSelector("[data-error]");
      await audit(page, "error page");
      await shoot(page, "error");
      noProblems(page);
    });

    await step("sign in with the keyboard alone: the account page", async () => {
      await page.goto(`${ORIGIN}/sign-in?lang=en`);
      // From the top of the page, Tab reaches the email field, then the password.
      let presses = 0;
      while ((await page.evaluate(() => document.activeElement?.id)) !== "email") {
        check(++presses <= 8, "Tab never reaches the email field");
        await page.keyboard.press("Tab");
      }
      await page.keyboard.type(EMAIL);
      await page.keyboard.press("Tab");
      check((await page.evaluate(() => document.activeElement?.id)) === "password", "Tab from the email does not reach the password");
      await page.keyboard.type(PASSWORD);
      await page.keyboard.press("Enter");
      await page.waitForSelector("#profile");
      check(new URL(page.url()).pathname === "/account", `after sign-in: ${page.url()}`);
      await bothLanguages(page, "/account", "account");
      await dark(page, "account");
      noProblems(page);
    });

    await step("the session's cookies have the flags they must", async () => {
      const cookies = await context.cookies(ORIGIN + "/v1/auth/refresh");
      const byName = Object.fromEntries(cookies.map((c) => [c.name, c]));
      const access = byName["__Host-keyledger-access"];
      const refresh = byName["__Secure-keyledger-refresh"];
      const csrf = byName["__Host-keyledger-csrf"];
      check(access && refresh && csrf, `cookies: ${cookies.map((c) => c.name).join(", ")}`);
      check(access.httpOnly && access.secure && access.sameSite === "Lax" && access.path === "/", `access: ${JSON.stringify(access)}`);
      check(refresh.httpOnly && refresh.secure && refresh.sameSite === "Lax" && refresh.path === "/v1/auth/refresh", `refresh: ${JSON.stringify(refresh)}`);
      check(!csrf.httpOnly && csrf.secure && csrf.path === "/", `csrf: ${JSON.stringify(csrf)}`);
      const onAccount = (await context.cookies(ORIGIN + "/account")).map((c) => c.name);
      check(!onAccount.includes("__Secure-keyledger-refresh"), "the refresh cookie goes to other paths");
    });

    await step("an expired access cookie: the account page resumes the session from the refresh cookie", async () => {
      const refresh = (await context.cookies(ORIGIN + "/v1/auth/refresh")).find((c) => c.name === "__Secure-keyledger-refresh");
      await context.clearCookies({ name: "__Host-keyledger-access" });
      await page.goto(`${ORIGIN}/account`);
      await page.waitForSelector("#profile");
      const renewed = (await context.cookies(ORIGIN + "/v1/auth/refresh")).find((c) => c.name === "__Secure-keyledger-refresh");
      check(renewed && renewed.value !== refresh.value, "the refresh cookie was not rotated");
      const names = (await context.cookies(ORIGIN)).map((c) => c.name);
      check(names.includes("__Host-keyledger-access"), "no new access cookie");
      noProblems(page);
    });

    await step("another origin's form posts and credentialed fetch are refused", async () => {
      const other = await context.newPage();
      watchProblems(other);
      await other.goto(evil.url);
      await other.waitForFunction(() => document.getElementById("fetch-result").textContent !== "pending");
      const fetched = await other.textContent("#fetch-result");
      check(fetched === "blocked", `a credentialed fetch from another origin read: ${fetched}`);
      for (const [button, what] of [["#signout-submit", "sign-out"], ["#delete-submit", "account deletion"]]) {
        await other.goto(evil.url);
        const [response] = await Promise.all([
          other.waitForNavigation(),
          other.click(button),
        ]);
        check(response.status() === 403, `a cross-origin ${what} post answered ${response.status()}`);
        const code = await other.getAttribute("[data-error]", "data-error");
        check(code === "csrf_failed", `a cross-origin ${what} post showed ${code}`);
      }
      await other.close();
      // Still signed in, account intact.
      await page.goto(`${ORIGIN}/account`);
      await page.waitForSelector("#profile");
      // CORS: an unlisted origin gets no CORS header, a preflight from it a 403.
      const simple = await fetch(`${ORIGIN}/v1/auth/keys`, { headers: { origin: evil.url.slice(0, -1) } });
      check(!simple.headers.has("access-control-allow-origin"), "CORS headers for an unlisted origin");
      const preflight = await fetch(`${ORIGIN}/v1/auth/me`, {
        method: "OPTIONS",
        headers: { origin: "https://evil.example", "access-control-request-method": "DELETE" },
      });
      check(preflight.status === 403 && !preflight.headers.has("access-control-allow-origin"), `preflight from an unlisted origin: ${preflight.status}`);
      const listed = await fetch(`${ORIGIN}/v1/auth/me`, {
        method: "OPTIONS",
        headers: { origin: "https://app.example", "access-control-request-method": "DELETE" },
      });
      check(listed.headers.get("access-control-allow-origin") === "https://app.example", "preflight from a listed origin");
      check(listed.headers.get("access-control-allow-credentials") === "true", "credentials for a listed origin");
    });

    await step("enrol TOTP with a code from pyotp: backup codes shown once", async () => {
      // Started in English, then again in Korean (a page a post renders is
      // seen in the language of that post); the second one is confirmed.
      for (const lang of ["en", "ko"]) {
        await page.goto(`${ORIGIN}/account?lang=${lang}`);
        await page.click("#totp-start-submit");
        await page.waitForSelector("#totp-secret");
        await page.waitForSelector("img#totp-qr");
        await audit(page, `TOTP enrolment (${lang})`);
        await shoot(page, "totp-enrolment");
      }
      totpSecret = (await page.textContent("#totp-secret")).replace(/\s+/g, "");
      const now = Math.floor(Date.now() / 1000);
      usedStep = Math.floor(now / 30);
      await page.fill("#totp-code", totpAt(totpSecret, now));
      await page.click("#totp-confirm-submit");
      await page.waitForSelector("#backup-codes");
      backupCodes = (await page.$$eval("#backup-codes li", (items) => items.map((li) => li.textContent.trim()))).filter(Boolean);
      check(backupCodes.length >= 5, `${backupCodes.length} backup codes`);
      await audit(page, "backup codes (ko)");
      await shoot(page, "backup-codes");

      noProblems(page);
    });

    await step("sign out", async () => {
      await page.goto(`${ORIGIN}/account`);
      await page.click("#sign-out");
      await page.waitForSelector("#sign-in-form");
      const names = (await context.cookies(ORIGIN)).map((c) => c.name);
      check(!names.includes("__Host-keyledger-access"), "the access cookie outlived the sign-out");
    });

    await step("sign in with the password and a TOTP code (the second step in both languages)", async () => {
      for (const lang of ["en", "ko"]) {
        await page.goto(`${ORIGIN}/sign-in?lang=${lang}`);
        await page.fill("#email", EMAIL);
        await page.fill("#password", PASSWORD);
        await page.click("#sign-in-submit");
        await page.waitForSelector("#second-factor-form");
        await audit(page, `second factor (${lang})`);
        await shoot(page, "second-factor");
      }
      const { code, step: at } = await codeAfter(totpSecret, usedStep);
      usedStep = at;
      await page.fill("#code", code);
      await page.click("#second-factor-submit");
      await page.waitForSelector("#profile");
      await page.goto(`${ORIGIN}/account?lang=en`);
      noProblems(page);
    }, 45_000);

    await step("new backup codes from a session with both factors (the codes page in English)", async () => {
      await page.goto(`${ORIGIN}/account?lang=en`);
      await page.click("#backup-codes-submit");
      await page.waitForSelector("#backup-codes");
      const fresh = (await page.$$eval("#backup-codes li", (items) => items.map((li) => li.textContent.trim()))).filter(Boolean);
      check(fresh.length >= 5 && !fresh.includes(backupCodes[0]), `${fresh.length} new backup codes`);
      backupCodes = fresh;
      await audit(page, "backup codes (en)");
      await shoot(page, "backup-codes");
      await page.goto(`${ORIGIN}/account`);
      noProblems(page);
    });

    await step("register a passkey on the account page", async () => {
      await page.fill("#passkey-name", "Virtual key");
      await page.click("#passkey-register");
      // The script reloads the page once the passkey is registered.
      await page.waitForFunction(() =>
        [...document.querySelectorAll("#passkey-list li")].some((li) => li.textContent.includes("Virtual key")),
      );
      await page.waitForLoadState();
      const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
      check(credentials.length === 1, `${credentials.length} credentials on the authenticator`);
      check(credentials[0].isResidentCredential, "the passkey is not discoverable");
      noProblems(page);
    });

    await step("sign out: the sign-in page's autofill offers the passkey and signs in with it", async () => {
      const before = (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials[0].signCount;
      // The sign-in page asks for a passkey with conditional mediation (the
      // autofill); the virtual authenticator, present at once, answers it.
      await Promise.all([page.waitForURL(/\/sign-in/), page.click("#sign-out")]);
      await page.waitForURL(/\/account/);
      await page.waitForSelector("#profile");
      const after = (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials[0].signCount;
      check(after > before, `the passkey was not used (sign count ${before} → ${after})`);
      const shown = await page.textContent("#profile");
      check(shown.includes(EMAIL), "the account page after a passkey sign-in shows another account");
      noProblems(page);
    });

    await step("sign out, and sign in with the passkey button (no autofill)", async () => {
      // Without conditional mediation the page offers no autofill (as in a
      // browser lacking it), so only the button's modal request can sign in.
      await page.addInitScript(() => {
        PublicKeyCredential.isConditionalMediationAvailable = async () => false;
      });
      const before = (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials[0].signCount;
      await page.click("#sign-out");
      await page.waitForSelector("#sign-in-form");
      await page.click("#passkey-sign-in");
      await page.waitForSelector("#profile");
      const after = (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials[0].signCount;
      check(after > before, `the passkey was not used (sign count ${before} → ${after})`);
      noProblems(page);
    });

    await step("revoke another session from the account page", async () => {
      // A second device: the API with the password and a backup code.
      const login = await json(`${ORIGIN}/v1/auth/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ email: EMAIL, password: PASSWORD }),
      });
      check(login.status === 200 && login.body.mfa_required, `the other device's login: ${login.status}`);
      const verified = await json(`${ORIGIN}/v1/mfa/verify`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ mfa_token: login.body.mfa_token, code: backupCodes[0] }),
      });
      check(verified.status === 200 && verified.body.access_token, `the backup code: ${verified.status}`);
      const token = verified.body.access_token;
      const me = await json(`${ORIGIN}/v1/auth/me`, { headers: { authorization: `Bearer ${token}` } });
      check(me.status === 200, `the other device before: ${me.status}`);

      await page.goto(`${ORIGIN}/account`);
      const others = await page.$$("#session-list li:not([data-current=\"true\"]) .revoke-session");
      check(others.length >= 1, "no other session to revoke");
      await page.click("#session-list li:not([data-current=\"true\"]) .revoke-session");
      await page.waitForSelector("#profile");
      const after = await json(`${ORIGIN}/v1/auth/me`, { headers: { authorization: `Bearer ${token}` } });
      check(after.status === 401, `the revoked device's token still answers ${after.status}`);
      noProblems(page);
    });

    await step("delete the account", async () => {
      await page.goto(`${ORIGIN}/account`);
      await page.fill("#delete-password", PASSWORD);
      await page.click("#delete-account-submit");
      await page.waitForSelector("#account-deleted");
      const login = await json(`${ORIGIN}/v1/auth/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ email: EMAIL, password: PASSWORD }),
      });
      check(login.status === 401, `a sign-in after deletion answered ${login.status}`);
      noProblems(page);
    });

    await step("no page's policy allows inline script or another origin", async () => {
      check(page.policies.length >= 10, `only ${page.policies.length} pages seen`);
      for (const [url, policy] of page.policies) {
        const script = policy.split(";").map((d) => d.trim()).find((d) => d.startsWith("script-src")) ?? "";
        check(script.includes("'nonce-"), `${url}: script-src without a nonce: ${policy}`);
        check(!policy.includes("unsafe-inline") && !policy.includes("unsafe-eval"), `${url}: ${policy}`);
        check(!/https?:\/\//.test(script), `${url}: scripts from another origin: ${policy}`);
        check(policy.includes("frame-ancestors 'none'"), `${url}: may be framed: ${policy}`);
      }
      return `${page.policies.length} pages, ${audited.size} audited, ${shots.length} screenshots`;
    });
  } finally {
    evil.server.close();
    await browser.close();
  }
}

try {
  await bounded(run(), TOTAL_MS, "the whole run");
  console.log("all steps passed");
} catch (error) {
  console.error(explain(error));
  process.exit(1);
}
