//! The control socket's request parser: any line is a request or an error, and a request
//! reads back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::control::ControlRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(request) = ControlRequest::from_line(line) {
        let text = serde_json::to_string(&request).expect("a request serializes");
        let back = ControlRequest::from_line(&text).expect("a written request parses");
        assert_eq!(back, request);
    }
});
