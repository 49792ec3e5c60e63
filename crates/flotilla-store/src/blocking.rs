//! Blocking work (fsync, scheduling) from async code.

/// Runs `f` where it cannot stall other tasks: on the blocking pool of a multi-threaded
/// runtime, inline on a current-thread runtime. Inline there is what makes a run of the
/// fault simulator (one thread, virtual time) reproducible: a blocking-pool thread would
/// finish at a moment no seed decides.
pub async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, tokio::task::JoinError> {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => Ok(f()),
        _ => tokio::task::spawn_blocking(f).await,
    }
}
