// A stand-in for Keyledger in `node passkeys.mjs --smoke`: serves the real page
// files (api/src/pages) under the real page policy (read from
// api/src/resources/pages.rs), and fakes the API routes the scenario calls, with
// the contract's shapes and webauthn-rs's option JSON. It checks what the browser
// sends as far as it can without cryptography (the ceremony type, challenge and
// origin in clientDataJSON, the credential id, the user handle) and verifies no
// signature: it tests the browser side (Chromium, the authenticator, the page's
// script, the scenario), never the server's WebAuthn.

import { createServer } from "node:http";
import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";

const root = new URL("../../api/src/", import.meta.url);
const pagesRs = readFileSync(new URL("resources/pages.rs", root), "utf8");
const policyMatch = pagesRs.match(/const PAGE_POLICY: &str = "((?:[^"\\]|\\[\s\S])*)";/);
if (!policyMatch) throw new Error("PAGE_POLICY not found in api/src/resources/pages.rs");
// A Rust string: `\` at a line's end drops the newline and the next line's indent.
const PAGE_POLICY = policyMatch[1].replace(/\\\n\s*/g, "");

const b64url = (bytes) => Buffer.from(bytes).toString("base64url");
const token = (prefix) => `${prefix}${b64url(randomBytes(24))}`;

