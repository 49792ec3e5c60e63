//! Errors as the API server words them: a `Status` body with reason, code and message.

use serde_json::{json, Value};

use crate::kinds::Kind;

/// An error answer: HTTP `code`, the `Status` `reason`, the message, optional details.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, kind: Kind, name: &str) -> ApiError {
        let mut d = json!({"name": name, "kind": kind.plural()});
        if !kind.group().is_empty() {
            d["group"] = json!(kind.group());
        }
        self.details = Some(d);
        self
    }

    pub fn not_found(kind: Kind, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} {name:?} not found", kind.qualified())).with_details(kind, name)
    }

    pub fn already_exists(kind: Kind, name: &str) -> ApiError {
        ApiError::new(409, "AlreadyExists", format!("{} {name:?} already exists", kind.qualified())).with_details(kind, name)
    }

    pub fn conflict(kind: Kind, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                kind.qualified()
            ),
        )
        .with_details(kind, name)
    }

    pub fn invalid(kind: Kind, name: &str, causes: &[String]) -> ApiError {
        let what = format!("{}.{}", kind.kind(), if kind.group().is_empty() { "" } else { kind.group() });
        let what = what.trim_end_matches('.');
        ApiError::new(422, "Invalid", format!("{what} {name:?} is invalid: {}", causes.join(", "))).with_details(kind, name)
    }

    pub fn forbidden(kind: Kind, name: &str, why: &str) -> ApiError {
        ApiError::new(403, "Forbidden", format!("{} {name:?} is forbidden: {why}", kind.plural())).with_details(kind, name)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// A resourceVersion or continue token older than the history kept.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn path_not_found() -> ApiError {
        ApiError::new(404, "NotFound", "the server could not find the requested resource")
    }

    /// The reason the server gives for an injected error of `code`.
    pub fn injected(code: u16) -> ApiError {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        ApiError::new(code, reason, format!("injected by the test (HTTP {code})"))
    }

    /// The `Status` object of this error.
    pub fn to_status(&self) -> Value {
        let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code});
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.reason, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}
