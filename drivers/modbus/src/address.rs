//! Modbus addresses as technicians write them (`hr:100`, `ir:7`, `coil:3`, `di:0`, `hr:100.3`)
//! and the byte orders of multi-register values. Parsed once, when the config is loaded.

use std::fmt;
use std::str::FromStr;

/// The four Modbus data areas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Area {
    /// Read/write bits, function codes 0x01 (read), 0x05/0x0F (write).
    Coil,
    /// Read-only bits, function code 0x02.
    DiscreteInput,
    /// Read-only registers, function code 0x04.
    InputRegister,
    /// Read/write registers, function codes 0x03 (read), 0x06/0x10 (write).
    HoldingRegister,
}

impl Area {
    pub fn is_bits(self) -> bool {
        matches!(self, Area::Coil | Area::DiscreteInput)
    }

    pub fn is_writable(self) -> bool {
        matches!(self, Area::Coil | Area::HoldingRegister)
    }

    pub fn prefix(self) -> &'static str {
        match self {
            Area::Coil => "coil",
            Area::DiscreteInput => "di",
            Area::InputRegister => "ir",
            Area::HoldingRegister => "hr",
        }
    }
}

impl FromStr for Area {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "coil" | "co" => Ok(Area::Coil),
            "di" => Ok(Area::DiscreteInput),
            "ir" => Ok(Area::InputRegister),
            "hr" => Ok(Area::HoldingRegister),
            other => Err(AddressError::UnknownArea(other.to_owned())),
        }
    }
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// A zero-based protocol address in one area, with an optional bit within a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub area: Area,
    pub offset: u16,
    /// For `bool` tags held in a register: bit 0 (least significant) to 15.
    pub bit: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("`{0}` is not a Modbus address; write AREA:OFFSET, as in `hr:100`, `ir:7`, `coil:3`, `di:0` or `hr:100.3` for one bit of a register")]
    Malformed(String),
    #[error("unknown Modbus area `{0}`; use hr (holding register), ir (input register), coil or di (discrete input)")]
    UnknownArea(String),
    #[error("offset `{0}` is not a number from 0 to 65535 (addresses are zero-based protocol addresses, not 40001-style)")]
    BadOffset(String),
    #[error("bit `{0}` is not a number from 0 to 15")]
    BadBit(String),
    #[error("a bit number only applies to registers (hr, ir), not to `{0}`")]
    BitOnBitArea(String),
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (area, rest) = s
            .split_once(':')
            .ok_or_else(|| AddressError::Malformed(s.to_owned()))?;
        let area: Area = area.trim().to_ascii_lowercase().parse()?;
        let (offset, bit) = match rest.split_once('.') {
            Some((o, b)) => (o, Some(b)),
            None => (rest, None),
        };
        let offset: u16 = offset
            .trim()
            .parse()
            .map_err(|_| AddressError::BadOffset(offset.to_owned()))?;
        let bit = match bit {
            None => None,
            Some(_) if area.is_bits() => return Err(AddressError::BitOnBitArea(s.to_owned())),
            Some(b) => match b.trim().parse::<u8>() {
                Ok(n) if n < 16 => Some(n),
                _ => return Err(AddressError::BadBit(b.to_owned())),
            },
        };
        Ok(Address { area, offset, bit })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.area, self.offset)?;
        if let Some(b) = self.bit {
            write!(f, ".{b}")?;
        }
        Ok(())
    }
}

/// The order of the bytes of a multi-register value, named by where bytes A (most significant)
/// to D land: `ABCD` big-endian, `CDAB` word-swapped, `BADC` byte-swapped, `DCBA` little-endian.
/// For 64-bit values the same rule extends to four registers; for 16-bit values only the byte
/// swap (`BADC`, `DCBA`) matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ByteOrder {
    #[default]
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

impl ByteOrder {
    pub const ALL: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Cdab,
        ByteOrder::Badc,
        ByteOrder::Dcba,
    ];

    /// Bytes within each register are swapped.
    pub fn swaps_bytes(self) -> bool {
        matches!(self, ByteOrder::Badc | ByteOrder::Dcba)
    }

    /// Registers come least significant first.
    pub fn swaps_words(self) -> bool {
        matches!(self, ByteOrder::Cdab | ByteOrder::Dcba)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown byte order `{0}`; use ABCD (big-endian), CDAB (word swap), BADC (byte swap) or DCBA (little-endian)")]
pub struct ByteOrderError(pub String);

impl FromStr for ByteOrder {
    type Err = ByteOrderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "ABCD" => Ok(ByteOrder::Abcd),
            "CDAB" => Ok(ByteOrder::Cdab),
            "BADC" => Ok(ByteOrder::Badc),
            "DCBA" => Ok(ByteOrder::Dcba),
            _ => Err(ByteOrderError(s.to_owned())),
        }
    }
}

impl fmt::Display for ByteOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ByteOrder::Abcd => "ABCD",
            ByteOrder::Cdab => "CDAB",
            ByteOrder::Badc => "BADC",
            ByteOrder::Dcba => "DCBA",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn technician_addresses_parse_and_print_back() {
        for s in [
            "hr:100",
            "ir:7",
            "coil:3",
            "di:0",
            "hr:100.3",
            "ir:65535.15",
        ] {
            let a: Address = s.parse().expect(s);
            assert_eq!(a.to_string(), s);
        }
        let a: Address = "hr:100.3".parse().expect("bit address");
        assert_eq!(
            a,
            Address {
                area: Area::HoldingRegister,
                offset: 100,
                bit: Some(3)
            }
        );
    }

    #[test]
    fn malformed_addresses_say_what_is_wrong() {
        assert!(matches!(
            "40001".parse::<Address>(),
            Err(AddressError::Malformed(_))
        ));
        assert!(matches!(
            "xr:1".parse::<Address>(),
            Err(AddressError::UnknownArea(_))
        ));
        assert!(matches!(
            "hr:65536".parse::<Address>(),
            Err(AddressError::BadOffset(_))
        ));
        assert!(matches!(
            "hr:-1".parse::<Address>(),
            Err(AddressError::BadOffset(_))
        ));
        assert!(matches!(
            "hr:1.16".parse::<Address>(),
            Err(AddressError::BadBit(_))
        ));
        assert!(matches!(
            "coil:1.2".parse::<Address>(),
            Err(AddressError::BitOnBitArea(_))
        ));
    }

    #[test]
    fn byte_orders_parse_case_insensitively() {
        for o in ByteOrder::ALL {
            assert_eq!(o.to_string().parse::<ByteOrder>(), Ok(o));
            assert_eq!(o.to_string().to_lowercase().parse::<ByteOrder>(), Ok(o));
        }
        assert!("ACBD".parse::<ByteOrder>().is_err());
    }
}
