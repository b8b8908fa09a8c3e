-- Data keys wrapped at rest (security review, issue #12).
--
-- A data key stored in clear beside the ciphertexts it opens protects nothing
-- against a copy of the database. From now on `key` holds the data key wrapped
-- (XChaCha20-Poly1305) with a key-encryption key kept outside the database
-- (KEYLEDGER_DATA_KEY_WRAPPING_KEY): a format byte, the wrapping key's id, the
-- nonce and the sealed key, 81 bytes. Keys stored before (32 bytes, in clear) stay
-- readable and are rewrapped by the server at its next start.
ALTER TABLE user_data_keys DROP CONSTRAINT user_data_keys_key_check;
ALTER TABLE user_data_keys ADD CONSTRAINT user_data_keys_key_check
    CHECK (key IS NULL OR length(key) IN (32, 81));
