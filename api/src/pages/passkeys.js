// Passkeys with Keyledger, in the browser: each ceremony asks the server for
// options, hands them to the authenticator and sends its answer back. The options
// and the answer are WebAuthn's JSON forms, which the server's webauthn-rs reads
// and writes as they are (PublicKeyCredential.parse*OptionsFromJSON, toJSON()).

/** POSTs `body` as JSON; the parsed answer, or an Error named by the server's `error` code. */
async function call(path, body, accessToken) {
  const headers = { "Content-Type": "application/json" };
  if (accessToken) headers.Authorization = `Bearer ${accessToken}`;
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  const text = await response.text();
  const answer = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error(answer?.error ?? `http_${response.status}`);
    error.status = response.status;
    error.detail = answer?.message;
    throw error;
  }
  return answer;
}

/** Registers a passkey for the signed-in account; its description (201). */
async function register(accessToken, name) {
  const start = await call("/v1/passkeys/register/start", {}, accessToken);
  const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(start.options.publicKey);
  const credential = await navigator.credentials.create({ publicKey });
  return call(
    "/v1/passkeys/register/finish",
    { challenge_id: start.challenge_id, credential: credential.toJSON(), name },
    accessToken,
  );
}

/**
 * Signs in with a passkey; the token pair. Without `email` the device offers every
 * passkey it holds for this site (a discoverable credential). `conditional: true`
 * waits for the user to pick one from the email field's autofill instead of
 * opening a dialog.
 */
async function signIn(email, { conditional = false } = {}) {
  const start = await call("/v1/auth/passkey/start", email ? { email } : {});
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(start.options.publicKey);
  const request = { publicKey };
  if (conditional && start.options.mediation) request.mediation = start.options.mediation;
  const credential = await navigator.credentials.get(request);
  return call("/v1/auth/passkey/finish", {
    challenge_id: start.challenge_id,
    credential: credential.toJSON(),
  });
}

/** Answers a login's second-factor step (`mfa_required`) with a passkey; the token pair. */
async function secondFactor(mfaToken, methodId) {
  const start = await call("/v1/mfa/challenge", { mfa_token: mfaToken, method_id: methodId });
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(start.options.publicKey);
  const credential = await navigator.credentials.get({ publicKey });
  return call("/v1/mfa/verify", { mfa_token: mfaToken, credential: credential.toJSON() });
}

window.keyledgerPasskeys = { register, signIn, secondFactor };

// The page's buttons. The tokens stay in this variable, in memory: a page's
// storage (localStorage) is readable by any script that ever runs on this origin.
let tokens = null;

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("passkeys");
  const email = document.getElementById("email");
  const status = document.getElementById("status");
  const show = (message) => { status.textContent = message; };
  const failure = (error) => `${error.message}${error.detail ? `: ${error.detail}` : ""}`;

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    show("Waiting for your passkey…");
    try {
      tokens = await signIn(email.value.trim() || undefined);
      show(`Signed in. Your session's access token is valid for ${tokens.expires_in} seconds.`);
    } catch (error) {
      show(`Sign-in failed (${failure(error)}).`);
    }
  });

  document.getElementById("register").addEventListener("click", async () => {
    if (!tokens) {
      show("Sign in first: a passkey is registered for the account you are signed in to.");
      return;
    }
    show("Creating your passkey…");
    try {
      const passkey = await register(tokens.access_token, "Passkey");
      show(`Registered the passkey “${passkey.name}”.`);
    } catch (error) {
      show(`Registration failed (${failure(error)}).`);
    }
  });
});
