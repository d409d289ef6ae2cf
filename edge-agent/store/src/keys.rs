//! The key layout of the store's single sled tree. Everything lives in one tree so that one
//! `apply_batch` can write records, sequence numbers, cursors and counters atomically; a one-byte
//! prefix keeps the kinds apart and big-endian ids keep records in commit order.

use crate::RecordId;

/// `[RECORD] ++ id (u64 BE)` → a batch in the edge-model record format.
pub(crate) const RECORD: u8 = 0x01;
/// `[SEQ] ++ device name` → the next seq of that device (u64 BE).
pub(crate) const SEQ: u8 = 0x02;
/// `[CURSOR] ++ northbound name` → the first record id that northbound has not acknowledged.
pub(crate) const CURSOR: u8 = 0x03;
/// `[COUNTER] ++ counter name` → a lifetime counter (u64 BE).
pub(crate) const COUNTER: u8 = 0x04;
/// `[CHECKPOINT] ++ northbound name` → the cursor it was taken at (u64 BE) followed by the
/// northbound's opaque checkpoint (its publisher's derived state as of that cursor).
pub(crate) const CHECKPOINT: u8 = 0x05;

/// `[LOSS] ++ ledger key (u64 BE)` → one range of the loss ledger (see `losses`).
pub(crate) const LOSS: u8 = 0x06;

pub(crate) const DROPPED_RECORDS: &str = "dropped_records";
pub(crate) const DROPPED_SAMPLES: &str = "dropped_samples";
pub(crate) const CORRUPT_RECORDS: &str = "corrupt_records";
pub(crate) const QUARANTINES: &str = "quarantines";
pub(crate) const SALVAGES: &str = "salvages";
pub(crate) const SALVAGED_RECORDS: &str = "salvaged_records";
pub(crate) const LOST_EVICTED: &str = "lost_evicted_samples";
pub(crate) const LOST_CORRUPTED: &str = "lost_corrupted_samples";
pub(crate) const LOST_ROLLED_BACK: &str = "lost_rolled_back_samples";
pub(crate) const LOST_PURGED: &str = "lost_purged_samples";
pub(crate) const FOLDED_LOSS_RANGES: &str = "folded_loss_ranges";
/// The lowest id the next record may get: remembers how far ids went when no record and no
/// cursor does (a store with no northbound whose records were all lost).
pub(crate) const NEXT_ID_FLOOR: &str = "next_id_floor";

pub(crate) fn record_key(id: RecordId) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = RECORD;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// The id of a record key, or `None` when the key is not a well-formed record key.
pub(crate) fn record_id(key: &[u8]) -> Option<RecordId> {
    match key {
        [RECORD, rest @ ..] => Some(RecordId::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

pub(crate) fn loss_key(key: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LOSS;
    k[1..].copy_from_slice(&key.to_be_bytes());
    k
}

pub(crate) fn named_key(prefix: u8, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(prefix);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The name part of a `prefix ++ name` key, if the key has that prefix and the name is UTF-8.
pub(crate) fn key_name(prefix: u8, key: &[u8]) -> Option<&str> {
    match key {
        [p, rest @ ..] if *p == prefix => std::str::from_utf8(rest).ok(),
        _ => None,
    }
}

pub(crate) fn u64_value(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// The stored form of a checkpoint taken at cursor `at`.
pub(crate) fn checkpoint_value(at: RecordId, checkpoint: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + checkpoint.len());
    v.extend_from_slice(&at.to_be_bytes());
    v.extend_from_slice(checkpoint);
    v
}

/// The cursor and the bytes of a stored checkpoint; `None` when it is too short to hold one.
pub(crate) fn split_checkpoint(v: &[u8]) -> Option<(RecordId, &[u8])> {
    let (at, rest) = v.split_first_chunk::<8>()?;
    Some((RecordId::from_be_bytes(*at), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn record_keys_sort_like_their_ids(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(record_key(a).cmp(&record_key(b)), a.cmp(&b));
        }

        #[test]
        fn a_record_key_gives_back_its_id(id in any::<u64>()) {
            prop_assert_eq!(record_id(&record_key(id)), Some(id));
        }

        #[test]
        fn record_keys_sort_between_the_other_kinds(id in any::<u64>(), name in ".{0,30}") {
            let key = record_key(id);
            prop_assert!(key.as_slice() < named_key(SEQ, &name).as_slice());
            prop_assert!(key.as_slice() > [0u8; 9].as_slice());
        }

        #[test]
        fn a_named_key_gives_back_its_name(name in ".{0,30}") {
            let key = named_key(CURSOR, &name);
            prop_assert_eq!(key_name(CURSOR, &key), Some(name.as_str()));
            prop_assert_eq!(key_name(SEQ, &key), None);
        }
    }

    #[test]
    fn keys_of_the_wrong_length_or_kind_are_not_record_keys() {
        assert_eq!(record_id(&[RECORD, 1, 2, 3]), None);
        assert_eq!(record_id(&[RECORD; 10]), None);
        assert_eq!(record_id(&named_key(SEQ, "plc1")), None);
        assert_eq!(record_id(&[]), None);
    }

    #[test]
    fn a_checkpoint_value_gives_back_its_cursor_and_bytes() {
        let v = checkpoint_value(42, b"state");
        assert_eq!(split_checkpoint(&v), Some((42, &b"state"[..])));
        assert_eq!(
            split_checkpoint(&checkpoint_value(7, b"")),
            Some((7, &b""[..]))
        );
        assert_eq!(split_checkpoint(&[1, 2, 3]), None);
    }

    #[test]
    fn only_eight_byte_values_are_numbers() {
        assert_eq!(u64_value(&7u64.to_be_bytes()), Some(7));
        assert_eq!(u64_value(&[0; 7]), None);
        assert_eq!(u64_value(&[0; 9]), None);
    }
}
