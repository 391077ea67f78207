//! Returning freed heap memory to the OS after a flood of connections: glibc keeps what a
//! burst of handshakes allocated (about 44 KB each) as free heap, so RSS stays at the peak;
//! once the number of open connections has fallen by `[runtime] trim_memory_after` since
//! the last high point, one worker's idle sweep asks for `malloc_trim`. Must never trim on
//! a worker thread (it takes each arena's lock in turn: it runs on a blocking thread) and
//! never trim twice for one fall.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::debug;

use crate::state::{inc, Shared};

/// Called after each idle sweep of each worker (at most a second apart): after a fall of
/// `trim_memory_after` from the high point (recorded at admission), trims once.
pub(crate) fn after_sweep(shared: &Arc<Shared>) {
    let every = shared.snapshot.load().config.runtime.trim_memory_after;
    if every == 0 {
        return;
    }
    let open = shared.open_connections();
    let high_water = &shared.stats.conn_high_water;
    let high = high_water.load(Ordering::Acquire);
    if high.saturating_sub(open) < every {
        return;
    }
    // One worker wins the fall; the others see the new, lower high point.
    if high_water
        .compare_exchange(high, open, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let released = crate::tls::ffi::trim_heap();
        inc(&shared.stats.memory_trims);
        debug!(
            from = high,
            open, released, "connections fell: freed heap returned to the OS"
        );
    });
}
