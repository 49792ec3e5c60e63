//! Safety checks the fault simulator can switch off, to show that it catches their absence
//! (`flotilla-bench chaos --plant ...`). Never set outside the simulator.

use std::sync::atomic::AtomicBool;

/// When set, a replica that believes it leads grants leases without a quorum-confirmed
/// leadership lease (fenced leadership off).
#[doc(hidden)]
pub static SKIP_FENCE: AtomicBool = AtomicBool::new(false);
