//! One folder per device.

pub mod block;
pub mod rng;
