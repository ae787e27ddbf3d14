//! The filter's counters, counted in the engine and handed to the proxy in batches (the wasm
//! adapter flushes them on its tick: one host call per changed counter instead of one per event).

use crate::metrics::Metric;

/// Counts per [`Metric`] since the last [`Counters::drain`].
#[derive(Debug, Default, Clone)]
pub struct Counters {
    counts: [u64; Metric::ALL.len()],
    dirty: bool,
}

impl Counters {
    pub fn add(&mut self, metric: Metric) {
        self.counts[metric.index()] += 1;
        self.dirty = true;
    }

    /// Whether anything was counted since the last drain.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Hands every non-zero count to `f` and starts again from zero.
    pub fn drain(&mut self, mut f: impl FnMut(Metric, u64)) {
        if !self.dirty {
            return;
        }
        for m in Metric::ALL {
            let n = std::mem::take(&mut self.counts[m.index()]);
            if n > 0 {
                f(m, n);
            }
        }
        self.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_drained_once() {
        let mut c = Counters::default();
        assert!(!c.is_dirty());
        c.add(Metric::CacheHit);
        c.add(Metric::CacheHit);
        c.add(Metric::RequestsNoKey);
        let mut seen = Vec::new();
        c.drain(|m, n| seen.push((m, n)));
        assert_eq!(
            seen,
            vec![(Metric::RequestsNoKey, 1), (Metric::CacheHit, 2)]
        );
        c.drain(|_, _| panic!("nothing left"));
    }
}
