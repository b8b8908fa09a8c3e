// The account page's one script: registering a passkey, which browsers offer to
// scripts only. It calls the JSON API with this browser's cookie session; the
// page gives it the session's CSRF token (a data- attribute), which the API
// asks for in `X-CSRF-Token` on every cookie-authenticated change. The options
// and the answer are WebAuthn's JSON forms, as the server reads and writes them.
"use strict";

/** POSTs `body` as JSON with the session's cookies; the answer, or an Error named by its code. */
async function call(path, body, csrfToken) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  let answer = null;
  try { answer = text ? JSON.parse(text) : null; } catch (_) { answer = null; }
  if (!response.ok) {
    const error = new Error(answer && answer.error ? answer.error : `http_${response.status}`);
    error.status = response.status;
    throw error;
  }
  return answer;
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("passkey-registration");
  const button = document.getElementById("passkey-register");
  const name = document.getElementById("passkey-name");
  const status = document.getElementById("passkey-status");
  if (!box || !button || !name || !status) return;
  const show = (message) => { status.textContent = message; };

  if (!window.PublicKeyCredential || !PublicKeyCredential.parseCreationOptionsFromJSON) {
    button.disabled = true;
    show(box.dataset.unsupported);
    return;
  }

  button.addEventListener("click", async () => {
    const csrfToken = box.dataset.csrfToken;
    button.disabled = true;
    show(box.dataset.waiting);
    try {
      const start = await call("/v1/passkeys/register/start", {}, csrfToken);
      const options = start.options.publicKey;
      // A passkey the authenticator keeps, so it signs in without an address
      // typed first (discoverable sign-in and the browser's autofill).
      options.authenticatorSelection = Object.assign({}, options.authenticatorSelection, {
        residentKey: "required",
        requireResidentKey: true,
      });
      const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(options);
      const credential = await navigator.credentials.create({ publicKey });
      const typed = name.value.trim();
      const added = await call(
        "/v1/passkeys/register/finish",
        { challenge_id: start.challenge_id, credential: credential.toJSON(), name: typed || undefined },
        csrfToken,
      );
      const codes = added && Array.isArray(added.backup_codes) ? added.backup_codes : [];
      if (codes.length === 0) {
        // The list is the server's: show it as it now stands.
        window.location.reload();
        return;
      }
      // The account's first second factor brings backup codes, shown this once:
      // the page stays until the person has kept them.
      show(box.dataset.codesHint);
      const list = document.createElement("ul");
      list.id = "backup-codes";
      list.className = "codes";
      for (const code of codes) {
        const item = document.createElement("li");
        const text = document.createElement("code");
        text.textContent = code;
        item.append(text);
        list.append(item);
      }
      const doneLink = document.createElement("a");
      doneLink.href = "/account";
      doneLink.className = "button primary";
      doneLink.textContent = box.dataset.codesDone;
      box.append(list, doneLink);
      doneLink.focus();
    } catch (error) {
      button.disabled = false;
      show(error && error.message === "reauthentication_required"
        ? box.dataset.reauthenticate
        : box.dataset.failed);
    }
  });
});
