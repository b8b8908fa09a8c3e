# Shared by every page.
skip-to-content = Skip to content
language-switch = Language
sign-out = Sign out
back-to-sign-in = Back to sign-in
signed-in-as = Signed in as { $email }
field-email = Email address
field-password = Password

error-title = Something went wrong
error-generic = That did not work. Please try again.
error-csrf-failed = This form expired or came from another site. Reload the page and try again.
error-invalid-form = The form was incomplete. Please fill it in again.
error-invalid-credentials = The email address or password is not right.
error-too-many-attempts = Too many attempts. Wait a few minutes and try again.
error-too-many-concurrent-attempts = Too many sign-ins at once from here. Try again in a moment.
error-account-suspended = This account is suspended.
error-email-not-verified = Verify your email address first: follow the link we sent you.
error-overloaded = We are busy right now. Try again in a moment.
error-unavailable = The service is unavailable right now. Try again shortly.
error-rate-limited = Too many requests. Wait a moment and try again.
error-not-found = This page does not exist.

sign-in-title = Sign in
sign-in-submit = Sign in

account-title = Your account

# Why a password was refused (a Korean page's words; English pages show the policy's own).
password-too-short = must be at least { $min } characters
password-too-long = must be at most { $max } characters
password-personal-details = must not contain your email address or name
password-guessable = is too easy to guess
password-guessable-advice = a few uncommon words together are easy to remember and hard to guess
password-breached = has appeared in a data breach; choose another
