//! What the MES rules know about one machine (SPEC §6): which tags of which devices carry its
//! work order, product, good and scrap counters and state word, how state values map to states
//! and reason codes, and which PLC tags receive a dispatched work order. Built from the board
//! config; plain data, no I/O.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use edge_model::{DataType, DeviceId, TagName};
use serde::{Deserialize, Serialize};

/// One `[[machine]]`: the production facts of a machine and the PLC tags they come from.
///
/// Each fact names its own device: a machine can take its work order and state from an OPC UA
/// server and its counters from a Modbus PLC.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineSpec {
    /// The machine's name: the topic level of `{root}/{machine}/_mes/...`.
    pub name: String,
    /// The machine's home device. The event ids of its samples keep the form they had when a
    /// machine read only one device (`filler:workorder/start:1234`); samples of any other
    /// device name it in the id (see [`crate::events`]), since seqs count per device.
    pub device: DeviceId,
    /// The tag holding the current work order id (string or integer; empty or 0 is "no order").
    pub work_order: Option<TagRef>,
    /// The tag holding the current product id (string or integer).
    pub product: Option<TagRef>,
    /// The counter of good parts.
    pub good: Option<CounterSpec>,
    /// The counter of scrapped parts.
    pub scrap: Option<CounterSpec>,
    /// The state word and how its values map to states.
    pub state: Option<StateSpec>,
}

impl MachineSpec {
    /// Every tag the rules read, whichever role it has.
    pub fn tags(&self) -> impl Iterator<Item = &TagRef> {
        [
            self.work_order.as_ref(),
            self.product.as_ref(),
            self.good.as_ref().map(|c| &c.tag),
            self.scrap.as_ref().map(|c| &c.tag),
            self.state.as_ref().map(|st| &st.tag),
        ]
        .into_iter()
        .flatten()
    }
}

/// A tag of a device: what a role of a machine reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagRef {
    pub device: DeviceId,
    pub tag: TagName,
}

impl TagRef {
    pub fn new(device: impl Into<String>, tag: impl Into<String>) -> TagRef {
        TagRef {
            device: DeviceId(device.into()),
            tag: TagName(tag.into()),
        }
    }
}

impl fmt::Display for TagRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.device, self.tag)
    }
}

/// A production counter in the PLC: a raw integer that grows by one per part and wraps at its
/// width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterSpec {
    pub tag: TagRef,
    pub width: CounterWidth,
    /// The most a counter can advance between two readings. A drop whose wrap-around distance
    /// is within it is a wrap-around; a larger drop is a reset of the counter to zero.
    pub max_step: u64,
}

/// How many bits a counter has before it wraps around to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CounterWidth {
    Bits16,
    Bits32,
    Bits64,
}

impl CounterWidth {
    /// The width of an integer tag type; `None` for anything that is not an integer.
    pub fn of(data_type: DataType) -> Option<CounterWidth> {
        match data_type {
            DataType::I16 | DataType::U16 => Some(CounterWidth::Bits16),
            DataType::I32 | DataType::U32 => Some(CounterWidth::Bits32),
            DataType::I64 | DataType::U64 => Some(CounterWidth::Bits64),
            _ => None,
        }
    }

    pub fn bits(self) -> u32 {
        match self {
            CounterWidth::Bits16 => 16,
            CounterWidth::Bits32 => 32,
            CounterWidth::Bits64 => 64,
        }
    }

    /// The largest raw value (all bits set).
    pub fn max(self) -> u64 {
        match self {
            CounterWidth::Bits16 => u64::from(u16::MAX),
            CounterWidth::Bits32 => u64::from(u32::MAX),
            CounterWidth::Bits64 => u64::MAX,
        }
    }
}

/// The state word of a machine and its map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSpec {
    pub tag: TagRef,
    /// Value of the state word → state; values not listed read as [`MachineState::Unknown`].
    pub map: Vec<StateMapping>,
}

