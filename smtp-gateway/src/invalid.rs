//! [`Invalid`]: why a configuration section refused a value. Every section's `validate()`
//! returns it; `config.rs` adds the origin and the line and re-exports it as `config::Invalid`. A
//! leaf module at the bottom of the tree, so the sections name it without importing the file
//! that aggregates them.

/// A value of the right type that the gateway does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct Invalid {
    /// The dotted key, e.g. `dataplane.rate_limit.burst` (found in the file to name the line).
    pub key: String,
    /// What is wrong with the value.
    pub reason: String,
    /// The key whose line is named when `key` is not in the file: a rule across keys refusing a
    /// missing one (`backend.servers` when `smtp.listeners` is set) points at the key requiring it.
    pub line_of: Option<String>,
}

impl Invalid {
    /// `key` is refused because of `reason`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
            line_of: None,
        }
    }

    /// This refusal, named at the line of `other` when its own key is not in the file.
    pub fn at_line_of(mut self, other: impl Into<String>) -> Self {
        self.line_of = Some(other.into());
        self
    }
}

impl Invalid {
    /// `value` of `key` must be at most `max` ("must be at most N").
    pub fn at_most<T: PartialOrd + std::fmt::Display>(
        key: &str,
        value: T,
        max: T,
    ) -> Result<(), Invalid> {
        if value > max {
            return Err(Self::new(key, format!("must be at most {max}")));
        }
        Ok(())
    }

    /// `value` of `key` must be within `min..=max` ("must be at least N" / "must be at most N").
    pub fn in_range<T: PartialOrd + std::fmt::Display>(
        key: &str,
        value: T,
        min: T,
        max: T,
    ) -> Result<(), Invalid> {
        if value < min {
            return Err(Self::new(key, format!("must be at least {min}")));
        }
        Self::at_most(key, value, max)
    }

    /// Duration `value` of `key` must be within `min..=max`, both written as in the file.
    pub fn duration_in(
        key: &str,
        value: std::time::Duration,
        min: std::time::Duration,
        max: std::time::Duration,
    ) -> Result<(), Invalid> {
        let text = |d| humantime::format_duration(d).to_string();
        if value < min {
            return Err(Self::new(key, format!("must be at least {}", text(min))));
        }
        if value > max {
            return Err(Self::new(key, format!("must be at most {}", text(max))));
        }
        Ok(())
    }
}
