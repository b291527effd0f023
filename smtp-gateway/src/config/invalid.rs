//! [`Invalid`]: why a configuration section refused a value. Every section's `validate()`
//! returns it; `config.rs` adds the origin and the line. A leaf module, so the sections can name
//! it without importing the file that aggregates them.

/// A value of the right type that the gateway does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct Invalid {
    /// The dotted key, e.g. `dataplane.rate_limit.burst` (found in the file to name the line).
    pub key: String,
    /// What is wrong with the value.
    pub reason: String,
}

impl Invalid {
    /// `key` is refused because of `reason`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
