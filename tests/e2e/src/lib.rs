//! Skiff e2e harness.
