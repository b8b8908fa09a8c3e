// A real OpenID provider (oidc-provider, which we did not write) on loopback, for
// the social-login e2e tests: one confidential code-flow client (CLIENT_ID,
// CLIENT_SECRET, client_secret_basic, PKCE S256 required), logins without a
// browser, and control endpoints under /__test/ that let a test add accounts, set
// the redirect URIs, tamper with ID tokens, rotate the signing key and simulate an
// outage. tests/src/oidc.rs (`TestProvider`) starts it.
//
// Stdout carries one line, {"issuer": "http://127.0.0.1:<port>"}, so the test
// can read it without parsing anything else; everything else goes to stderr.

import { createServer } from "node:http";
import { randomBytes } from "node:crypto";
import Provider from "oidc-provider";
import { SignJWT, decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair } from "jose";

// oidc-provider prints notices with console.info; stdout must hold only the
// first line.
console.log = console.info = console.debug = (...args) => console.error(...args);

const CLIENT_ID = required("CLIENT_ID");
const CLIENT_SECRET = required("CLIENT_SECRET");
const ALG = "RS256";

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`provider.mjs: the environment variable ${name} is required`);
    process.exit(2);
  }
  return value;
}

// The test's control state.
const accounts = new Map(); // account id (a login_hint) -> claims {sub?, email, email_verified, name, amr?}
let redirectUris = []; // exact redirect URIs the client may use
let tamper = null; // how to rewrite every following ID token, or null
let outage = false; // answer 503 to everything but /__test/
let requests = 0; // requests other than /__test/ (for circuit-breaker tests)

// A key the script holds itself, so it can re-sign tampered tokens with it and
// sign after a rotation: oidc-provider takes its keys once, at construction.
async function newKey() {
  const { privateKey } = await generateKeyPair(ALG, { extractable: true });
  const kid = `k-${randomBytes(8).toString("hex")}`;
  const jwk = { ...(await exportJWK(privateKey)), kid, alg: ALG, use: "sig" };
  const { d, p, q, dp, dq, qi, ...publicJwk } = jwk;
  return { kid, privateKey, privateJwk: jwk, publicJwk };
}
const initialKey = await newKey();

function subjectOf(id, claims) {
  return claims.sub ?? id;
}
let signingKey = initialKey;

const server = createServer();
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
// The issuer is built from the port actually bound, so no free-port race.
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      token_endpoint_auth_method: "client_secret_basic",
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      // Never accepted: the URIs a test allows (PUT /__test/redirect_uris) replace
      // the check below; the metadata only needs a valid one.
      redirect_uris: ["http://127.0.0.1/unset"],
      scope: "openid email profile offline_access",
    },
  ],
  jwks: { keys: [initialKey.privateJwk] },
  scopes: ["openid", "email", "profile", "offline_access"],
  claims: {
    // oidc-provider's defaults, kept.
    acr: null,
    sid: null,
    auth_time: null,
    iss: null,
    // `amr` comes from the login (an account's `amr`, for a provider-side MFA
    // claim); oidc-provider puts it in the ID token only when a scope lists it.
    openid: ["sub", "amr"],
    email: ["email", "email_verified"],
    profile: ["name"],
  },
  // The ID token carries the scopes' claims too, not only `sub`, as many
  // providers' do; the server still has to be right when it merges userinfo.
  conformIdTokenClaims: false,
  // A token request must name its redirect_uri, as the code was issued for it.
  allowOmittingSingleRegisteredRedirectUri: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  // oidc-provider makes the account id the `sub` of every token, so a login
  // uses the account's sub, and this finds the account by it.
  async findAccount(ctx, sub) {
    const account = [...accounts.entries()].find(([id, claims]) => subjectOf(id, claims) === sub)?.[1];
    if (!account) return undefined;
    return {
      accountId: sub,
      // amr reaches the ID token through the login (below), not as a claim.
      async claims() {
        const { amr, ...claims } = account;
        return { ...claims, sub };
      },
    };
  },
});

// Exact match only, against the list the test set: the server under test binds
// a random port after this provider started, so its callback is known only then.
const defaultRedirectUriAllowed = provider.Client.prototype.redirectUriAllowed;
provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
  if (this.clientId !== CLIENT_ID) return defaultRedirectUriAllowed.call(this, value);
  return redirectUris.includes(value);
};

// Logins without a browser: every interaction is finished at once, logging in
// the account named by the request's login_hint and granting what it asked for.
provider.use(async (ctx, next) => {
  const match = ctx.method === "GET" && ctx.path.match(/^\/interaction\/([^/]+)$/);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params, session } = details;
  let result;
  if (prompt.name === "login") {
    const accountId = params.login_hint;
    const account = accountId && accounts.get(accountId);
    if (!account) {
      ctx.status = 400;
      ctx.body = { error: "unknown_account", error_description: `login_hint ${accountId} names no account (PUT /__test/accounts/:id)` };
      return undefined;
    }
    result = { login: { accountId: subjectOf(accountId, account), ...(account.amr ? { amr: account.amr } : {}) } };
  } else if (prompt.name === "consent") {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(" "));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    result = { consent: { grantId: await grant.save() } };
  } else {
    ctx.status = 400;
    ctx.body = { error: "unexpected_prompt", error_description: prompt.name };
    return undefined;
  }
  ctx.respond = false;
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
  return undefined;
});

