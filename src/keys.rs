//! The idempotency keys a journal remembers: which records each committed key wrote, so a
//! retried append is answered with its original seqs instead of being written again.
//!
//! Rebuilt at open from the metadata files, where each key is committed in the same entry
//! as its records: the index is derived data, and survives restarts and rotations because
//! the entries do. It holds at most `max_keys` keys (oldest forgotten first), and forgets a
//! key once retention deletes its records.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

/// What a committed key wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Committed {
    pub first_seq: u64,
    pub count: u32,
    /// The fingerprint of its records (see `meta::fingerprint`).
    pub fingerprint: u64,
}

impl Committed {
    pub(crate) fn seqs(&self) -> Range<u64> {
        self.first_seq..self.first_seq + u64::from(self.count)
    }
}

/// Keys are stored as their 128-bit xxh3 hash, not their text: 16 bytes whatever the key's
/// length. Two different keys collide with probability about n²/2^129 (for a million keys,
/// below 10^-26), far below the odds of an undetected disk error.
type KeyHash = u128;

/// The hash is already uniform: the map uses its low bits as they are.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; fold anything else in, to stay correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// The keys of one journal, oldest first.
#[derive(Debug)]
pub(crate) struct KeyIndex {
    map: HashMap<KeyHash, Committed, BuildHasherDefault<PassThrough>>,
    /// Keys in commit order, to forget the oldest first.
    order: VecDeque<KeyHash>,
    max_keys: usize,
}

/// The hash a key is remembered by.
pub(crate) fn hash(key: &str) -> KeyHash {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

impl KeyIndex {
    pub(crate) fn new(max_keys: usize) -> Self {
        KeyIndex {
            map: HashMap::default(),
            order: VecDeque::new(),
            max_keys,
        }
    }

    /// What `key` committed, if it is remembered.
    pub(crate) fn get(&self, key: KeyHash) -> Option<Committed> {
        self.map.get(&key).copied()
    }

    /// Remembers a committed key (keys are inserted in commit order), forgetting the
    /// oldest beyond `max_keys`.
    pub(crate) fn insert(&mut self, key: KeyHash, committed: Committed) {
        if self.max_keys == 0 {
            return;
        }
        if self.map.insert(key, committed).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.max_keys {
            self.forget_oldest();
        }
    }

    /// Forgets the keys whose records start before `first_retained` (deleted by retention).
    pub(crate) fn forget_before(&mut self, first_retained: u64) {
        while let Some(oldest) = self.order.front()
            && self
                .map
                .get(oldest)
                .is_none_or(|c| c.first_seq < first_retained)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some(oldest) = self.order.pop_front() {
            self.map.remove(&oldest);
        }
    }

    /// How many keys are remembered.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// The heap memory the index holds, from its capacities: the map's buckets (an entry
    /// and a control byte each; the map keeps at most 7/8 of its buckets full, in a power
    /// of two) and the queue of keys in commit order.
    pub(crate) fn heap_bytes(&self) -> usize {
        let buckets = match self.map.capacity() {
            0 => 0,
            capacity => (capacity * 8 / 7).next_power_of_two(),
        };
        buckets * (std::mem::size_of::<(KeyHash, Committed)>() + 1)
            + self.order.capacity() * std::mem::size_of::<KeyHash>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(first_seq: u64) -> Committed {
        Committed {
            first_seq,
            count: 1,
            fingerprint: first_seq,
        }
    }

    #[test]
    fn the_oldest_keys_are_forgotten_first() {
        let mut keys = KeyIndex::new(2);
        keys.insert(hash("a"), committed(1));
        keys.insert(hash("b"), committed(2));
        keys.insert(hash("c"), committed(3));
        assert_eq!(keys.get(hash("a")), None);
        assert_eq!(keys.get(hash("b")), Some(committed(2)));
        assert_eq!(keys.len(), 2);
        keys.forget_before(3);
        assert_eq!(keys.get(hash("b")), None);
        assert_eq!(keys.get(hash("c")), Some(committed(3)));
    }
}
