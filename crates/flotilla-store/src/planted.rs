//! Safety checks the fault simulator can switch off, to show that it catches their absence
//! (`flotilla-bench chaos --plant ...`). Never set outside the simulator.

use std::sync::atomic::AtomicBool;

/// When set, leader decisions are forwarded like any proposal and applied whatever term
/// committed them: invariant 7 off, as in the first build.
#[doc(hidden)]
pub static SKIP_TERM_CHECK: AtomicBool = AtomicBool::new(false);

/// When set, a task whose attempt a decision ended may be leased again at once, before its
/// executor has stopped that attempt.
#[doc(hidden)]
pub static SKIP_STOP_CONFIRMATION: AtomicBool = AtomicBool::new(false);
