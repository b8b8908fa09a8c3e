# 로그인 쪽: 로그인, 2단계 인증, 가입, 메일 링크로 여는 페이지.
sign-in-or = 또는
sign-in-passkey = 패스키로 로그인
sign-in-passkey-failed = 패스키로 로그인하지 못했습니다. 다시 시도하거나 비밀번호로 로그인해 주세요.
sign-in-passkey-unsupported = 이 브라우저에서는 패스키를 쓸 수 없습니다.
sign-in-with-provider = { $provider }(으)로 계속하기
sign-in-social-heading = 다른 로그인 방법
sign-in-forgot-password = 비밀번호를 잊으셨나요?
sign-in-no-account = 아직 계정이 없으신가요?
sign-in-sign-up-link = 계정 만들기
sign-in-notice-registered = 계정이 만들어졌습니다. 로그인해 주세요.
sign-in-notice-account-deleted = 계정이 삭제되었습니다.

second-factor-title = 2단계 인증
second-factor-intro = 인증 앱의 코드, 보내 드린 코드 또는 백업 코드 중 하나를 입력해 주세요.
second-factor-code = 코드
second-factor-submit = 확인
second-factor-send-email = 이메일로 코드 받기
second-factor-send-sms = 문자로 코드 받기
second-factor-code-sent = 코드를 보내 드렸습니다. 한 번만, 몇 분 동안만 쓸 수 있습니다.
second-factor-passkey = 대신 패스키 사용하기
second-factor-other-ways = 다른 방법

sign-up-title = 계정 만들기
sign-up-display-name = 이름
sign-up-display-name-hint = 화면에 표시할 이름입니다(선택).
sign-up-password-hint = 8자 이상으로 정해 주세요. 서로 관계없는 단어 몇 개를 이으면 기억하기 쉽고 추측하기 어렵습니다.
sign-up-submit = 계정 만들기
sign-up-have-account = 이미 계정이 있으신가요?
sign-up-weak-password = 더 안전한 비밀번호를 정해 주세요.
check-inbox-title = 메일함을 확인해 주세요
check-inbox-text = 입력하신 주소로 메일을 보냈습니다. 메일의 링크를 눌러 계속 진행해 주세요. 도착하기까지 1분 정도 걸릴 수 있으니 스팸 메일함도 확인해 주세요.

verify-email-title = 이메일 주소 인증
verify-email-text = 이 주소가 본인의 것인지 확인해 주세요.
verify-email-submit = 주소 인증하기
email-verified-text = 이메일 주소가 인증되었습니다. 이제 로그인할 수 있습니다.

forgot-password-title = 비밀번호 찾기
forgot-password-text = 계정의 이메일 주소를 입력하시면 새 비밀번호를 정할 수 있는 링크를 메일로 보내 드립니다.
forgot-password-submit = 링크 보내기
reset-link-sent-text = 이 주소로 된 계정이 있다면 비밀번호 재설정 링크가 담긴 메일을 보내 드렸습니다. 링크는 잠시 동안만 쓸 수 있습니다.

reset-password-title = 새 비밀번호 정하기
reset-password-text = 앞으로 로그인할 때 쓸 비밀번호를 정해 주세요.
reset-password-new = 새 비밀번호
reset-password-submit = 새 비밀번호 저장
password-reset-text = 비밀번호가 바뀌었고 계정의 모든 세션이 종료되었습니다. 새 비밀번호로 로그인해 주세요.

unlock-title = 계정 잠금 해제
unlock-text = 로그인에 여러 번 실패하여 계정이 잠겼습니다. 잠금을 해제하면 다시 로그인할 수 있습니다.
unlock-submit = 잠금 해제하기
account-unlocked-text = 계정 잠금이 해제되었습니다. 다시 로그인할 수 있습니다.

email-login-title = 이메일로 로그인
email-login-text = 메일로 보내 드린 링크로 로그인을 계속합니다.
email-login-submit = 로그인

error-invalid-email = 올바른 이메일 주소가 아닌 것 같습니다.
error-invalid-display-name = 이름은 보이는 문자로 1자에서 100자 사이로 입력해 주세요.
error-weak-password = 추측하기 쉬운 비밀번호입니다.
error-email-taken = 이 주소로 된 계정이 이미 있습니다.
error-invalid-token = 이미 사용했거나 만료되었거나 올바르지 않은 링크입니다. 새 링크를 요청해 주세요.
error-invalid-code = 코드가 올바르지 않습니다. 다시 시도해 주세요.
error-invalid-mfa-token = 로그인 시간이 너무 오래 걸렸거나 잘못된 코드를 너무 많이 입력했습니다. 다시 로그인해 주세요.
error-second-factor-not-found = 이번 로그인에서는 그 방법을 쓸 수 없습니다.
error-invalid-state = 다른 브라우저에서 시작했거나 만료된 로그인입니다. 이 페이지에서 다시 시작해 주세요.
error-access-denied = 해당 서비스로 로그인하는 것이 취소되었습니다.
error-account-exists = 이 주소로 된 계정이 이미 있습니다. 그 계정으로 로그인한 뒤 계정 페이지에서 연결해 주세요.
error-provider-unavailable = 해당 서비스가 지금 응답하지 않습니다. 나중에 다시 시도하거나 다른 방법으로 로그인해 주세요.
error-provider-error = 해당 서비스의 응답을 처리하지 못했습니다. 다시 시도하거나 다른 방법으로 로그인해 주세요.
error-email-required = 해당 서비스에서 인증된 이메일 주소를 받지 못했습니다.
error-email-login-disabled = 이메일 로그인은 사용할 수 없습니다.

consent-title = 접근 허용
consent-heading = { $app }에서 계정 사용을 요청합니다
consent-text = 허용하면 이 앱은 다음을 할 수 있습니다.
consent-scope-openid = 로그인할 때 본인이 누구인지 확인
consent-scope-profile = 이름 보기
consent-scope-email = 이메일 주소와 인증 여부 보기
consent-scope-offline_access = 앱에서 로그아웃할 때까지 로그인 상태 유지
consent-redirect = 그다음 { $host }(으)로 돌아갑니다.
consent-allow = 허용
consent-deny = 거부

logout-title = 로그아웃
logout-heading = { $product }에서 로그아웃할까요?
logout-text = { $email }(으)로 로그인되어 있습니다. 여기서 로그아웃하면 이 페이지의 세션이 끝납니다.
logout-app = { $app }에서 요청했습니다.
logout-confirm = 로그아웃
logout-done-title = 로그아웃됨
logout-done-text = { $product }에서 로그아웃했습니다.