export async function startMockApi() {
  let origin;
  const users = new Map(); // email -> { email, handle, passkeys: [{id, name}] }
  const sessions = new Map(); // access token -> email
  const challenges = new Map(); // challenge_id -> { challenge, type, email?, allow? }
  const mfaTokens = new Map(); // mfa_token -> { email, challenge? }

  const page = (file, type) => ({
    status: 200,
    type,
    body: readFileSync(new URL(`pages/${file}`, root)),
    policy: PAGE_POLICY,
  });
  const json = (status, body) => ({ status, type: "application/json", body: JSON.stringify(body) });
  const error = (status, code) => json(status, { error: code, message: `mock: ${code}` });
  const pair = (email) => {
    const access = token("v4.public.mock");
    sessions.set(access, email);
    return { access_token: access, refresh_token: token("klr1."), token_type: "Bearer", expires_in: 900 };
  };

  function newChallenge(type, extra) {
    const id = randomUUID();
    const challenge = b64url(randomBytes(32));
    challenges.set(id, { challenge, type, ...extra });
    return { id, challenge };
  }

  /** The checks a server makes of clientDataJSON, bar the signature. */
  function clientData(credential, expected) {
    const data = JSON.parse(Buffer.from(credential?.response?.clientDataJSON ?? "", "base64url"));
    if (data.type !== expected.type) throw new Error(`type ${data.type}`);
    if (data.challenge !== expected.challenge) throw new Error("challenge");
    if (data.origin !== origin) throw new Error(`origin ${data.origin}`);
    if (credential.id !== credential.rawId) throw new Error("id and rawId differ");
    return data;
  }

  const requestOptions = (challenge, allow) => ({
    challenge,
    timeout: 60000,
    rpId: "localhost",
    allowCredentials: allow.map((id) => ({ type: "public-key", id })),
    userVerification: "required",
  });

  /** A passkey assertion against a challenge: the account it signs in, or null. */
  function assertion(body, stored) {
    const cred = body.credential;
    clientData(cred, { type: "webauthn.get", challenge: stored.challenge });
    const user = [...users.values()].find((u) => u.passkeys.some((p) => p.id === cred.id));
    if (!user) return null;
    if (stored.allow && !stored.allow.includes(cred.id)) return null;
    if (cred.response.userHandle && cred.response.userHandle !== user.handle) return null;
    if (!stored.allow && !cred.response.userHandle) return null; // discoverable: needs the handle
    return user;
  }

  const routes = {
    "GET /pages/passkeys": () => page("passkeys.html", "text/html; charset=utf-8"),
    "GET /pages/passkeys.js": () => page("passkeys.js", "text/javascript; charset=utf-8"),
    "POST /v1/auth/register": ({ body }) => {
      users.set(body.email, { email: body.email, handle: b64url(randomBytes(16)), passkeys: [] });
      return json(201, { user_id: randomUUID(), email: body.email });
    },
    "POST /v1/auth/login": ({ body }) => {
      const user = users.get(body.email);
      if (!user || body.password.length < 8) return error(401, "invalid_credentials");
      if (user.passkeys.length === 0) return json(200, pair(user.email));
      const mfa = token("klf1.");
      mfaTokens.set(mfa, { email: user.email });
      const methods = user.passkeys.map((p) => ({ kind: "passkey", method_id: p.method, label: p.name }));
      return json(200, { mfa_required: true, mfa_token: mfa, expires_in: 300, methods });
    },
    "POST /v1/auth/logout": ({ email, access }) => {
      if (!email) return error(401, "unauthorized");
      sessions.delete(access);
      return { status: 204, type: null, body: "" };
    },
    "GET /v1/auth/me": ({ email }) =>
      email ? json(200, { email, display_name: null }) : error(401, "unauthorized"),
    "POST /v1/passkeys/register/start": ({ email }) => {
      if (!email) return error(401, "unauthorized");
      const user = users.get(email);
      const { id, challenge } = newChallenge("webauthn.create", { email });
      return json(200, {
        challenge_id: id,
        options: {
          publicKey: {
            rp: { id: "localhost", name: "Keyledger" },
            user: { id: user.handle, name: email, displayName: email },
            challenge,
            pubKeyCredParams: [
              { type: "public-key", alg: -7 },
              { type: "public-key", alg: -257 },
            ],
            timeout: 60000,
            excludeCredentials: user.passkeys.map((p) => ({ type: "public-key", id: p.id })),
            authenticatorSelection: {
              residentKey: "preferred",
              requireResidentKey: false,
              userVerification: "required",
            },
            attestation: "none",
            extensions: {
              credentialProtectionPolicy: "userVerificationRequired",
              enforceCredentialProtectionPolicy: false,
              uvm: true,
              credProps: true,
            },
          },
        },
      });
    },
    "POST /v1/passkeys/register/finish": ({ email, body }) => {
      if (!email) return error(401, "unauthorized");
      const stored = challenges.get(body.challenge_id);
      challenges.delete(body.challenge_id);
      if (!stored || stored.email !== email) return error(400, "invalid_challenge");
      clientData(body.credential, { type: "webauthn.create", challenge: stored.challenge });
      if (!body.credential.response.attestationObject) return error(400, "invalid_credential");
      const passkey = { id: body.credential.id, name: body.name, method: randomUUID() };
      users.get(email).passkeys.push(passkey);
      const rk = body.credential.clientExtensionResults?.credProps?.rk;
      return json(201, {
        id: passkey.method,
        name: passkey.name,
        created_at: new Date().toISOString(),
        backup_eligible: false,
        backup_state: false,
        discoverable: rk === true,
      });
    },
    "POST /v1/auth/passkey/start": ({ body }) => {
      const user = body.email ? users.get(body.email) : null;
      const allow = user ? user.passkeys.map((p) => p.id) : null;
      const { id, challenge } = newChallenge("webauthn.get", { allow });
      const options = { publicKey: requestOptions(challenge, allow ?? []) };
      if (!allow) options.mediation = "conditional";
      return json(200, { challenge_id: id, options });
    },
    "POST /v1/auth/passkey/finish": ({ body }) => {
      const stored = challenges.get(body.challenge_id);
      challenges.delete(body.challenge_id);
      if (!stored) return error(400, "invalid_challenge");
      const user = assertion(body, stored);
      return user ? json(200, pair(user.email)) : error(401, "invalid_credentials");
    },
    "POST /v1/mfa/challenge": ({ body }) => {
      const login = mfaTokens.get(body.mfa_token);
      if (!login) return error(401, "invalid_mfa_token");
      const passkey = users.get(login.email).passkeys.find((p) => p.method === body.method_id);
      if (!passkey) return error(400, "unknown_method");
      const { id, challenge } = newChallenge("webauthn.get", { allow: [passkey.id] });
      login.challenge = id;
      return json(200, { challenge_id: id, options: { publicKey: requestOptions(challenge, [passkey.id]) } });
    },
    "POST /v1/mfa/verify": ({ body }) => {
      const login = mfaTokens.get(body.mfa_token);
      mfaTokens.delete(body.mfa_token);
      const stored = login && challenges.get(login.challenge);
      if (!stored) return error(401, "invalid_mfa_token");
      const user = assertion(body, stored);
      return user?.email === login.email ? json(200, pair(user.email)) : error(401, "invalid_code");
    },
  };

  const server = createServer((req, res) => {
    let raw = "";
    req.on("data", (chunk) => (raw += chunk));
    req.on("end", () => {
      const path = req.url.split("?")[0];
      const access = (req.headers.authorization ?? "").replace(/^Bearer /, "");
      let answer;
      try {
        const route = routes[`${req.method} ${path}`];
        const body = raw ? JSON.parse(raw) : {};
        answer = route ? route({ body, access, email: sessions.get(access) }) : error(404, "not_found");
      } catch (e) {
        answer = error(400, `mock_rejected: ${e.message}`);
      }
      const headers = {
        "Content-Security-Policy": answer.policy ?? "default-src 'none'; frame-ancestors 'none'",
        "Cache-Control": "no-store",
      };
      if (answer.type) headers["Content-Type"] = answer.type;
      res.writeHead(answer.status, headers);
      res.end(answer.body);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = server.address().port;
  origin = `http://localhost:${port}`;
  return {
    port,
    close: () => new Promise((resolve) => {
      server.close(resolve);
      server.closeAllConnections();
    }),
  };
}
