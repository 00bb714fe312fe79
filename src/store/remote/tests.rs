//! Unit tests of the remote backend's error classification (compiled only for tests: `#[cfg(test)] mod tests;` in mod.rs).
#![cfg(test)]

use super::http_status;

#[test]
fn an_http_refusal_is_read_from_libsqls_error_without_its_body() {
    let message = "api error: `status=401 Unauthorized, body={\"error\":\"x\"}`";
    assert_eq!(http_status(message), Some("401 Unauthorized"));
    assert_eq!(http_status("api error: `SQLite error: no such table: events`"), None);
}