/// What one value of a state word means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateMapping {
    /// The value of the state word (a bool reads as 0 or 1).
    pub value: i64,
    pub state: MachineState,
    /// A UMH state code inside the range of `state` (see [`MachineState::codes`]).
    pub reason_code: u32,
    /// Free text for people, such as "filler valve jammed".
    pub reason: Option<String>,
}

impl StateSpec {
    pub fn lookup(&self, value: i64) -> Option<&StateMapping> {
        self.map.iter().find(|m| m.value == value)
    }
}

/// The state of a machine, in the groups of the UMH state model (notes/standards.md §2), which
/// OEE tools read as availability: only `running` counts as production time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    /// Producing (UMH Active: 10000 full speed, 20000 lower speed).
    Running,
    /// Not producing for a planned or organisational reason: no order, no shift, operator
    /// break (UMH Operator and Planning).
    Idle,
    /// Stopped by a technical fault or maintenance (UMH Technical).
    Down,
    /// Changeover, cleaning, emptying, setting up (UMH Process).
    Changeover,
    /// Stopped by material: jams, starved, blocked (UMH Material).
    Material,
    /// Not known: an unmapped state value, an unreadable state word, an unspecified stop
    /// (UMH Unknown).
    Unknown,
}

impl MachineState {
    pub const ALL: [MachineState; 6] = [
        MachineState::Running,
        MachineState::Idle,
        MachineState::Down,
        MachineState::Changeover,
        MachineState::Material,
        MachineState::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Running => "running",
            MachineState::Idle => "idle",
            MachineState::Down => "down",
            MachineState::Changeover => "changeover",
            MachineState::Material => "material",
            MachineState::Unknown => "unknown",
        }
    }

    /// The UMH state codes a reason code of this state must lie in.
    pub fn codes(self) -> RangeInclusive<u32> {
        match self {
            MachineState::Running => 10_000..=29_999,
            MachineState::Unknown => 30_000..=59_999,
            MachineState::Material => 60_000..=99_999,
            MachineState::Changeover => 100_000..=139_999,
            MachineState::Idle => 140_000..=179_999,
            MachineState::Down => 180_000..=229_999,
        }
    }

    /// The reason code used when the config gives none: the UMH code that says the least
    /// beyond the state itself.
    pub fn default_code(self) -> u32 {
        match self {
            MachineState::Running => 10_000,     // ProducingAtFullSpeed
            MachineState::Unknown => 30_000,     // Unknown
            MachineState::Material => 90_000,    // MaterialIssueOther
            MachineState::Changeover => 100_000, // Changeover
            MachineState::Idle => 170_000,       // NoOrder
            MachineState::Down => 220_000,       // TechnicalOtherStop
        }
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MachineState {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineState::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_code_ranges_tile_the_umh_model_without_overlap() {
        let mut ranges: Vec<_> = MachineState::ALL.iter().map(|s| s.codes()).collect();
        ranges.sort_by_key(|r| *r.start());
        assert_eq!(*ranges[0].start(), 10_000);
        for pair in ranges.windows(2) {
            assert_eq!(*pair[0].end() + 1, *pair[1].start());
        }
        assert_eq!(*ranges[5].end(), 229_999);
    }

    #[test]
    fn every_default_code_lies_in_its_own_range_and_names_round_trip() {
        for s in MachineState::ALL {
            assert!(s.codes().contains(&s.default_code()), "{s}");
            assert_eq!(s.as_str().parse::<MachineState>(), Ok(s));
        }
        assert!("stopped".parse::<MachineState>().is_err());
    }

    #[test]
    fn counter_widths_follow_the_integer_types() {
        assert_eq!(CounterWidth::of(DataType::U16), Some(CounterWidth::Bits16));
        assert_eq!(CounterWidth::of(DataType::I32), Some(CounterWidth::Bits32));
        assert_eq!(CounterWidth::of(DataType::U64), Some(CounterWidth::Bits64));
        assert_eq!(CounterWidth::of(DataType::F32), None);
        assert_eq!(CounterWidth::of(DataType::String(4)), None);
        assert_eq!(CounterWidth::Bits16.max(), 65_535);
        assert_eq!(CounterWidth::Bits64.max(), u64::MAX);
    }
}
