//! `POST /buy` and `POST /buys` bodies: any bytes parse without panic.
#![no_main]

use buy_tracker::domain::{Buy, parse_batch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Buy::from_json(data);
    if let Ok(value) = serde_json::from_slice(data) {
        let _ = parse_batch(&value);
    }
});
