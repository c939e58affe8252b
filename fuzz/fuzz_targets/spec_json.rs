//! The VM spec parser, JSON side (API bodies): any text either fails with an error or
//! gives a valid spec that survives being written out and read back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::VmSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    skiff_fuzz::spec::round_trip(VmSpec::from_json(text));
});
