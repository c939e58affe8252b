//! The daemon's API body parser (`POST /v1/vms`): any body is refused with an error that
//! names the problem, or gives a spec that survives the trip through JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::SpecError;

fuzz_target!(|data: &[u8]| {
    // The daemon validates a parsed spec next (`check_spec`, which also looks at the host's
    // files); its pure part is `VmSpec::validate`.
    let parsed = skiff_host::validate::parse_spec(data)
        .map_err(|e| SpecError::Parse(e.to_string()))
        .and_then(|spec| spec.validate().map(|()| spec));
    skiff_fuzz::spec::round_trip(parsed);
});
