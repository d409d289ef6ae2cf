//! The answers of commands already carried out, by request key, kept in the store so that a
//! command sent again (after an agent restart too) is answered with its first answer and never
//! written twice. An entry is written, and flushed, before the first write of its command is
//! made: a command interrupted by a crash is found `started` and is not written again.
//! Bounded in count and in age; the oldest entries go first.

use std::time::Duration;

use crate::error::StoreError;
use crate::store::Store;

/// The answers tree, and its index by time for eviction.
const ANSWERS: &str = "command-answers";
const BY_TIME: &str = "command-answers-by-time";
/// Entries kept at most.
pub const MAX_ANSWERS: usize = 4096;
/// How long an answer is kept.
pub const ANSWER_AGE: Duration = Duration::from_secs(24 * 3600);

/// What the store knows of a request key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remembered {
    /// Its writes began and no answer was stored: the agent stopped while carrying it out.
    Started { at_ms: u64 },
    /// Its answer, as it was sent.
    Answered { at_ms: u64, answer: Vec<u8> },
}

/// Value layout: `at_ms` (u64, big-endian), then a kind byte (0 started, 1 answered), then the
/// answer's bytes.
fn encode(at_ms: u64, answer: Option<&[u8]>) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + answer.map_or(0, <[u8]>::len));
    v.extend_from_slice(&at_ms.to_be_bytes());
    match answer {
        None => v.push(0),
        Some(a) => {
            v.push(1);
            v.extend_from_slice(a);
        }
    }
    v
}

fn decode(v: &[u8]) -> Option<Remembered> {
    let at_ms = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    match v.get(8)? {
        0 => Some(Remembered::Started { at_ms }),
        1 => Some(Remembered::Answered {
            at_ms,
            answer: v.get(9..)?.to_vec(),
        }),
        _ => None,
    }
}

fn time_key(at_ms: u64, key: &str) -> Vec<u8> {
    let mut k = at_ms.to_be_bytes().to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

impl Store {
    fn answer_trees(&self) -> Result<(sled::Tree, sled::Tree), StoreError> {
        let db = self.db();
        let answers = db
            .open_tree(ANSWERS)
            .map_err(|e| self.sled_err("open the command answers", e))?;
        let by_time = db
            .open_tree(BY_TIME)
            .map_err(|e| self.sled_err("open the command answers", e))?;
        Ok((answers, by_time))
    }

    /// What is remembered of a request key, if anything younger than [`ANSWER_AGE`].
    pub fn command_answer(&self, key: &str, now_ms: u64) -> Result<Option<Remembered>, StoreError> {
        let (answers, _) = self.answer_trees()?;
        let found = answers
            .get(key.as_bytes())
            .map_err(|e| self.sled_err("read a command answer", e))?;
        Ok(found.as_deref().and_then(decode).filter(|r| {
            let at = match r {
                Remembered::Started { at_ms } | Remembered::Answered { at_ms, .. } => *at_ms,
            };
            now_ms.saturating_sub(at) <= ANSWER_AGE.as_millis() as u64
        }))
    }

    /// Records that the writes of `key` begin now, durably (flushed) before the caller writes.
    pub async fn command_started(&self, key: &str, now_ms: u64) -> Result<(), StoreError> {
        self.put_answer(key, now_ms, None)?;
        self.db()
            .flush_async()
            .await
            .map(drop)
            .map_err(|e| self.sled_err("flush a command answer", e))
    }

    /// Stores the answer of `key` (written within sled's flush interval; the `started` entry
    /// written before guards against a second write meanwhile).
    pub fn command_answered(
        &self,
        key: &str,
        now_ms: u64,
        answer: &[u8],
    ) -> Result<(), StoreError> {
        self.put_answer(key, now_ms, Some(answer))
    }

    /// How many answers are remembered.
    pub fn command_answers(&self) -> Result<usize, StoreError> {
        Ok(self.answer_trees()?.0.len())
    }

    fn put_answer(&self, key: &str, now_ms: u64, answer: Option<&[u8]>) -> Result<(), StoreError> {
        let (answers, by_time) = self.answer_trees()?;
        let err = |e| self.sled_err("store a command answer", e);
        if let Some(old) = answers.get(key.as_bytes()).map_err(err)? {
            if let Some(r) = decode(&old) {
                let at = match r {
                    Remembered::Started { at_ms } | Remembered::Answered { at_ms, .. } => at_ms,
                };
                by_time.remove(time_key(at, key)).map_err(err)?;
            }
        }
        answers
            .insert(key.as_bytes(), encode(now_ms, answer))
            .map_err(err)?;
        by_time.insert(time_key(now_ms, key), &[]).map_err(err)?;
        // Bounded: too old or too many, oldest first.
        let oldest_kept = now_ms.saturating_sub(ANSWER_AGE.as_millis() as u64);
        while let Some((k, _)) = by_time.first().map_err(err)? {
            let at = k
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes);
            if at >= oldest_kept && answers.len() <= MAX_ANSWERS {
                break;
            }
            by_time.remove(&k).map_err(err)?;
            if let Some(name) = k.get(8..) {
                answers.remove(name).map_err(err)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_reads_as_nothing() {
        assert_eq!(
            decode(&encode(5, None)),
            Some(Remembered::Started { at_ms: 5 })
        );
        assert_eq!(
            decode(&encode(7, Some(b"{\"status\":\"ok\"}"))),
            Some(Remembered::Answered {
                at_ms: 7,
                answer: b"{\"status\":\"ok\"}".to_vec()
            })
        );
        assert_eq!(decode(b"short"), None);
        assert_eq!(decode(&[0, 0, 0, 0, 0, 0, 0, 1, 9]), None);
    }
}
