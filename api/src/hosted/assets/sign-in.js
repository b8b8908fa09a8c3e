// Passkeys on the hosted sign-in pages. Browsers offer WebAuthn to scripts
// only, so this is the pages' one script; everything else works without it.
//
// The ceremonies use the JSON API in cookie mode (`X-Keyledger-Session:
// cookie`): the answer sets the session's cookies, and no token is ever seen
// here. Then the browser goes where the server said (`data-return-to`, checked
// against the allowlist when the page was built).
//
// - `/sign-in`: `#passkey-sign-in` asks for any passkey of this site (modal),
//   and the email field offers them in its autofill (conditional mediation).
// - the second step: `#passkey-second-factor` answers it with a passkey.
"use strict";

(() => {
  const JSON_COOKIE_MODE = {
    "Content-Type": "application/json",
    "X-Keyledger-Session": "cookie",
  };

  /** POSTs `body` as JSON in cookie mode; the parsed answer, or an Error named by the server's code. */
  async function call(path, body) {
    const response = await fetch(path, {
      method: "POST",
      headers: JSON_COOKIE_MODE,
      credentials: "same-origin",
      body: JSON.stringify(body),
    });
    const text = await response.text();
    let answer = null;
    try {
      answer = text ? JSON.parse(text) : null;
    } catch {
      answer = null;
    }
    if (!response.ok) {
      const error = new Error(answer?.error ?? `http_${response.status}`);
      error.status = response.status;
      throw error;
    }
    return answer;
  }

  const supported = () =>
    typeof window.PublicKeyCredential === "function" &&
    typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function";

  /** Shows `message` in the page's passkey alert (its text comes from the page, in its language). */
  function show(button, message) {
    const alert = document.getElementById("passkey-error");
    if (!alert) return;
    alert.textContent = message;
    alert.hidden = !message;
  }

  /** Goes where the page was told to, once signed in; a same-origin path or an allowlisted URL. */
  function done(button) {
    window.location.assign(button.dataset.returnTo || "/account");
  }

  /** The sign-in page: a modal request from the button, and the email field's autofill. */
  function signInPage(button) {
    let pending = null; // The conditional request's AbortController, while it waits.

    async function signIn(conditional) {
      const start = await call("/v1/auth/passkey/start", {});
      const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(start.options.publicKey);
      const request = { publicKey };
      if (conditional) {
        pending = new AbortController();
        request.mediation = "conditional";
        request.signal = pending.signal;
      }
      const credential = await navigator.credentials.get(request);
      if (!credential) return false;
      // A passkey with user verification is both factors: no second step follows.
      await call("/v1/auth/passkey/finish", {
        challenge_id: start.challenge_id,
        credential: credential.toJSON(),
      });
      return true;
    }

    async function autofill() {
      if (!supported() || typeof PublicKeyCredential.isConditionalMediationAvailable !== "function") return;
      if (!(await PublicKeyCredential.isConditionalMediationAvailable())) return;
      try {
        if (await signIn(true)) done(button);
      } catch (error) {
        // Aborted for the button's modal request, or dismissed: nothing to say.
        if (error.name === "AbortError" || error.name === "NotAllowedError") return;
        show(button, button.dataset.failed);
      }
    }

    button.addEventListener("click", async () => {
      if (!supported()) {
        show(button, button.dataset.unsupported);
        return;
      }
      show(button, "");
      // One WebAuthn request at a time: the autofill's gives way to the dialog.
      if (pending) pending.abort();
      pending = null;
      button.disabled = true;
      try {
        if (await signIn(false)) done(button);
      } catch (error) {
        show(button, button.dataset.failed);
      } finally {
        button.disabled = false;
      }
    });

    autofill();
  }

  /** The second step: the login's `mfa_token` (the step form's hidden field) answered with a passkey. */
  function secondFactorPage(button) {
    button.addEventListener("click", async () => {
      if (!supported()) {
        show(button, button.dataset.unsupported);
        return;
      }
      show(button, "");
      const form = document.getElementById("second-factor-form");
      const mfaToken = form?.elements.namedItem("mfa_token")?.value;
      button.disabled = true;
      try {
        const start = await call("/v1/mfa/challenge", {
          mfa_token: mfaToken,
          method_id: button.dataset.methodId,
        });
        const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(start.options.publicKey);
        const credential = await navigator.credentials.get({ publicKey });
        await call("/v1/mfa/verify", { mfa_token: mfaToken, credential: credential.toJSON() });
        done(button);
      } catch (error) {
        show(button, button.dataset.failed);
      } finally {
        button.disabled = false;
      }
    });
  }

  function start() {
    const signIn = document.getElementById("passkey-sign-in");
    if (signIn) signInPage(signIn);
    const second = document.getElementById("passkey-second-factor");
    if (second) secondFactorPage(second);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
