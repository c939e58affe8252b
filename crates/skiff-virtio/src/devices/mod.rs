//! One folder per device.

pub mod block;
pub mod net;
pub mod rng;
