# The sign-in side: sign-in, its second step, sign-up and the pages mailed links open.
sign-in-or = or
sign-in-passkey = Sign in with a passkey
sign-in-passkey-failed = The passkey did not sign you in. Try again, or use your password.
sign-in-passkey-unsupported = This browser cannot use passkeys.
sign-in-with-provider = Continue with { $provider }
sign-in-social-heading = Other ways to sign in
sign-in-forgot-password = Forgot your password?
sign-in-no-account = No account yet?
sign-in-sign-up-link = Create one
sign-in-notice-registered = Your account is ready. Sign in.
sign-in-notice-account-deleted = Your account has been deleted.

second-factor-title = Two-step verification
second-factor-intro = Enter a code from your authenticator app, a code we sent you, or one of your backup codes.
second-factor-code = Code
second-factor-submit = Verify
second-factor-send-email = Email me a code
second-factor-send-sms = Text me a code
second-factor-code-sent = A code is on its way. It works once and only for a few minutes.
second-factor-passkey = Use a passkey instead
second-factor-other-ways = Other ways

sign-up-title = Create an account
sign-up-display-name = Your name
sign-up-display-name-hint = How we greet you (optional).
sign-up-password-hint = At least 8 characters. A few unrelated words are easy to remember and hard to guess.
sign-up-submit = Create account
sign-up-have-account = Already have an account?
sign-up-weak-password = Choose a stronger password:
check-inbox-title = Check your inbox
check-inbox-text = We sent a mail to the address you gave. Follow its link to go on. It may take a minute to arrive; look in your spam folder too.

verify-email-title = Verify your email address
verify-email-text = Confirm that this address is yours.
verify-email-submit = Verify my address
email-verified-text = Your email address is verified. You can sign in now.

forgot-password-title = Forgot your password
forgot-password-text = Enter your account's email address and we will mail you a link to choose a new password.
forgot-password-submit = Send the link
reset-link-sent-text = If an account has this address, a mail with a link to reset its password is on its way. The link works for a short time only.

reset-password-title = Choose a new password
reset-password-text = Choose the password you will sign in with from now on.
reset-password-new = New password
reset-password-submit = Set the new password
password-reset-text = Your password is changed, and every session of your account has ended. Sign in with your new password.

unlock-title = Unlock your account
unlock-text = Your account was locked after too many failed sign-ins. Unlock it to sign in again.
unlock-submit = Unlock my account
account-unlocked-text = Your account is unlocked. You can sign in again.

email-login-title = Sign in by email
email-login-text = Continue to sign in with the link we mailed you.
email-login-submit = Sign in

error-invalid-email = This does not look like an email address.
error-invalid-display-name = Use 1 to 100 visible characters for your name.
error-weak-password = This password is too easy to guess.
error-email-taken = An account with this address exists already.
error-invalid-token = This link is used, expired or not valid. Ask for a new one.
error-invalid-code = That code is not right. Try again.
error-invalid-mfa-token = This sign-in took too long or had too many wrong codes. Sign in again.
error-second-factor-not-found = That method is not available for this sign-in.
error-invalid-state = This sign-in was started in another browser or has expired. Start again from this page.
error-access-denied = The sign-in with that provider was cancelled.
error-account-exists = An account already has this address. Sign in to it, then link the provider on your account page.
error-provider-unavailable = That provider is not answering right now. Try again later or sign in another way.
error-provider-error = The provider's answer could not be used. Try again or sign in another way.
error-email-required = The provider did not give us a verified email address.
error-email-login-disabled = Sign-in by email is not available.

consent-title = Allow access
consent-heading = { $app } wants to use your account
consent-text = If you allow it, the app can:
consent-scope-openid = Know who you are when you sign in
consent-scope-profile = See your name
consent-scope-email = See your email address and whether it is verified
consent-scope-offline_access = Stay signed in to your account until you sign out of it
consent-redirect = Afterwards you go back to { $host }.
consent-allow = Allow
consent-deny = Deny

logout-title = Sign out
logout-heading = Sign out of { $product }?
logout-text = You are signed in as { $email }. Signing out here ends your session on these pages.
logout-app = { $app } asked for this.
logout-confirm = Sign out
logout-done-title = Signed out
logout-done-text = You have signed out of { $product }.
