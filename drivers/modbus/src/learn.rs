//! Block-size learning: a device that answers a merged read with "illegal data address/value"
//! may simply refuse reads that large. The learner narrows the largest accepted size by
//! bisection between the largest read answered and the smallest refused, and the limit it
//! settles on is kept per device in the data directory, so the next start plans with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The search for one device's largest accepted read of one kind (registers or bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockLearner {
    /// No request is ever split below this: the largest single tag.
    floor: u16,
    /// The limit the planner uses now.
    current: u16,
    /// The largest read the device answered.
    max_ok: u16,
    /// The smallest read the device refused, once one was.
    min_refused: Option<u16>,
}

impl BlockLearner {
    /// Starts from the configured limit; `floor` is the largest single tag's size.
    pub fn new(configured: u16, floor: u16) -> BlockLearner {
        let floor = floor.max(1).min(configured.max(1));
        BlockLearner {
            floor,
            current: configured.max(1),
            max_ok: 0,
            min_refused: None,
        }
    }

    /// Starts from a limit learned before: reads up to it are known to work and one more
    /// register is known to be refused.
    pub fn learned(limit: u16, floor: u16) -> BlockLearner {
        let limit = limit.max(1);
        BlockLearner {
            floor: floor.max(1).min(limit),
            current: limit,
            max_ok: limit,
            min_refused: limit.checked_add(1),
        }
    }

    /// The limit to plan with.
    pub fn limit(&self) -> u16 {
        self.current
    }

    /// True once the largest accepted size is known exactly.
    pub fn settled(&self) -> bool {
        match self.min_refused {
            // Widened: a read of 65535 may have been answered, and 65535 + 1 must not wrap.
            Some(r) => {
                u32::from(self.max_ok) + 1 >= u32::from(r)
                    || self.current < self.floor.max(self.max_ok)
            }
            None => true,
        }
    }

    /// A read of `count` was refused with an address/value exception. Returns the new limit
    /// to plan with, or `None` when size cannot be the reason (a read no larger than the
    /// largest tag or than one already answered is refused for its addresses).
    pub fn refused(&mut self, count: u16) -> Option<u16> {
        if count <= self.floor || count <= self.max_ok {
            return None;
        }
        self.min_refused = Some(self.min_refused.map_or(count, |r| r.min(count)));
        self.retarget()
    }

    /// A read of `count` was answered. Returns a new, larger limit to try while the search is
    /// open and the planner used the whole current limit.
    pub fn accepted(&mut self, count: u16) -> Option<u16> {
        self.max_ok = self.max_ok.max(count);
        if self.min_refused.is_none() || count < self.current {
            return None;
        }
        self.retarget()
    }

    fn retarget(&mut self) -> Option<u16> {
        let hi = self.min_refused?.saturating_sub(1).max(self.floor);
        let lo = self.max_ok.max(self.floor).min(hi);
        let next = if lo >= hi {
            hi
        } else {
            lo + (hi - lo).div_ceil(2)
        };
        if next == self.current {
            return None;
        }
        self.current = next;
        Some(next)
    }
}

/// Which block size a learned limit is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BlockKind {
    Registers,
    Bits,
}

impl BlockKind {
    fn as_str(self) -> &'static str {
        match self {
            BlockKind::Registers => "registers",
            BlockKind::Bits => "bits",
        }
    }
}

/// The learned limits of all devices, in a small text file (`device kind limit` a line) in
/// the data directory. Writes are whole-file replacements through a temporary file.
#[derive(Debug)]
pub struct LimitStore {
    path: PathBuf,
    limits: Mutex<BTreeMap<(String, BlockKind), u16>>,
}

/// The file's name inside the data directory.
pub const LIMITS_FILE: &str = "modbus-limits.txt";

impl LimitStore {
    /// Opens the store at `path`; a missing or unreadable file is an empty store (learning
    /// starts over, which only costs a few refused reads).
    pub fn open(path: &Path) -> LimitStore {
        LimitStore {
            path: path.to_path_buf(),
            limits: Mutex::new(read_limits(path)),
        }
    }

