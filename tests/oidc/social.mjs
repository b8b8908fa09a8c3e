// Kakao's and Naver's login endpoints on loopback, for the social-login e2e
// tests: neither speaks OpenID Connect by default, each has its own token and
// profile shapes, and the server under test must get those right. The shapes
// follow their developer documentation (developers.kakao.com "Kakao Login REST
// API", developers.naver.com "네이버 로그인 API 명세"); where the documentation
// says nothing (PKCE at Kakao is only visible in its SDKs), the comment says so.
//
// Paths (each provider under its own prefix, standing for its hosts):
//   Kakao: /kakao/oauth/authorize, /kakao/oauth/token (kauth.kakao.com),
//          /kakao/v2/user/me (kapi.kakao.com)
//   Naver: /naver/oauth2.0/authorize, /naver/oauth2.0/token (nid.naver.com),
//          /naver/v1/nid/me (openapi.naver.com)
// The authorize endpoints log in without a page: the test appends `test_user`
// (a name given to PUT /__test/users/:provider/:name) or `test_deny=1` (the user
// refuses) to the URL the server sent it to.
//
// Stdout carries one line, {"base": "http://127.0.0.1:<port>"}; everything else
// goes to stderr. tests/src/oidc.rs (`SocialProviders`) starts it.

import { createServer } from "node:http";
import { createHash, randomBytes } from "node:crypto";

const CLIENTS = {
  kakao: { id: required("KAKAO_CLIENT_ID"), secret: required("KAKAO_CLIENT_SECRET") },
  naver: { id: required("NAVER_CLIENT_ID"), secret: required("NAVER_CLIENT_SECRET") },
};

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`social.mjs: the environment variable ${name} is required`);
    process.exit(2);
  }
  return value;
}

// An authorization code lives a minute and is used once, as at both providers.
const CODE_TTL_MS = 60_000;
// Access tokens' lifetimes in seconds; a test shortens them to see a kept
// token refreshed (PUT /__test/access_ttl).
const ACCESS_TTL_S = { kakao: 21599, naver: 3600 };

const users = { kakao: new Map(), naver: new Map() }; // name -> profile fields
let redirectUris = [];
const codes = new Map(); // code -> {provider, user, redirectUri, state, challenge, method, expires}
const accessTokens = new Map(); // token -> {provider, user, expires}
const refreshTokens = new Map(); // token -> {provider, user}
const requests = { kakao: 0, naver: 0 };

const random = (bytes = 24) => randomBytes(bytes).toString("base64url");

const server = createServer(async (req, res) => {
  try {
    const url = new URL(req.url, "http://127.0.0.1");
    const path = url.pathname;
    if (path.startsWith("/__test/")) return await control(req, res, path);
    const provider = path.split("/")[1];
    if (provider === "kakao" || provider === "naver") requests[provider] += 1;
    const params = await parameters(req, url);
    switch (`${req.method} ${path}`) {
      case "GET /kakao/oauth/authorize":
        return kakaoAuthorize(res, params);
      case "POST /kakao/oauth/token":
        return kakaoToken(res, params);
      case "GET /kakao/v2/user/me":
      case "POST /kakao/v2/user/me":
        return kakaoMe(req, res);
      case "GET /naver/oauth2.0/authorize":
        return naverAuthorize(res, params);
      case "GET /naver/oauth2.0/token":
      case "POST /naver/oauth2.0/token":
        return naverToken(res, params);
      case "GET /naver/v1/nid/me":
        return naverMe(req, res);
      default:
        return send(res, 404, { error: "not_found", error_description: `${req.method} ${path}` });
    }
  } catch (error) {
    console.error(error);
    if (!res.headersSent) send(res, 500, { error: "server_error", error_description: String(error) });
  }
});

// Query parameters, and a form body's over them (the token endpoints take both).
async function parameters(req, url) {
  const params = Object.fromEntries(url.searchParams);
  const type = req.headers["content-type"] ?? "";
  const body = await readBody(req);
  if (body && type.startsWith("application/x-www-form-urlencoded")) {
    Object.assign(params, Object.fromEntries(new URLSearchParams(body)));
  }
  return params;
}

