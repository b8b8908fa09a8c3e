# 모든 페이지가 함께 쓰는 문구.
skip-to-content = 본문으로 건너뛰기
language-switch = 언어
sign-out = 로그아웃
back-to-sign-in = 로그인으로 돌아가기
signed-in-as = { $email }(으)로 로그인됨
field-email = 이메일 주소
field-password = 비밀번호

error-title = 문제가 발생했습니다
error-generic = 처리하지 못했습니다. 다시 시도해 주세요.
error-csrf-failed = 이 양식이 만료되었거나 다른 사이트에서 왔습니다. 페이지를 새로 고친 뒤 다시 시도해 주세요.
error-invalid-form = 양식이 완전하지 않습니다. 다시 입력해 주세요.
error-invalid-credentials = 이메일 주소 또는 비밀번호가 올바르지 않습니다.
error-too-many-attempts = 시도 횟수가 너무 많습니다. 몇 분 뒤에 다시 시도해 주세요.
error-too-many-concurrent-attempts = 이곳에서 동시에 로그인하는 시도가 너무 많습니다. 잠시 뒤에 다시 시도해 주세요.
error-account-suspended = 정지된 계정입니다.
error-email-not-verified = 먼저 이메일 주소를 인증해 주세요. 보내 드린 링크를 열면 됩니다.
error-overloaded = 지금은 요청이 많습니다. 잠시 뒤에 다시 시도해 주세요.
error-unavailable = 지금은 서비스를 이용할 수 없습니다. 잠시 뒤에 다시 시도해 주세요.
error-rate-limited = 요청이 너무 많습니다. 잠시 기다린 뒤 다시 시도해 주세요.
error-not-found = 없는 페이지입니다.

sign-in-title = 로그인
sign-in-submit = 로그인

account-title = 내 계정

# 비밀번호가 거절된 이유.
password-too-short = { $min }자 이상이어야 합니다
password-too-long = { $max }자 이하여야 합니다
password-personal-details = 이메일 주소나 이름을 포함하면 안 됩니다
password-guessable = 너무 쉽게 추측할 수 있습니다
password-guessable-advice = 흔하지 않은 단어 몇 개를 이어 쓰면 기억하기 쉽고 추측하기 어렵습니다
password-breached = 데이터 유출에 나온 적이 있는 비밀번호입니다. 다른 비밀번호를 고르세요