    pub fn get(&self, device: &str, kind: BlockKind) -> Option<u16> {
        self.lock().get(&(device.to_owned(), kind)).copied()
    }

    /// Every learned limit, sorted by device.
    pub fn all(&self) -> Vec<(String, BlockKind, u16)> {
        self.lock()
            .iter()
            .map(|((d, k), v)| (d.clone(), *k, *v))
            .collect()
    }

    /// Remembers a limit and writes the file.
    pub fn set(&self, device: &str, kind: BlockKind, limit: u16) -> std::io::Result<()> {
        let text = {
            let mut map = self.lock();
            map.insert((device.to_owned(), kind), limit);
            map.iter()
                .map(|((d, k), v)| format!("{d} {} {v}\n", k.as_str()))
                .collect::<String>()
        };
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, BlockKind), u16>> {
        self.limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reads a limits file; lines that do not parse are skipped.
pub fn read_limits(path: &Path) -> BTreeMap<(String, BlockKind), u16> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let device = parts.next()?;
            let kind = match parts.next()? {
                "registers" => BlockKind::Registers,
                "bits" => BlockKind::Bits,
                _ => return None,
            };
            let limit: u16 = parts.next()?.parse().ok()?;
            Some(((device.to_owned(), kind), limit))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Drives a learner against a device accepting at most `max` per read, where the planner
    /// always fills the limit (`need` registers of tags in a row).
    fn learn(configured: u16, floor: u16, need: u16, max: u16) -> (u16, usize) {
        let mut l = BlockLearner::new(configured, floor);
        let mut refusals = 0;
        for _ in 0..64 {
            let count = l.limit().min(need);
            if count > max {
                refusals += 1;
                if l.refused(count).is_none() {
                    break;
                }
            } else if l.accepted(count).is_none() {
                break;
            }
        }
        (l.limit(), refusals)
    }

    #[test]
    fn a_device_limited_to_16_registers_is_learned_exactly() {
        let (limit, refusals) = learn(125, 2, 200, 16);
        assert_eq!(limit, 16);
        assert!(refusals <= 8, "{refusals}");
    }

    #[test]
    fn a_device_that_accepts_everything_keeps_the_configured_limit() {
        assert_eq!(learn(125, 2, 200, 125), (125, 0));
    }

    #[test]
    fn a_refused_single_tag_is_not_a_size_problem() {
        let mut l = BlockLearner::new(125, 4);
        assert_eq!(l.refused(4), None);
        assert_eq!(l.limit(), 125);
    }

    #[test]
    fn an_answered_read_of_65535_after_a_refusal_is_settled_without_overflow() {
        // Found by the modbus_response fuzz target: `settled` computed 65535 + 1 in u16.
        let mut l = BlockLearner::new(125, 1);
        assert_eq!(l.refused(200), Some(100));
        assert_eq!(l.accepted(u16::MAX), Some(199));
        assert!(l.settled());
        assert_eq!(l.limit(), 199);
    }

    #[test]
    fn a_learned_limit_is_settled_from_the_start() {
        let l = BlockLearner::learned(16, 2);
        assert!(l.settled());
        assert_eq!(l.limit(), 16);
    }

    #[test]
    fn the_store_keeps_limits_across_opens() {
        let dir = std::env::temp_dir().join(format!("limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(LIMITS_FILE);
        let s = LimitStore::open(&path);
        s.set("meter1", BlockKind::Registers, 16).expect("write");
        s.set("meter2", BlockKind::Bits, 64).expect("write");
        let again = LimitStore::open(&path);
        assert_eq!(again.get("meter1", BlockKind::Registers), Some(16));
        assert_eq!(again.get("meter2", BlockKind::Bits), Some(64));
        assert_eq!(again.all().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest! {
        #[test]
        fn learning_finds_the_device_limit_whenever_the_tags_need_more(
            max in 2u16..=125, floor in 1u16..=4, configured in 1u16..=125
        ) {
            let (limit, _) = learn(configured, floor, 250, max);
            let want = if configured <= max { configured } else { max.max(floor) };
            prop_assert_eq!(limit, want);
        }
    }
}