// ---------------------------------------------------------------- Kakao

function kakaoAuthorize(res, params) {
  // Kakao shows an error page (KOE101, KOE006) rather than redirecting when the
  // app key or the redirect URI is wrong: a redirect there would be open.
  if (params.client_id !== CLIENTS.kakao.id) return page(res, 400, "KOE101: invalid client_id");
  if (!redirectUris.includes(params.redirect_uri)) return page(res, 400, "KOE006: unregistered redirect_uri");
  if (params.response_type !== "code") {
    return redirectBack(res, params.redirect_uri, { error: "invalid_request", error_description: `Unsupported response type: ${params.response_type}`, state: params.state });
  }
  if (params.test_deny === "1") {
    return redirectBack(res, params.redirect_uri, { error: "access_denied", error_description: "User denied access", state: params.state });
  }
  const user = users.kakao.get(params.test_user);
  if (!user) return page(res, 400, `unknown kakao test_user ${params.test_user} (PUT /__test/users/kakao/:name)`);
  // PKCE: Kakao's SDKs send code_challenge/code_challenge_method here and
  // code_verifier to the token endpoint; a challenge given is enforced.
  if (params.code_challenge && !["S256", "plain", undefined].includes(params.code_challenge_method)) {
    return redirectBack(res, params.redirect_uri, { error: "invalid_request", error_description: "unsupported code_challenge_method", state: params.state });
  }
  const code = issueCode("kakao", params.test_user, params);
  return redirectBack(res, params.redirect_uri, { code, state: params.state });
}

function kakaoToken(res, params) {
  // Kakao takes the client's credentials in the form only, and answers errors
  // with 400 (401 for client authentication) and {error, error_description, error_code}.
  const fail = (status, error, description, code) =>
    send(res, status, { error, error_description: description, ...(code ? { error_code: code } : {}) });
  if (params.client_id !== CLIENTS.kakao.id) return fail(401, "invalid_client", `Not exist client_id [${params.client_id}]`, "KOE101");
  if (params.client_secret !== CLIENTS.kakao.secret) return fail(401, "invalid_client", "Bad client credentials", "KOE010");
  if (params.grant_type === "refresh_token") {
    const grant = refreshTokens.get(params.refresh_token);
    if (!grant || grant.provider !== "kakao") return fail(400, "invalid_grant", `refresh_token not found for refresh_token=${params.refresh_token}`, "KOE322");
    // Kakao returns a new refresh token only near the old one's expiry; in a
    // test's minutes, never: the old one stays valid.
    return send(res, 200, { token_type: "bearer", access_token: issueAccess("kakao", grant.user), expires_in: ACCESS_TTL_S.kakao });
  }
  if (params.grant_type !== "authorization_code") return fail(400, "unsupported_grant_type", `grant_type ${params.grant_type}`);
  const grant = takeCode("kakao", params.code);
  if (!grant) return fail(400, "invalid_grant", `authorization code not found for code=${params.code}`, "KOE320");
  if (params.redirect_uri !== grant.redirectUri) return fail(400, "invalid_grant", "Redirect URI mismatch.", "KOE303");
  if (!pkceHolds(grant, params.code_verifier)) return fail(400, "invalid_grant", "PKCE verification failed.");
  const refresh = random();
  refreshTokens.set(refresh, { provider: "kakao", user: grant.user });
  return send(res, 200, {
    token_type: "bearer",
    access_token: issueAccess("kakao", grant.user),
    expires_in: ACCESS_TTL_S.kakao,
    refresh_token: refresh,
    refresh_token_expires_in: 5183999,
    scope: "account_email profile_nickname",
  });
}

