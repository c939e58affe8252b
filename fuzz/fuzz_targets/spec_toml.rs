//! The VM spec parser, TOML side: any text either fails with an error or gives a valid
//! spec that survives the trip through JSON (the daemon stores and serves specs as JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::VmSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    skiff_fuzz::spec::round_trip(VmSpec::from_toml(text));
});