// Every token response's ID token, rewritten as the test asked, and re-signed
// when a tamper mode is set or the key was rotated (else left as oidc-provider
// made it).
provider.use(async (ctx, next) => {
  await next();
  if (ctx.method !== "POST" || ctx.path !== "/token" || ctx.status !== 200) return;
  const body = ctx.body;
  if (!body || typeof body.id_token !== "string") return;
  if (tamper === null && signingKey === initialKey) return;
  body.id_token = await rewrite(body.id_token, tamper);
});

async function rewrite(idToken, mode) {
  const header = decodeProtectedHeader(idToken);
  const claims = decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  let key = signingKey.privateKey;
  switch (mode) {
    case null:
      break;
    case "aud":
      claims.aud = "someone-else";
      delete claims.azp;
      break;
    case "azp":
      claims.aud = [CLIENT_ID, "someone-else"];
      claims.azp = "someone-else";
      break;
    case "expired":
      claims.iat = now - 3660;
      claims.exp = now - 3600;
      if (claims.auth_time !== undefined) claims.auth_time = claims.iat;
      break;
    case "iat_future": {
      const lifetime = claims.exp - claims.iat;
      claims.iat = now + 3600;
      claims.exp = claims.iat + lifetime;
      break;
    }
    case "nonce":
      claims.nonce = `other-${randomBytes(12).toString("base64url")}`;
      break;
    case "iss":
      claims.iss = "http://issuer.invalid";
      break;
    case "foreign_key":
      // Same kid, another key: only the signature can tell.
      key = (await generateKeyPair(ALG)).privateKey;
      break;
    default:
      throw new Error(`unknown tamper mode ${mode}`);
  }
  return new SignJWT(claims)
    .setProtectedHeader({ ...header, alg: ALG, kid: signingKey.kid })
    .sign(key);
}

const TAMPER_MODES = new Set([null, "aud", "azp", "expired", "iat_future", "nonce", "iss", "foreign_key"]);

const providerCallback = provider.callback();

server.on("request", async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    if (url.pathname.startsWith("/__test/")) {
      await control(req, res, url.pathname);
      return;
    }
    requests += 1;
    if (outage) {
      send(res, 503, { error: "temporarily_unavailable", error_description: "simulated outage" });
      return;
    }
    // oidc-provider serves its construction-time keys; after a rotation the
    // published set is the new key alone, as a provider that retired the old one.
    if (req.method === "GET" && url.pathname === "/jwks" && signingKey !== initialKey) {
      send(res, 200, { keys: [signingKey.publicJwk] }, "application/jwk-set+json; charset=utf-8");
      return;
    }
    providerCallback(req, res);
  } catch (error) {
    console.error(error);
    if (!res.headersSent) send(res, 500, { error: "server_error", error_description: String(error) });
  }
});

async function control(req, res, path) {
  const account = path.match(/^\/__test\/accounts\/([^/]+)$/);
  if (req.method === "PUT" && account) {
    const claims = await readJson(req);
    if (!claims || typeof claims !== "object" || Array.isArray(claims)) return send(res, 400, { error: "a claims object is expected" });
    accounts.set(decodeURIComponent(account[1]), claims);
    return send(res, 204);
  }
  if (req.method === "PUT" && path === "/__test/redirect_uris") {
    const uris = await readJson(req);
    if (!Array.isArray(uris) || !uris.every((u) => typeof u === "string")) return send(res, 400, { error: "a list of URIs is expected" });
    redirectUris = uris;
    return send(res, 204);
  }
  if (req.method === "PUT" && path === "/__test/tamper") {
    const body = await readJson(req);
    if (!body || typeof body !== "object" || !TAMPER_MODES.has(body.id_token)) {
      return send(res, 400, { error: `unknown tamper mode ${JSON.stringify(body?.id_token)}` });
    }
    tamper = body.id_token;
    return send(res, 204);
  }
  if (req.method === "POST" && path === "/__test/rotate") {
    signingKey = await newKey();
    return send(res, 204);
  }
  if (req.method === "PUT" && path === "/__test/outage") {
    const value = await readJson(req);
    if (typeof value !== "boolean") return send(res, 400, { error: "true or false is expected" });
    outage = value;
    return send(res, 204);
  }
  if (req.method === "GET" && path === "/__test/requests") {
    return send(res, 200, { count: requests });
  }
  return send(res, 404, { error: `no control endpoint ${req.method} ${path}` });
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString("utf8");
  try {
    return text ? JSON.parse(text) : undefined;
  } catch {
    return undefined;
  }
}

function send(res, status, body, type = "application/json") {
  if (body === undefined) {
    res.writeHead(status).end();
  } else {
    res.writeHead(status, { "content-type": type, "cache-control": "no-store" }).end(JSON.stringify(body));
  }
}

// Gone when the test is: its end of stdin closes (or it sends SIGTERM).
process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();
process.on("SIGTERM", () => process.exit(0));

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
