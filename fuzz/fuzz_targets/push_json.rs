//! `POST /sync/push` in JSON: the body parser, then the batch validation
//! the handler runs before anything is written. Any input: an error, never a panic.
#![no_main]

use echolia::sync::push::validate;
use echolia::sync::wire::PushRequest;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

/// The caller's device, as the token would name it; seeds use it in versions.
const DEVICE: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = echolia::http::json::parse::<PushRequest>(data) {
        let _ = validate(DEVICE, request.events);
    }
});
