//! Safety checks the fault simulator can switch off, to show that it catches their absence
//! (`flotilla-bench chaos --plant ...`). Never set outside the simulator.

use std::sync::atomic::AtomicBool;

/// When set, executors start attempts without a lease and never stop them when it expires.
#[doc(hidden)]
pub static SKIP_EXECUTOR_LEASE: AtomicBool = AtomicBool::new(false);
