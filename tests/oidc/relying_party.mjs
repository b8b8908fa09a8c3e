// An app signing in to Keyledger's OpenID provider with a relying-party library
// we did not write (openid-client, on oauth4webapi), checking what it receives
// with an independent JOSE library (jose) from the published JWKS only.
//
// The test drives it over stdin/stdout, one JSON object per line: the first line
// out is the provider's metadata as discovery found it; then each line in is an
// operation and each line out its result ({"error": …} when the library or the
// server refused). The test plays the browser in between.
//
// Environment: ISSUER, CLIENT_ID, CLIENT_SECRET (absent for a public client),
// AUTH_METHOD (client_secret_basic | client_secret_post | none), ID_TOKEN_ALG
// (RS256 by default).
import * as client from 'openid-client';
import * as jose from 'jose';
import readline from 'node:readline';

const issuer = new URL(process.env.ISSUER);
const clientId = process.env.CLIENT_ID;
const secret = process.env.CLIENT_SECRET;
const method = process.env.AUTH_METHOD || 'client_secret_basic';
const idTokenAlg = process.env.ID_TOKEN_ALG || 'RS256';

const authentication = {
  client_secret_basic: () => client.ClientSecretBasic(secret),
  client_secret_post: () => client.ClientSecretPost(secret),
  none: () => client.None(),
}[method]();

const config = await client.discovery(
  issuer,
  clientId,
  { id_token_signed_response_alg: idTokenAlg },
  authentication,
  // Loopback over http in tests; a real deployment is https.
  { execute: [client.allowInsecureRequests] },
);
const metadata = config.serverMetadata();
const jwks = jose.createRemoteJWKSet(new URL(metadata.jwks_uri));

const out = (value) => process.stdout.write(JSON.stringify(value) + '\n');
out({ metadata });

// The flow in progress: what the authorization request was sent with.
let pending = null;

// An ID token, and an access token when it is a JWT, checked by jose against
// the JWKS alone: signature, issuer, audience, lifetime, `typ`.
async function verified(tokens) {
  const result = {};
  if (tokens.id_token) {
    const { payload, protectedHeader } = await jose.jwtVerify(tokens.id_token, jwks, {
      issuer: metadata.issuer,
      audience: clientId,
      algorithms: [idTokenAlg],
    });
    result.id_token = { header: protectedHeader, payload };
  }
  if (tokens.access_token && tokens.access_token.split('.').length === 3) {
    const { payload, protectedHeader } = await jose.jwtVerify(tokens.access_token, jwks, {
      issuer: metadata.issuer,
      typ: 'at+jwt',
    });
    result.access_token = { header: protectedHeader, payload };
  }
  return result;
}

function plain(tokens) {
  const { access_token, refresh_token, id_token, token_type, expires_in, scope } = tokens;
  return { access_token, refresh_token, id_token, token_type, expires_in, scope };
}

const operations = {
  async authorize({ scope, parameters = {}, pkce = true }) {
    const verifier = client.randomPKCECodeVerifier();
    pending = { verifier: pkce ? verifier : undefined, state: client.randomState(), nonce: client.randomNonce() };
    const request = {
      redirect_uri: parameters.redirect_uri ?? process.env.REDIRECT_URI,
      scope,
      state: pending.state,
      nonce: pending.nonce,
      ...parameters,
    };
    if (pkce) {
      request.code_challenge = await client.calculatePKCECodeChallenge(verifier);
      request.code_challenge_method = 'S256';
    }
    return { url: client.buildAuthorizationUrl(config, request).href, state: pending.state };
  },

  async callback({ url }) {
    const tokens = await client.authorizationCodeGrant(config, new URL(url), {
      pkceCodeVerifier: pending.verifier,
      expectedState: pending.state,
      expectedNonce: pending.nonce,
      idTokenExpected: true,
    });
    return { tokens: plain(tokens), claims: tokens.claims(), verified: await verified(tokens) };
  },

  async exchange_again({ url }) {
    // The same code a second time, as a thief replaying it would.
    const tokens = await client.authorizationCodeGrant(config, new URL(url), {
      pkceCodeVerifier: pending.verifier,
      expectedState: pending.state,
      expectedNonce: pending.nonce,
    });
    return { tokens: plain(tokens) };
  },

  async userinfo({ access_token, sub }) {
    return { userinfo: await client.fetchUserInfo(config, access_token, sub) };
  },

  async refresh({ refresh_token, scope }) {
    const tokens = await client.refreshTokenGrant(config, refresh_token, scope ? { scope } : undefined);
    return { tokens: plain(tokens), claims: tokens.claims() ?? null, verified: await verified(tokens) };
  },

  async introspect({ token, hint }) {
    return { introspection: await client.tokenIntrospection(config, token, hint ? { token_type_hint: hint } : undefined) };
  },

  async revoke({ token, hint }) {
    await client.tokenRevocation(config, token, hint ? { token_type_hint: hint } : undefined);
    return { revoked: true };
  },

  async logout_url({ id_token_hint, post_logout_redirect_uri, state }) {
    const parameters = { id_token_hint, state };
    if (post_logout_redirect_uri) parameters.post_logout_redirect_uri = post_logout_redirect_uri;
    return { url: client.buildEndSessionUrl(config, parameters).href };
  },

  async verify({ token }) {
    // Anything signed by the provider's keys, checked by jose alone.
    const { payload, protectedHeader } = await jose.jwtVerify(token, jwks, { issuer: metadata.issuer });
    return { header: protectedHeader, payload };
  },
};

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const { op, ...input } = JSON.parse(line);
  try {
    out(await operations[op](input));
  } catch (e) {
    // A response the library found wrong comes as its cause: keep what the
    // server said, for the test's message.
    const response = e.cause instanceof Response ? e.cause : e.response;
    let body = null;
    if (response && !response.bodyUsed) body = await response.text().catch(() => null);
    out({
      error: e.error ?? e.code ?? e.name,
      description: e.error_description ?? e.message,
      status: e.status ?? response?.status ?? null,
      body,
    });
  }
}
