//! One folder per device.

pub mod balloon;
pub mod block;
pub mod net;
pub mod rng;
pub mod vsock;
