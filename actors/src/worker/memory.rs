//! Returning freed heap memory to the OS after a flood of connections: glibc keeps what a
//! burst of handshakes allocated (about 44 KB each) as free heap, so RSS stays at the peak;
//! once the number of open connections has fallen by `[runtime] trim_memory_after` since
//! the last high point, one worker's idle sweep asks for `malloc_trim`. A burst that stays
//! open leaves free heap too: each TLS handshake's temporaries (its record buffers, the
//! handshake messages) are freed between the objects the connection keeps, about 2 KiB of
//! whole free pages per connection (measured, issue 18); so a rise of `trim_memory_after`
//! connections, once no connection has arrived for a second, trims as well. Must never
//! trim on a worker thread (it takes each arena's lock in turn: it runs on a blocking
//! thread) and never trim twice for one fall or one rise.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::debug;

use crate::state::table::clock_ms;
use crate::state::{inc, Shared, Stats};

/// How long no connection may have been accepted before a rise counts as over.
const RISE_SETTLED_MS: u64 = 1000;

/// Called after each idle sweep of each worker (at most a second apart): after a fall of
/// `trim_memory_after` from the high point (recorded at admission), or a rise of as many
/// from the low point once arrivals have stopped, trims once.
pub(crate) fn after_sweep(shared: &Arc<Shared>) {
    let every = shared.snapshot.load().config.runtime.trim_memory_after;
    if every == 0 {
        return;
    }
    let open = shared.open_connections();
    let stats = &shared.stats;
    // The low point follows every fall, so that a rise is counted from where it began.
    let low = stats
        .conn_low_water
        .fetch_min(open, Ordering::AcqRel)
        .min(open);
    let Some(from) = fell(stats, open, every).or_else(|| rose(stats, open, low, every)) else {
        return;
    };
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let released = crate::tls::ffi::trim_heap();
        inc(&shared.stats.memory_trims);
        debug!(
            from,
            open, released, "open connections changed: freed heap returned to the OS"
        );
    });
}

/// A fall of `every` from the high point: the high point it fell from (this worker won it).
fn fell(stats: &Stats, open: usize, every: usize) -> Option<usize> {
    let high_water = &stats.conn_high_water;
    let high = high_water.load(Ordering::Acquire);
    if high.saturating_sub(open) < every {
        return None;
    }
    // One worker wins the fall; the others see the new, lower high point.
    high_water
        .compare_exchange(high, open, Ordering::AcqRel, Ordering::Acquire)
        .ok()?;
    stats.conn_low_water.fetch_min(open, Ordering::AcqRel);
    Some(high)
}

/// A rise of `every` from the low point `low`, with no connection accepted for
/// [`RISE_SETTLED_MS`]: the low point it rose from (this worker won it).
fn rose(stats: &Stats, open: usize, low: usize, every: usize) -> Option<usize> {
    let now = clock_ms();
    let accepted = stats.accepted.load(Ordering::Relaxed);
    if stats.accepted_seen.swap(accepted, Ordering::AcqRel) != accepted {
        stats.accepted_still_since.store(now, Ordering::Relaxed);
        return None;
    }
    let still = now.saturating_sub(stats.accepted_still_since.load(Ordering::Relaxed));
    if open.saturating_sub(low) < every || still < RISE_SETTLED_MS {
        return None;
    }
    // One worker wins the rise; the others see the new, higher low point.
    stats
        .conn_low_water
        .compare_exchange(low, open, Ordering::AcqRel, Ordering::Acquire)
        .ok()?;
    Some(low)
}
