//! virtio-balloon's stats queue (see `skiff_fuzz::balloon`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_virtio::devices::balloon::Role;

fuzz_target!(|data: &[u8]| skiff_fuzz::balloon::run(data, Role::Stats));
