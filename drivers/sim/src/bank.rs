//! The memory of a simulated PLC: the four Modbus areas, 65 536 entries each, all zero at start.
//! Out-of-range accesses are clipped rather than refused, so test and demo code never panics on a
//! slip at the top of the address space; the protocol layer enforces the real limits.

use std::fmt;

use edge_modbus::Area;

/// Entries in each area: every 16-bit protocol address exists.
pub const AREA_SIZE: usize = 1 << 16;

/// The four data areas of one simulated device, shared by every unit id it answers for.
///
/// Register accessors take [`Area::InputRegister`] or [`Area::HoldingRegister`]; bit accessors take
/// [`Area::Coil`] or [`Area::DiscreteInput`]. Asking a register accessor for a bit area (or the
/// reverse) reads nothing and writes nothing, and logs a warning: the mistake shows up as an empty
/// read instead of a crash of the program that made it.
#[derive(Clone, PartialEq, Eq)]
pub struct Bank {
    coils: Box<[bool]>,
    discrete_inputs: Box<[bool]>,
    input_registers: Box<[u16]>,
    holding_registers: Box<[u16]>,
}

impl Bank {
    /// A bank with every bit off and every register zero.
    pub fn new() -> Bank {
        Bank {
            coils: vec![false; AREA_SIZE].into_boxed_slice(),
            discrete_inputs: vec![false; AREA_SIZE].into_boxed_slice(),
            input_registers: vec![0; AREA_SIZE].into_boxed_slice(),
            holding_registers: vec![0; AREA_SIZE].into_boxed_slice(),
        }
    }

    /// Registers `start..start + count`, cut short at address 65535; empty for a bit area.
    pub fn registers(&self, area: Area, start: u16, count: u16) -> &[u16] {
        match self.register_area(area) {
            Some(words) => &words[clip(start, usize::from(count))],
            None => &[],
        }
    }

    /// One register; 0 for a bit area.
    pub fn register(&self, area: Area, address: u16) -> u16 {
        self.registers(area, address, 1)
            .first()
            .copied()
            .unwrap_or(0)
    }

    /// Stores `values` from `start` on. Values that would land past address 65535 are dropped;
    /// nothing is stored for a bit area.
    pub fn set_registers(&mut self, area: Area, start: u16, values: &[u16]) {
        if let Some(words) = self.register_area_mut(area) {
            let range = clip(start, values.len());
            let n = range.len();
            words[range].copy_from_slice(&values[..n]);
        }
    }

    /// Bits `start..start + count`, cut short at address 65535; empty for a register area.
    pub fn bits(&self, area: Area, start: u16, count: u16) -> &[bool] {
        match self.bit_area(area) {
            Some(bits) => &bits[clip(start, usize::from(count))],
            None => &[],
        }
    }

    /// One bit; `false` for a register area.
    pub fn bit(&self, area: Area, address: u16) -> bool {
        self.bits(area, address, 1)
            .first()
            .copied()
            .unwrap_or(false)
    }

    /// Stores `values` from `start` on. Values that would land past address 65535 are dropped;
    /// nothing is stored for a register area.
    pub fn set_bits(&mut self, area: Area, start: u16, values: &[bool]) {
        if let Some(bits) = self.bit_area_mut(area) {
            let range = clip(start, values.len());
            let n = range.len();
            bits[range].copy_from_slice(&values[..n]);
        }
    }

    fn register_area(&self, area: Area) -> Option<&[u16]> {
        match area {
            Area::InputRegister => Some(&self.input_registers),
            Area::HoldingRegister => Some(&self.holding_registers),
            Area::Coil | Area::DiscreteInput => {
                wrong_kind(area, "registers");
                None
            }
        }
    }

    fn register_area_mut(&mut self, area: Area) -> Option<&mut [u16]> {
        match area {
            Area::InputRegister => Some(&mut self.input_registers),
            Area::HoldingRegister => Some(&mut self.holding_registers),
            Area::Coil | Area::DiscreteInput => {
                wrong_kind(area, "registers");
                None
            }
        }
    }

    fn bit_area(&self, area: Area) -> Option<&[bool]> {
        match area {
            Area::Coil => Some(&self.coils),
            Area::DiscreteInput => Some(&self.discrete_inputs),
            Area::InputRegister | Area::HoldingRegister => {
                wrong_kind(area, "bits");
                None
            }
        }
    }

    fn bit_area_mut(&mut self, area: Area) -> Option<&mut [bool]> {
        match area {
            Area::Coil => Some(&mut self.coils),
            Area::DiscreteInput => Some(&mut self.discrete_inputs),
            Area::InputRegister | Area::HoldingRegister => {
                wrong_kind(area, "bits");
                None
            }
        }
    }
}

