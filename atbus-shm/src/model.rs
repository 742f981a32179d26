//! An in-memory [`Region`] for unit tests and loom models: every word, payload
//! included, is an atomic (so loom sees every access).

use crate::layout::{field, free_word};
use crate::ring::{Geometry, Region};
use crate::sync::{AtomicU64, Ordering};

/// A heap ring of `ring_size` bytes.
pub(crate) struct Model {
    fields: Vec<AtomicU64>,
    data: Vec<AtomicU64>,
    pub(crate) geo: Geometry,
}

impl Model {
    pub(crate) fn new(ring_size: u64, max_message: u64) -> Self {
        Self {
            fields: (0..=field::EXPIRED_CLAIMS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            data: (0..ring_size / 8).map(|_| AtomicU64::new(0)).collect(),
            geo: Geometry {
                ring_size,
                max_message,
            },
        }
    }

    /// Reads a counter.
    pub(crate) fn counter(&self, index: usize) -> u64 {
        self.fields[index].load(Ordering::Relaxed)
    }

    /// Whether every data word is free for its next use, given the reader's head
    /// (and nothing claimed beyond it).
    pub(crate) fn is_clear(&self, head: u64) -> bool {
        let lap = self.geo.lap(head);
        let split = head % self.geo.ring_size;
        self.data.iter().enumerate().all(|(i, w)| {
            let next_lap = if (i as u64) * 8 < split { lap + 1 } else { lap };
            w.load(Ordering::Relaxed) == free_word(next_lap)
        })
    }
}

impl Region for Model {
    fn field(&self, index: usize) -> &AtomicU64 {
        &self.fields[index]
    }

    fn data_word(&self, offset: u64) -> &AtomicU64 {
        &self.data[(offset / 8) as usize]
    }

    fn write_payload(&self, offset: u64, src: &[u8]) {
        for (i, chunk) in src.chunks(8).enumerate() {
            let word = self.data_word(offset + 8 * i as u64);
            let mut bytes = word.load(Ordering::Relaxed).to_le_bytes();
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
    }

    fn read_payload(&self, offset: u64, len: u64, dst: &mut Vec<u8>) {
        let mut left = len as usize;
        let mut at = offset;
        while left > 0 {
            let bytes = self.data_word(at).load(Ordering::Relaxed).to_le_bytes();
            let n = left.min(8);
            dst.extend_from_slice(&bytes[..n]);
            left -= n;
            at += 8;
        }
    }

    fn fill(&self, offset: u64, len: u64, word: u64) {
        for i in 0..len / 8 {
            self.data_word(offset + 8 * i)
                .store(word, Ordering::Relaxed);
        }
    }
}
