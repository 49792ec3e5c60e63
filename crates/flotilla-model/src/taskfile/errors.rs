//! The errors validation reports: one [`FieldError`] per bad field, all of them in [`ValidationErrors`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::truncate;

/// Longest path a [`FieldError`] keeps (a path may hold a caller's map key).
const MAX_PATH_BYTES: usize = 256;
/// Longest message a [`FieldError`] keeps.
const MAX_MESSAGE_BYTES: usize = 512;

/// One bad field: where it is and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    /// Both parts are bounded: a path may hold a caller's map key, a message may quote a
    /// caller's value, and the error travels back in gRPC metadata (8 KB in all).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        let (path, message) = (path.into(), message.into());
        FieldError { path: truncate(&path, MAX_PATH_BYTES), message: truncate(&message, MAX_MESSAGE_BYTES) }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every bad field of a request, one per line when displayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&lines.join("\n"))
    }
}
