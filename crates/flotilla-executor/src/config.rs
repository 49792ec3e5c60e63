//! What both backends' settings files share: the error that names the file and the field,
//! and how durations are written. Each backend's own settings live beside its code:
//! [`crate::sim::config`] (the simulated federation's clusters file) and
//! [`crate::kube::config`] (the Kubernetes backend's settings).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A configuration file could not be used. The message names the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
}

/// Reads a humantime duration ("500ms", "2m").
pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration: {e}")))
}
