//! The idempotency keys a journal remembers: which records each committed key wrote, so a
//! retried append is answered with its original seqs instead of being written again.
//!
//! Rebuilt at open from the metadata files, where each key is committed in the same entry
//! as its records: the index is derived data, and survives restarts and rotations because
//! the entries do. It holds at most `max_keys` keys (oldest forgotten first), and forgets a
//! key once retention deletes its records. The journals of one process can share a
//! [`KeyMemory`]: past it, a journal remembers a new key by forgetting its own oldest.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes each remembered key is counted as against a [`KeyMemory`]: the key index's size
/// per key at rest (a 16-byte hash and what its request committed in a map kept at most
/// 7/8 full in a power of two, and the queue of keys in commit order), measured at 80-126
/// bytes. The index gives memory back when retention forgets most of its keys.
pub const KEY_BYTES: usize = 128;

/// Keys each journal may remember whatever the others hold of a shared [`KeyMemory`]: a
/// retry of any of a journal's newest 1,024 keyed requests (an AppendStream's whole
/// read-ahead) is always answered as a duplicate.
pub const KEYS_EACH_JOURNAL_KEEPS: usize = 1024;

/// Memory for the idempotency keys of all the journals that share it (a process with many
/// journals, like ministore-server): without it, each journal holds up to
/// [`max_keys`](crate::MiniStoreOptions::max_keys) keys, and many journals together are
/// bounded only by their number.
///
/// Every remembered key of those journals counts [`KEY_BYTES`]. A journal that already
/// holds [`KEYS_EACH_JOURNAL_KEEPS`] keys takes a new one from the budget while there is
/// room, and otherwise forgets its own oldest key to remember the new one. So the keys of
/// all journals take at most the budget plus `KEYS_EACH_JOURNAL_KEEPS x KEY_BYTES` (128
/// KiB) per journal; a journal that filled the budget keeps its keys until retention or
/// its close gives them back, and the others keep at least their newest 1,024.
///
/// ```
/// use ministore::{KeyMemory, MiniStoreOptions};
/// let memory = KeyMemory::new(64 * 1024 * 1024);
/// let options = MiniStoreOptions::new().key_memory(memory.clone());
/// assert_eq!(memory.used_bytes(), 0);
/// assert_eq!(memory.limit_bytes(), 64 * 1024 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct KeyMemory(Arc<KeyCount>);

#[derive(Debug)]
struct KeyCount {
    /// Keys the budget holds.
    limit: usize,
    /// Keys remembered now by the journals that share it.
    used: AtomicUsize,
}

impl PartialEq for KeyMemory {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for KeyMemory {}

impl KeyMemory {
    /// A budget of `bytes` (counted at [`KEY_BYTES`] a key) for the journals opened with
    /// it.
    pub fn new(bytes: usize) -> Self {
        KeyMemory(Arc::new(KeyCount {
            limit: bytes / KEY_BYTES,
            used: AtomicUsize::new(0),
        }))
    }

    /// The budget, in bytes (a whole number of keys).
    pub fn limit_bytes(&self) -> usize {
        self.0.limit * KEY_BYTES
    }

    /// What the keys remembered now take of it, in bytes (it can pass the limit by the
    /// keys each journal keeps anyway).
    pub fn used_bytes(&self) -> usize {
        self.0.used.load(Ordering::Relaxed) * KEY_BYTES
    }

    /// Counts one more key if the budget has room for it.
    fn take(&self) -> bool {
        let limit = self.0.limit;
        self.0
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used < limit).then_some(used + 1)
            })
            .is_ok()
    }

    fn add(&self, keys: usize) {
        self.0.used.fetch_add(keys, Ordering::Relaxed);
    }

    fn give_back(&self, keys: usize) {
        self.0.used.fetch_sub(keys, Ordering::Relaxed);
    }
}

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
    /// The budget it shares with other journals, which counts each of its keys.
    memory: Option<KeyMemory>,
}