impl Default for Bank {
    fn default() -> Self {
        Bank::new()
    }
}

impl fmt::Debug for Bank {
    // 256 Ki entries are no use in a log line; say how much of each area is in use instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bank")
            .field("coils_on", &self.coils.iter().filter(|b| **b).count())
            .field(
                "discrete_inputs_on",
                &self.discrete_inputs.iter().filter(|b| **b).count(),
            )
            .field(
                "input_registers_nonzero",
                &self.input_registers.iter().filter(|w| **w != 0).count(),
            )
            .field(
                "holding_registers_nonzero",
                &self.holding_registers.iter().filter(|w| **w != 0).count(),
            )
            .finish()
    }
}

/// The index range `start..start + len`, cut at the end of the area.
fn clip(start: u16, len: usize) -> std::ops::Range<usize> {
    let start = usize::from(start);
    start..start.saturating_add(len).min(AREA_SIZE)
}

fn wrong_kind(area: Area, wanted: &str) {
    tracing::warn!(%area, "simulated PLC: {wanted} asked of area `{area}`, which does not hold {wanted}; ignored");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_bank_is_all_zero() {
        let bank = Bank::new();
        assert_eq!(bank.registers(Area::HoldingRegister, 0, 3), &[0, 0, 0]);
        assert_eq!(bank.registers(Area::InputRegister, 65535, 1), &[0]);
        assert_eq!(bank.bits(Area::Coil, 100, 2), &[false, false]);
        assert_eq!(bank.bits(Area::DiscreteInput, 65535, 1), &[false]);
    }

    #[test]
    fn each_area_keeps_its_own_values() {
        let mut bank = Bank::new();
        bank.set_registers(Area::HoldingRegister, 10, &[1, 2]);
        bank.set_registers(Area::InputRegister, 10, &[3, 4]);
        bank.set_bits(Area::Coil, 10, &[true, false]);
        bank.set_bits(Area::DiscreteInput, 10, &[false, true]);
        assert_eq!(bank.registers(Area::HoldingRegister, 10, 2), &[1, 2]);
        assert_eq!(bank.registers(Area::InputRegister, 10, 2), &[3, 4]);
        assert_eq!(bank.bits(Area::Coil, 10, 2), &[true, false]);
        assert_eq!(bank.bits(Area::DiscreteInput, 10, 2), &[false, true]);
        assert_eq!(bank.register(Area::InputRegister, 11), 4);
        assert!(bank.bit(Area::DiscreteInput, 11));
    }

    #[test]
    fn writes_past_the_last_address_are_clipped() {
        let mut bank = Bank::new();
        bank.set_registers(Area::HoldingRegister, 65534, &[7, 8, 9, 10]);
        assert_eq!(bank.registers(Area::HoldingRegister, 65534, 2), &[7, 8]);
        assert_eq!(bank.register(Area::HoldingRegister, 0), 0, "no wrap-around");
        bank.set_bits(Area::Coil, 65535, &[true, true]);
        assert_eq!(bank.bits(Area::Coil, 65535, 1), &[true]);
        assert!(!bank.bit(Area::Coil, 0), "no wrap-around");
    }

    #[test]
    fn reads_past_the_last_address_are_cut_short() {
        let bank = Bank::new();
        assert_eq!(bank.registers(Area::HoldingRegister, 65535, 10).len(), 1);
        assert_eq!(
            bank.registers(Area::HoldingRegister, 65000, u16::MAX).len(),
            536
        );
        assert_eq!(bank.bits(Area::Coil, 65530, 100).len(), 6);
        assert_eq!(bank.registers(Area::InputRegister, 0, 0).len(), 0);
    }

    #[test]
    fn the_wrong_kind_of_area_reads_nothing_and_stores_nothing() {
        let mut bank = Bank::new();
        bank.set_registers(Area::Coil, 0, &[1]);
        bank.set_bits(Area::HoldingRegister, 0, &[true]);
        assert_eq!(bank, Bank::new());
        assert!(bank.registers(Area::DiscreteInput, 0, 5).is_empty());
        assert!(bank.bits(Area::InputRegister, 0, 5).is_empty());
        assert_eq!(bank.register(Area::Coil, 0), 0);
        assert!(!bank.bit(Area::HoldingRegister, 0));
    }

    #[test]
    fn debug_output_summarises_instead_of_listing() {
        let mut bank = Bank::new();
        bank.set_registers(Area::HoldingRegister, 0, &[1, 0, 2]);
        let text = format!("{bank:?}");
        assert!(text.contains("holding_registers_nonzero: 2"), "{text}");
        assert!(text.len() < 200, "{text}");
    }
}