function kakaoMe(req, res) {
  const grant = bearer(req, "kakao");
  // kapi.kakao.com's error shape: {msg, code} with a negative code.
  if (!grant) return send(res, 401, { msg: "this access token does not exist", code: -401 });
  const user = users.kakao.get(grant.user);
  // The id is an int64 number on the wire; it is kept as its digits and
  // written as a bare number, so ids beyond 2^53 reach the server exactly.
  const body = {
    id: "__KAKAO_ID__",
    connected_at: user.connected_at,
    kakao_account: {
      profile_nickname_needs_agreement: false,
      profile: { nickname: user.nickname, is_default_nickname: false },
      has_email: true,
      email_needs_agreement: false,
      is_email_valid: user.is_email_valid,
      is_email_verified: user.is_email_verified,
      email: user.email,
    },
  };
  const text = JSON.stringify(body).replace('"__KAKAO_ID__"', user.id);
  res.writeHead(200, { "content-type": "application/json;charset=UTF-8", "cache-control": "no-store" }).end(text);
  return undefined;
}

// ---------------------------------------------------------------- Naver

function naverAuthorize(res, params) {
  if (params.client_id !== CLIENTS.naver.id) return page(res, 400, "invalid client_id");
  if (!redirectUris.includes(params.redirect_uri)) return page(res, 400, "unregistered redirect_uri");
  // Naver requires state (against CSRF) and refuses the request without it.
  if (!params.state) return page(res, 400, "state is required");
  if (params.response_type !== "code") {
    return redirectBack(res, params.redirect_uri, { state: params.state, error: "unsupported_response_type", error_description: "unsupported response_type" });
  }
  if (params.test_deny === "1") {
    return redirectBack(res, params.redirect_uri, { state: params.state, error: "access_denied", error_description: "Canceled By User" });
  }
  const user = users.naver.get(params.test_user);
  if (!user) return page(res, 400, `unknown naver test_user ${params.test_user} (PUT /__test/users/naver/:name)`);
  const code = issueCode("naver", params.test_user, params);
  return redirectBack(res, params.redirect_uri, { code, state: params.state });
}

function naverToken(res, params) {
  // Naver answers every token error with HTTP 200 and {error, error_description}.
  const fail = (error, description) => send(res, 200, { error, error_description: description });
  if (params.client_id !== CLIENTS.naver.id || params.client_secret !== CLIENTS.naver.secret) {
    return fail("invalid_request", "wrong client id / client secret pair");
  }
  if (params.grant_type === "refresh_token") {
    const grant = refreshTokens.get(params.refresh_token);
    if (!grant || grant.provider !== "naver") return fail("invalid_request", "invalid refresh_token");
    return send(res, 200, { access_token: issueAccess("naver", grant.user), token_type: "bearer", expires_in: String(ACCESS_TTL_S.naver) });
  }
  if (params.grant_type !== "authorization_code") return fail("unsupported_grant_type", `grant_type ${params.grant_type}`);
  if (!params.state) return fail("invalid_request", "state is required");
  const grant = takeCode("naver", params.code);
  if (!grant) return fail("invalid_request", "no valid data in session");
  if (params.state !== grant.state) return fail("invalid_request", "state mismatch");
  const refresh = random();
  refreshTokens.set(refresh, { provider: "naver", user: grant.user });
  // expires_in is a string at Naver: a client must not insist on a number.
  return send(res, 200, {
    access_token: issueAccess("naver", grant.user),
    refresh_token: refresh,
    token_type: "bearer",
    expires_in: String(ACCESS_TTL_S.naver),
  });
}

function naverMe(req, res) {
  const grant = bearer(req, "naver");
  if (!grant) return send(res, 401, { resultcode: "024", message: "Authentication failed / 인증에 실패했습니다." });
  const { id, email, nickname, name } = users.naver.get(grant.user);
  return send(res, 200, { resultcode: "00", message: "success", response: { id, email, nickname, name } });
}

// ---------------------------------------------------------------- shared

function issueCode(provider, user, params) {
  const code = random(16);
  codes.set(code, {
    provider,
    user,
    redirectUri: params.redirect_uri,
    state: params.state,
    challenge: params.code_challenge,
    method: params.code_challenge_method ?? "plain",
    expires: Date.now() + CODE_TTL_MS,
  });
  return code;
}

// The code's grant, once: a code is deleted at its first use, right or wrong.
function takeCode(provider, code) {
  const grant = codes.get(code);
  if (!grant) return undefined;
  codes.delete(code);
  if (grant.provider !== provider || grant.expires < Date.now()) return undefined;
  return grant;
}

