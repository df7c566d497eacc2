//! Latency histograms shared by a load generator's connections.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;

/// Highest latency recorded, in µs (100 s); longer ones are clamped to it.
pub(crate) const MAX_LATENCY_US: u64 = 100_000_000;

/// HDR histograms in microseconds, in shards so that a thousand connections recording at once
/// rarely wait on one lock (one histogram per connection would cost ~100 KiB each: a gigabyte
/// at 10 000 connections).
pub(crate) struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Latencies {
    pub(crate) fn new(conns: usize) -> anyhow::Result<Latencies> {
        let shards = (0..conns.clamp(1, 64))
            .map(|_| Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map(Mutex::new))
            .collect::<Result<_, _>>()
            .context("cannot create the latency histogram")?;
        Ok(Latencies { shards })
    }

    /// Records one latency measured by connection `conn`.
    pub(crate) fn record(&self, conn: usize, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.shards[conn % self.shards.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(us);
    }

    /// All shards in one histogram.
    pub(crate) fn merged(&self) -> anyhow::Result<Histogram<u64>> {
        let mut all = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .context("cannot create the latency histogram")?;
        for shard in &self.shards {
            all.add(&*shard.lock().unwrap_or_else(PoisonError::into_inner))
                .context("merging latency histograms")?;
        }
        Ok(all)
    }
}
