//! Admission control of TCP/TLS connections: a total and a per-source-IP bound, the
//! [`Slot`] that gives a connection's place back when it is dropped. Must never block: an
//! accept is admitted or refused at once.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::state::Shared;

/// Admission control of TCP/TLS connections: a total and a per-source-IP bound.
#[derive(Debug, Default)]
pub struct Admission {
    open: AtomicUsize,
    /// Sharded: accepts on different workers rarely contend on one shard.
    per_ip: DashMap<IpAddr, usize>,
    /// Bytes of unfinished messages buffered per source IP (only streams holding some).
    partial: DashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
}

/// One admitted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot {
    shared: Arc<Shared>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let a = &self.shared.admission;
        a.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            // remove_if under the shard lock: the count and the removal are one step.
            if let Some(mut n) = a.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
            }
            a.per_ip.remove_if(&ip, |_, n| *n == 0);
        }
    }
}

impl Shared {
    /// A stream from `ip` now buffers `now` bytes of unfinished messages instead of
    /// `before`. `false` when that takes the IP over `limit` (0 = no bound): the caller
    /// closes the stream (and later releases what it holds with `now = 0`).
    pub(crate) fn hold_partial(&self, ip: IpAddr, before: usize, now: usize, limit: usize) -> bool {
        let p = &self.admission.partial;
        let mut entry = p.entry(ip).or_insert(0);
        *entry = entry.saturating_sub(before).saturating_add(now);
        let total = *entry;
        drop(entry);
        if total == 0 {
            p.remove_if(&ip, |_, n| *n == 0);
        }
        limit == 0 || total <= limit
    }

    /// Admits an incoming connection from `ip`, or says which limit refused it.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let conf = self.snapshot.load();
        let (max, max_ip) = (
            conf.config.connections.max_connections,
            conf.config.connections.max_connections_per_ip,
        );
        drop(conf);
        let a = &self.admission;
        let before = a.open.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            a.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        self.stats
            .conn_high_water
            .fetch_max(before + 1, Ordering::Relaxed);
        let mut entry = a.per_ip.entry(ip).or_insert(0);
        if max_ip != 0 && *entry >= max_ip {
            drop(entry);
            a.per_ip.remove_if(&ip, |_, n| *n == 0);
            a.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::PerIp);
        }
        *entry += 1;
        drop(entry);
        Ok(Slot {
            shared: self.clone(),
            ip: Some(ip),
        })
    }

    /// A slot for an outgoing connection: counted in the total, never refused (siprox
    /// itself decided to open it, and refusing would only lose the message).
    pub(crate) fn admit_outgoing(self: &Arc<Self>) -> Slot {
        self.admission.open.fetch_add(1, Ordering::AcqRel);
        Slot {
            shared: self.clone(),
            ip: None,
        }
    }

    /// Open TCP/TLS connections.
    pub fn open_connections(&self) -> usize {
        self.admission.open.load(Ordering::Acquire)
    }
}
