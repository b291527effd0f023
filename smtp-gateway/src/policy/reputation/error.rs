//! Why loading the lists failed; every error names the list, most the file and line.

use std::{io, path::PathBuf};

/// Why [`Reputation::load`] failed. Every variant names the list.
#[derive(Debug, thiserror::Error)]
pub enum ReputationError {
    /// The configuration does not pass [`ReputationConfig::validate`].
    #[error("{key}: {message}")]
    Config {
        /// The dotted key (`reputation.lists`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A list file could not be opened or read.
    #[error("reputation list {list:?}: cannot read {}: {source}", .path.display())]
    Read {
        /// The list's name.
        list: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line is not a valid entry for the list's kind.
    #[error("reputation list {list:?}: {}: line {line}: {message}", .path.display())]
    Entry {
        /// The list's name.
        list: String,
        /// The file.
        path: PathBuf,
        /// The line number, 1-based.
        line: usize,
        /// What is wrong, quoting the entry.
        message: String,
    },
    /// The list as a whole cannot be built (too large, no bloom filter seed).
    #[error("reputation list {list:?}: {}: {message}", .path.display())]
    List {
        /// The list's name.
        list: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}