/// The hash a key is remembered by.
pub(crate) fn hash(key: &str) -> KeyHash {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

impl KeyIndex {
    pub(crate) fn new(max_keys: usize, memory: Option<KeyMemory>) -> Self {
        KeyIndex {
            map: HashMap::default(),
            order: VecDeque::new(),
            max_keys,
            memory,
        }
    }

    /// What `key` committed, if it is remembered.
    pub(crate) fn get(&self, key: KeyHash) -> Option<Committed> {
        self.map.get(&key).copied()
    }

    /// Remembers a committed key (keys are inserted in commit order), forgetting the
    /// oldest beyond `max_keys`, or to make room when the shared memory is spent.
    pub(crate) fn insert(&mut self, key: KeyHash, committed: Committed) {
        if self.max_keys == 0 {
            return;
        }
        if let Some(known) = self.map.get_mut(&key) {
            *known = committed;
            return;
        }
        if self.order.len() >= self.max_keys || !self.count_one_more() {
            // The oldest key's place, and its count in the shared memory, go to the new one.
            if let Some(oldest) = self.order.pop_front() {
                self.map.remove(&oldest);
            }
        }
        self.map.insert(key, committed);
        self.order.push_back(key);
    }

    /// Counts one more key of this journal in the shared memory, if it may have one.
    fn count_one_more(&self) -> bool {
        match &self.memory {
            None => true,
            Some(memory) if self.order.len() < KEYS_EACH_JOURNAL_KEEPS => {
                memory.add(1);
                true
            }
            Some(memory) => memory.take(),
        }
    }

    /// Forgets the keys whose records start before `first_retained` (deleted by retention).
    pub(crate) fn forget_before(&mut self, first_retained: u64) {
        let before = self.order.len();
        while let Some(oldest) = self.order.front()
            && self
                .map
                .get(oldest)
                .is_none_or(|c| c.first_seq < first_retained)
        {
            let oldest = *oldest;
            self.order.pop_front();
            self.map.remove(&oldest);
        }
        if let Some(memory) = &self.memory {
            memory.give_back(before - self.order.len());
        }
        // Tables do not shrink by themselves: give the memory back once most keys are gone,
        // so that each key stays about KEY_BYTES.
        let len = self.order.len();
        if self.map.capacity() > 4 * len.max(KEYS_EACH_JOURNAL_KEEPS) {
            self.map.shrink_to(2 * len);
            self.order.shrink_to(2 * len);
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

impl Drop for KeyIndex {
    fn drop(&mut self) {
        if let Some(memory) = &self.memory {
            memory.give_back(self.order.len());
        }
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
        let mut keys = KeyIndex::new(2, None);
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

    fn fill(keys: &mut KeyIndex, name: &str, n: u64) {
        for i in 0..n {
            keys.insert(hash(&format!("{name}-{i}")), committed(i + 1));
        }
    }

    /// Journals sharing a KeyMemory: each keeps its floor whatever the others hold, keys
    /// beyond it come from the budget, and a journal past both recycles its own oldest.
    #[test]
    fn journals_sharing_a_budget_keep_their_floor_and_recycle_their_own_keys() {
        const FLOOR: u64 = KEYS_EACH_JOURNAL_KEEPS as u64;
        let memory = KeyMemory::new(2000 * KEY_BYTES);
        let mut a = KeyIndex::new(1_000_000, Some(memory.clone()));
        fill(&mut a, "a", 1500);
        assert_eq!((a.len(), memory.used_bytes()), (1500, 1500 * KEY_BYTES));
        let mut b = KeyIndex::new(1_000_000, Some(memory.clone()));
        fill(&mut b, "b", FLOOR);
        assert_eq!(
            b.len(),
            KEYS_EACH_JOURNAL_KEEPS,
            "the floor, past the budget"
        );
        assert_eq!(
            memory.used_bytes(),
            (1500 + KEYS_EACH_JOURNAL_KEEPS) * KEY_BYTES
        );

        // The budget is spent: each remembers a new key in place of its own oldest.
        b.insert(hash("b-new"), committed(FLOOR + 1));
        a.insert(hash("a-new"), committed(1501));
        assert_eq!((a.len(), b.len()), (1500, KEYS_EACH_JOURNAL_KEEPS));
        assert_eq!((a.get(hash("a-0")), b.get(hash("b-0"))), (None, None));
        assert!(a.get(hash("a-new")).is_some() && b.get(hash("b-new")).is_some());
        assert_eq!(
            memory.used_bytes(),
            (1500 + KEYS_EACH_JOURNAL_KEEPS) * KEY_BYTES
        );

        // Retention and a close give keys back; then the other grows again.
        a.forget_before(1001);
        assert_eq!(a.len(), 501);
        drop(a);
        assert_eq!(memory.used_bytes(), KEYS_EACH_JOURNAL_KEEPS * KEY_BYTES);
        fill(&mut b, "b-more", 500);
        assert_eq!(b.len(), KEYS_EACH_JOURNAL_KEEPS + 500);
        drop(b);
        assert_eq!(memory.used_bytes(), 0);
    }

    /// Forgetting most keys gives the tables' memory back.
    #[test]
    fn retention_of_most_keys_shrinks_the_tables() {
        let mut keys = KeyIndex::new(1_000_000, None);
        fill(&mut keys, "k", 100_000);
        let full = keys.heap_bytes();
        keys.forget_before(99_900);
        assert_eq!(keys.len(), 101);
        assert!(
            keys.heap_bytes() < full / 50,
            "{} of {full}",
            keys.heap_bytes()
        );
    }
}