function pkceHolds(grant, verifier) {
  if (!grant.challenge) return true;
  if (typeof verifier !== "string") return false;
  const derived = grant.method === "S256" ? createHash("sha256").update(verifier).digest("base64url") : verifier;
  return derived === grant.challenge;
}

function issueAccess(provider, user) {
  const token = random();
  accessTokens.set(token, { provider, user, expires: Date.now() + ACCESS_TTL_S[provider] * 1000 });
  return token;
}

function bearer(req, provider) {
  const match = /^Bearer (\S+)$/i.exec(req.headers.authorization ?? "");
  const grant = match && accessTokens.get(match[1]);
  if (!grant || grant.provider !== provider || grant.expires < Date.now()) return undefined;
  // A user removed since stays unknown.
  return users[provider].has(grant.user) ? grant : undefined;
}

function redirectBack(res, redirectUri, params) {
  const target = new URL(redirectUri);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined) target.searchParams.set(key, value);
  }
  res.writeHead(302, { location: target.href, "cache-control": "no-store" }).end();
}

function page(res, status, text) {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8" }).end(`${text}\n`);
}

async function control(req, res, path) {
  const user = path.match(/^\/__test\/users\/(kakao|naver)\/([^/]+)$/);
  if (req.method === "PUT" && user) {
    const [, provider, name] = user;
    const text = await readBody(req);
    const fields = parseJson(text);
    // A Kakao id beyond 2^53 would lose digits in JSON.parse: take them from the text.
    const digits = provider === "kakao" && /"id"\s*:\s*"?([0-9]+)"?/.exec(text);
    if (fields && digits) fields.id = digits[1];
    const problem = provider === "kakao" ? kakaoProblem(fields) : naverProblem(fields);
    if (problem) return send(res, 400, { error: problem });
    users[provider].set(decodeURIComponent(name), provider === "kakao" ? kakaoUser(fields) : fields);
    return send(res, 204);
  }
  if (req.method === "PUT" && path === "/__test/redirect_uris") {
    const uris = parseJson(await readBody(req));
    if (!Array.isArray(uris) || !uris.every((u) => typeof u === "string")) return send(res, 400, { error: "a list of URIs is expected" });
    redirectUris = uris;
    return send(res, 204);
  }
  if (req.method === "PUT" && path === "/__test/access_ttl") {
    const ttl = parseJson(await readBody(req));
    for (const provider of ["kakao", "naver"]) {
      if (ttl && Number.isInteger(ttl[provider]) && ttl[provider] > 0) ACCESS_TTL_S[provider] = ttl[provider];
    }
    return send(res, 204);
  }
  if (req.method === "GET" && path === "/__test/requests") {
    return send(res, 200, { count: requests.kakao + requests.naver, ...requests });
  }
  return send(res, 404, { error: `no control endpoint ${req.method} ${path}` });
}

function kakaoProblem(fields) {
  if (!fields || typeof fields !== "object") return "a JSON object is expected";
  if (!/^[0-9]{1,19}$/.test(String(fields.id))) return "kakao: id must be a non-negative int64 (a number, or its digits as a string)";
  return undefined;
}

function naverProblem(fields) {
  if (!fields || typeof fields !== "object") return "a JSON object is expected";
  if (typeof fields.id !== "string") return "naver: id must be a string";
  return undefined;
}

function kakaoUser(fields) {
  return {
    ...fields,
    id: String(fields.id),
    connected_at: fields.connected_at ?? new Date().toISOString().replace(/\.\d+Z$/, "Z"),
  };
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

function parseJson(text) {
  try {
    return text ? JSON.parse(text) : undefined;
  } catch {
    return undefined;
  }
}

function send(res, status, body) {
  if (body === undefined) {
    res.writeHead(status).end();
  } else {
    res.writeHead(status, { "content-type": "application/json;charset=UTF-8", "cache-control": "no-store" }).end(JSON.stringify(body));
  }
}

await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));

// Gone when the test is: its end of stdin closes (or it sends SIGTERM).
process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();
process.on("SIGTERM", () => process.exit(0));

process.stdout.write(`${JSON.stringify({ base: `http://127.0.0.1:${server.address().port}` })}\n`);
