//! Helpers shared by the end-to-end test binaries.

// Each suite uses a different part of the shared harness.
#[allow(dead_code)]
pub mod daemon;
pub mod netns;
