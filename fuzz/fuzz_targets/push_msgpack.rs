//! `POST /sync/push` in MessagePack: the strict decoder (names only, `bin`
//! payloads, nothing after the value), then the batch validation.
#![no_main]

use echolia::sync::push::validate;
use echolia::sync::wire::PushRequest;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

const DEVICE: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = echolia::http::codec::parse_msgpack::<PushRequest>(data) {
        let _ = validate(DEVICE, request.events);
    }
});
