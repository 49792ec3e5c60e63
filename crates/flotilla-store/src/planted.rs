//! Safety checks the fault simulator can switch off, to show that it catches their absence
//! (`flotilla-bench chaos --plant ...`). Never set outside the simulator.

use std::sync::atomic::AtomicBool;

/// When set, leader decisions are applied whatever term committed them (invariant 7 off).
#[doc(hidden)]
pub static SKIP_TERM_CHECK: AtomicBool = AtomicBool::new(false);
