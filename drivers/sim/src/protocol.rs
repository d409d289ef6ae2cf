//! How the simulated PLC answers one request, without any I/O: protocol limits first, checked in
//! the order the Modbus application protocol specification gives (function, quantity, address
//! range), then the exceptions a test injected, then the bank.

use std::ops::Range;

use edge_modbus::Area;
use tokio_modbus::{ExceptionCode, Request, Response};

use crate::bank::{Bank, AREA_SIZE};

/// Most registers one read (0x03, 0x04) may ask for.
pub const MAX_READ_REGISTERS: u16 = 125;
/// Most bits one read (0x01, 0x02) may ask for.
pub const MAX_READ_BITS: u16 = 2000;
/// Most registers one write (0x10) may carry.
pub const MAX_WRITE_REGISTERS: u16 = 123;
/// Most coils one write (0x0F) may carry.
pub const MAX_WRITE_BITS: u16 = 1968;

/// An exception a test asked for: every request touching `range` of `area` is answered `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InjectedException {
    pub(crate) area: Area,
    pub(crate) range: Range<u32>,
    pub(crate) code: ExceptionCode,
}

/// A well-formed request, reduced to what it does to the bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op<'r> {
    Read { area: Area, start: u16, count: u16 },
    WriteCoil { address: u16, value: bool },
    WriteRegister { address: u16, value: u16 },
    WriteCoils { start: u16, values: &'r [bool] },
    WriteRegisters { start: u16, values: &'r [u16] },
}

impl Op<'_> {
    /// The area and the half-open address span the request touches.
    fn span(&self) -> (Area, Range<u32>) {
        let (area, start, len) = match *self {
            Op::Read { area, start, count } => (area, start, u32::from(count)),
            Op::WriteCoil { address, .. } => (Area::Coil, address, 1),
            Op::WriteRegister { address, .. } => (Area::HoldingRegister, address, 1),
            Op::WriteCoils { start, values } => (Area::Coil, start, len_u32(values.len())),
            Op::WriteRegisters { start, values } => {
                (Area::HoldingRegister, start, len_u32(values.len()))
            }
        };
        let start = u32::from(start);
        (area, start..start.saturating_add(len))
    }
}

/// The read a request asks for, as (area, start, count), whether or not it is within limits.
pub(crate) fn read_target(request: &Request<'_>) -> Option<(Area, u16, u16)> {
    match *request {
        Request::ReadCoils(start, count) => Some((Area::Coil, start, count)),
        Request::ReadDiscreteInputs(start, count) => Some((Area::DiscreteInput, start, count)),
        Request::ReadInputRegisters(start, count) => Some((Area::InputRegister, start, count)),
        Request::ReadHoldingRegisters(start, count) => Some((Area::HoldingRegister, start, count)),
        _ => None,
    }
}

/// What [`crate::server::ReadHook`] points at.
pub(crate) type ReadHookFn = dyn Fn(&mut Bank, Area, u16, u16) + Send + Sync;

/// The answer a real device would give to `request`, applying any write to `bank`. `read_hook`
/// runs just before a valid read is answered (see [`crate::server::ReadHook`]).
pub(crate) fn answer(
    bank: &mut Bank,
    exceptions: &[InjectedException],
    request: &Request<'_>,
    read_hook: Option<&ReadHookFn>,
) -> Result<Response, ExceptionCode> {
    let op = validate(request)?;
    let (area, span) = op.span();
    if let Some(injected) = exceptions
        .iter()
        .find(|e| e.area == area && overlaps(&e.range, &span))
    {
        return Err(injected.code);
    }
    if let (Some(hook), Some((area, start, count))) = (read_hook, read_target(request)) {
        hook(bank, area, start, count);
    }
    Ok(execute(bank, op))
}

/// Whether two half-open ranges share an address; an empty range shares none.
fn overlaps(a: &Range<u32>, b: &Range<u32>) -> bool {
    !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end
}

fn validate<'r>(request: &'r Request<'_>) -> Result<Op<'r>, ExceptionCode> {
    let read = |area, start, count, max| {
        check_quantity(usize::from(count), max)?;
        check_range(start, usize::from(count))?;
        Ok(Op::Read { area, start, count })
    };
    match request {
        Request::ReadCoils(start, count) => read(Area::Coil, *start, *count, MAX_READ_BITS),
        Request::ReadDiscreteInputs(start, count) => {
            read(Area::DiscreteInput, *start, *count, MAX_READ_BITS)
        }
        Request::ReadInputRegisters(start, count) => {
            read(Area::InputRegister, *start, *count, MAX_READ_REGISTERS)
        }
        Request::ReadHoldingRegisters(start, count) => {
            read(Area::HoldingRegister, *start, *count, MAX_READ_REGISTERS)
        }
        Request::WriteSingleCoil(address, value) => Ok(Op::WriteCoil {
            address: *address,
            value: *value,
        }),
        Request::WriteSingleRegister(address, value) => Ok(Op::WriteRegister {
            address: *address,
            value: *value,
        }),
        Request::WriteMultipleCoils(start, values) => {
            check_quantity(values.len(), MAX_WRITE_BITS)?;
            check_range(*start, values.len())?;
            Ok(Op::WriteCoils {
                start: *start,
                values,
            })
        }
        Request::WriteMultipleRegisters(start, values) => {
            check_quantity(values.len(), MAX_WRITE_REGISTERS)?;
            check_range(*start, values.len())?;
            Ok(Op::WriteRegisters {
                start: *start,
                values,
            })
        }
        Request::ReportServerId
        | Request::MaskWriteRegister(..)
        | Request::ReadWriteMultipleRegisters(..)
        | Request::ReadDeviceIdentification(..)
        | Request::Custom(..) => Err(ExceptionCode::IllegalFunction),
    }
}

fn check_quantity(quantity: usize, max: u16) -> Result<(), ExceptionCode> {
    if quantity == 0 || quantity > usize::from(max) {
        return Err(ExceptionCode::IllegalDataValue);
    }
    Ok(())
}

fn check_range(start: u16, quantity: usize) -> Result<(), ExceptionCode> {
    if usize::from(start) + quantity > AREA_SIZE {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(())
}

fn execute(bank: &mut Bank, op: Op<'_>) -> Response {
    match op {
        Op::Read { area, start, count } => match area {
            Area::Coil => Response::ReadCoils(bank.bits(area, start, count).to_vec()),
            Area::DiscreteInput => {
                Response::ReadDiscreteInputs(bank.bits(area, start, count).to_vec())
            }
            Area::InputRegister => {
                Response::ReadInputRegisters(bank.registers(area, start, count).to_vec())
            }
            Area::HoldingRegister => {
                Response::ReadHoldingRegisters(bank.registers(area, start, count).to_vec())
            }
        },
        Op::WriteCoil { address, value } => {
            bank.set_bits(Area::Coil, address, &[value]);
            Response::WriteSingleCoil(address, value)
        }
        Op::WriteRegister { address, value } => {
            bank.set_registers(Area::HoldingRegister, address, &[value]);
            Response::WriteSingleRegister(address, value)
        }
        Op::WriteCoils { start, values } => {
            bank.set_bits(Area::Coil, start, values);
            Response::WriteMultipleCoils(start, quantity(values.len()))
        }
        Op::WriteRegisters { start, values } => {
            bank.set_registers(Area::HoldingRegister, start, values);
            Response::WriteMultipleRegisters(start, quantity(values.len()))
        }
    }
}

/// A validated write quantity as the protocol's 16-bit count (validation capped it far below).
fn quantity(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn ask(bank: &mut Bank, request: Request<'_>) -> Result<Response, ExceptionCode> {
        answer(bank, &[], &request, None)
    }

    fn busy(area: Area, range: Range<u32>) -> InjectedException {
        InjectedException {
            area,
            range,
            code: ExceptionCode::ServerDeviceBusy,
        }
    }

    #[test]
    fn each_read_function_reads_its_own_area() {
        let mut bank = Bank::new();
        bank.set_bits(Area::Coil, 5, &[true]);
        bank.set_bits(Area::DiscreteInput, 5, &[false, true]);
        bank.set_registers(Area::InputRegister, 5, &[11, 12]);
        bank.set_registers(Area::HoldingRegister, 5, &[21, 22]);
        assert_eq!(
            ask(&mut bank, Request::ReadCoils(5, 2)),
            Ok(Response::ReadCoils(vec![true, false]))
        );
        assert_eq!(
            ask(&mut bank, Request::ReadDiscreteInputs(5, 2)),
            Ok(Response::ReadDiscreteInputs(vec![false, true]))
        );
        assert_eq!(
            ask(&mut bank, Request::ReadInputRegisters(5, 2)),
            Ok(Response::ReadInputRegisters(vec![11, 12]))
        );
        assert_eq!(
            ask(&mut bank, Request::ReadHoldingRegisters(5, 2)),
            Ok(Response::ReadHoldingRegisters(vec![21, 22]))
        );
    }

    #[test]
    fn each_write_function_stores_and_echoes_like_a_device() {
        let mut bank = Bank::new();
        assert_eq!(
            ask(&mut bank, Request::WriteSingleCoil(3, true)),
            Ok(Response::WriteSingleCoil(3, true))
        );
        assert_eq!(
            ask(&mut bank, Request::WriteSingleRegister(4, 0xBEEF)),
            Ok(Response::WriteSingleRegister(4, 0xBEEF))
        );
        assert_eq!(
            ask(
                &mut bank,
                Request::WriteMultipleCoils(10, Cow::Owned(vec![true, false, true]))
            ),
            Ok(Response::WriteMultipleCoils(10, 3))
        );
        assert_eq!(
            ask(
                &mut bank,
                Request::WriteMultipleRegisters(20, Cow::Owned(vec![1, 2]))
            ),
            Ok(Response::WriteMultipleRegisters(20, 2))
        );
        assert!(bank.bit(Area::Coil, 3));
        assert_eq!(bank.register(Area::HoldingRegister, 4), 0xBEEF);
        assert_eq!(bank.bits(Area::Coil, 10, 3), &[true, false, true]);
        assert_eq!(bank.registers(Area::HoldingRegister, 20, 2), &[1, 2]);
    }

    #[test]
    fn read_quantities_outside_the_protocol_limits_are_illegal_data_values() {
        let mut bank = Bank::new();
        type MakeRead = fn(u16, u16) -> Request<'static>;
        let cases: [(MakeRead, u16); 4] = [
            (Request::ReadCoils, MAX_READ_BITS),
            (Request::ReadDiscreteInputs, MAX_READ_BITS),
            (Request::ReadInputRegisters, MAX_READ_REGISTERS),
            (Request::ReadHoldingRegisters, MAX_READ_REGISTERS),
        ];
        for (make, max) in cases {
            assert_eq!(
                ask(&mut bank, make(0, 0)),
                Err(ExceptionCode::IllegalDataValue)
            );
            assert!(ask(&mut bank, make(0, 1)).is_ok());
            assert!(ask(&mut bank, make(0, max)).is_ok());
            assert_eq!(
                ask(&mut bank, make(0, max + 1)),
                Err(ExceptionCode::IllegalDataValue)
            );
            assert_eq!(
                ask(&mut bank, make(0, u16::MAX)),
                Err(ExceptionCode::IllegalDataValue)
            );
        }
    }

    #[test]
    fn reads_running_past_address_65535_are_illegal_data_addresses() {
        let mut bank = Bank::new();
        assert!(ask(&mut bank, Request::ReadHoldingRegisters(65535, 1)).is_ok());
        assert!(ask(&mut bank, Request::ReadHoldingRegisters(65411, 125)).is_ok());
        assert_eq!(
            ask(&mut bank, Request::ReadHoldingRegisters(65535, 2)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            ask(&mut bank, Request::ReadInputRegisters(65412, 125)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert!(ask(&mut bank, Request::ReadCoils(63536, 2000)).is_ok());
        assert_eq!(
            ask(&mut bank, Request::ReadDiscreteInputs(63537, 2000)),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }

    #[test]
    fn the_quantity_is_checked_before_the_address_range() {
        let mut bank = Bank::new();
        assert_eq!(
            ask(&mut bank, Request::ReadHoldingRegisters(65535, 126)),
            Err(ExceptionCode::IllegalDataValue)
        );
    }

    #[test]
    fn write_quantities_outside_the_protocol_limits_are_refused() {
        let mut bank = Bank::new();
        let regs = |n: usize| Cow::Owned(vec![7u16; n]);
        let coils = |n: usize| Cow::Owned(vec![true; n]);
        let max_regs = usize::from(MAX_WRITE_REGISTERS);
        let max_bits = usize::from(MAX_WRITE_BITS);
        assert_eq!(
            ask(&mut bank, Request::WriteMultipleRegisters(0, regs(0))),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert!(ask(
            &mut bank,
            Request::WriteMultipleRegisters(0, regs(max_regs))
        )
        .is_ok());
        assert_eq!(
            ask(
                &mut bank,
                Request::WriteMultipleRegisters(0, regs(max_regs + 1))
            ),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            ask(&mut bank, Request::WriteMultipleCoils(0, coils(0))),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert!(ask(&mut bank, Request::WriteMultipleCoils(0, coils(max_bits))).is_ok());
        assert_eq!(
            ask(
                &mut bank,
                Request::WriteMultipleCoils(0, coils(max_bits + 1))
            ),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            ask(&mut bank, Request::WriteMultipleRegisters(65535, regs(2))),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            ask(&mut bank, Request::WriteMultipleCoils(65534, coils(3))),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            bank.register(Area::HoldingRegister, 65535),
            0,
            "a refused write changes nothing"
        );
        assert!(ask(&mut bank, Request::WriteSingleRegister(65535, 1)).is_ok());
        assert!(ask(&mut bank, Request::WriteSingleCoil(65535, true)).is_ok());
    }

    #[test]
    fn unsupported_functions_are_illegal_functions() {
        let mut bank = Bank::new();
        let unsupported = [
            Request::ReportServerId,
            Request::MaskWriteRegister(0, 0xFFFF, 0),
            Request::ReadWriteMultipleRegisters(0, 1, 0, Cow::Owned(vec![1])),
            Request::ReadDeviceIdentification(tokio_modbus::prelude::ReadCode::Basic, 0),
            Request::Custom(0x41, Cow::Owned(vec![1, 2])),
        ];
        for request in unsupported {
            assert_eq!(
                ask(&mut bank, request.clone()),
                Err(ExceptionCode::IllegalFunction),
                "{request:?}"
            );
        }
        assert_eq!(bank, Bank::new(), "nothing was written");
    }

    #[test]
    fn an_injected_exception_answers_every_request_touching_its_range() {
        let mut bank = Bank::new();
        let exceptions = [busy(Area::HoldingRegister, 10..20)];
        let answer = |bank: &mut Bank, r: Request<'_>| answer(bank, &exceptions, &r, None);
        let busy_code = Err(ExceptionCode::ServerDeviceBusy);
        assert!(answer(&mut bank, Request::ReadHoldingRegisters(0, 10)).is_ok());
        assert!(answer(&mut bank, Request::ReadHoldingRegisters(20, 5)).is_ok());
        assert_eq!(
            answer(&mut bank, Request::ReadHoldingRegisters(0, 11)),
            busy_code
        );
        assert_eq!(
            answer(&mut bank, Request::ReadHoldingRegisters(19, 1)),
            busy_code
        );
        assert_eq!(
            answer(&mut bank, Request::ReadHoldingRegisters(0, 100)),
            busy_code
        );
        assert_eq!(
            answer(&mut bank, Request::WriteSingleRegister(15, 1)),
            busy_code
        );
        assert_eq!(
            answer(
                &mut bank,
                Request::WriteMultipleRegisters(8, Cow::Owned(vec![1, 2, 3]))
            ),
            busy_code
        );
        assert_eq!(
            bank.register(Area::HoldingRegister, 8),
            0,
            "refused writes store nothing"
        );
        assert!(
            answer(&mut bank, Request::ReadInputRegisters(10, 10)).is_ok(),
            "another area at the same addresses is unaffected"
        );
    }

    #[test]
    fn injected_exceptions_apply_to_bit_areas_and_to_the_last_address() {
        let mut bank = Bank::new();
        let exceptions = [
            busy(Area::Coil, 65535..65536),
            InjectedException {
                area: Area::DiscreteInput,
                range: 0..1,
                code: ExceptionCode::Custom(0x42),
            },
        ];
        let answer = |bank: &mut Bank, r: Request<'_>| answer(bank, &exceptions, &r, None);
        assert_eq!(
            answer(&mut bank, Request::WriteSingleCoil(65535, true)),
            Err(ExceptionCode::ServerDeviceBusy)
        );
        assert_eq!(
            answer(&mut bank, Request::ReadCoils(65530, 6)),
            Err(ExceptionCode::ServerDeviceBusy)
        );
        assert!(answer(&mut bank, Request::ReadCoils(65530, 5)).is_ok());
        assert_eq!(
            answer(&mut bank, Request::ReadDiscreteInputs(0, 2000)),
            Err(ExceptionCode::Custom(0x42))
        );
    }

    #[test]
    fn protocol_limits_win_over_injected_exceptions_and_the_first_injected_wins() {
        let mut bank = Bank::new();
        let exceptions = [
            busy(Area::HoldingRegister, 0..10),
            InjectedException {
                area: Area::HoldingRegister,
                range: 5..6,
                code: ExceptionCode::ServerDeviceFailure,
            },
        ];
        assert_eq!(
            answer(
                &mut bank,
                &exceptions,
                &Request::ReadHoldingRegisters(0, 126),
                None
            ),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            answer(
                &mut bank,
                &exceptions,
                &Request::ReadHoldingRegisters(5, 1),
                None
            ),
            Err(ExceptionCode::ServerDeviceBusy)
        );
    }

    #[test]
    fn an_empty_injected_range_matches_nothing() {
        let mut bank = Bank::new();
        let exceptions = [busy(Area::HoldingRegister, 5..5)];
        assert!(answer(
            &mut bank,
            &exceptions,
            &Request::ReadHoldingRegisters(0, 10),
            None
        )
        .is_ok());
    }

    #[test]
    fn the_read_hook_runs_before_a_valid_read_is_answered_and_never_on_a_refused_one() {
        let mut bank = Bank::new();
        let bump = |bank: &mut Bank, area: Area, start: u16, _count: u16| {
            let next = bank.register(area, start) + 1;
            bank.set_registers(area, start, &[next]);
        };
        let read = Request::ReadHoldingRegisters(3, 1);
        for expected in 1..=3u16 {
            assert_eq!(
                answer(&mut bank, &[], &read, Some(&bump)),
                Ok(Response::ReadHoldingRegisters(vec![expected]))
            );
        }
        let refused = [busy(Area::HoldingRegister, 3..4)];
        assert!(answer(&mut bank, &refused, &read, Some(&bump)).is_err());
        let too_many = Request::ReadHoldingRegisters(3, 200);
        assert!(answer(&mut bank, &[], &too_many, Some(&bump)).is_err());
        assert_eq!(
            bank.register(Area::HoldingRegister, 3),
            3,
            "refused reads serve nothing"
        );
        assert!(answer(
            &mut bank,
            &[],
            &Request::WriteSingleRegister(3, 9),
            Some(&bump)
        )
        .is_ok());
        assert_eq!(
            bank.register(Area::HoldingRegister, 3),
            9,
            "writes do not run the hook"
        );
    }

    #[test]
    fn every_read_either_answers_exactly_its_count_or_refuses() {
        // Boundary sweep over start and count: the answer length must equal the count asked.
        let mut bank = Bank::new();
        let starts = [
            0u16, 1, 1000, 63535, 63536, 63537, 65410, 65411, 65412, 65534, 65535,
        ];
        let counts = [0u16, 1, 2, 124, 125, 126, 1999, 2000, 2001, u16::MAX];
        for start in starts {
            for count in counts {
                let end = usize::from(start) + usize::from(count);
                match ask(&mut bank, Request::ReadHoldingRegisters(start, count)) {
                    Ok(Response::ReadHoldingRegisters(words)) => {
                        assert_eq!(words.len(), usize::from(count));
                        assert!((1..=MAX_READ_REGISTERS).contains(&count) && end <= AREA_SIZE);
                    }
                    Ok(other) => panic!("wrong response {other:?}"),
                    Err(_) => assert!(count == 0 || count > MAX_READ_REGISTERS || end > AREA_SIZE),
                }
                match ask(&mut bank, Request::ReadCoils(start, count)) {
                    Ok(Response::ReadCoils(bits)) => {
                        assert_eq!(bits.len(), usize::from(count));
                        assert!((1..=MAX_READ_BITS).contains(&count) && end <= AREA_SIZE);
                    }
                    Ok(other) => panic!("wrong response {other:?}"),
                    Err(_) => assert!(count == 0 || count > MAX_READ_BITS || end > AREA_SIZE),
                }
            }
        }
    }

    #[test]
    fn the_read_target_names_reads_only() {
        assert_eq!(
            read_target(&Request::ReadCoils(1, 2)),
            Some((Area::Coil, 1, 2))
        );
        assert_eq!(
            read_target(&Request::ReadDiscreteInputs(3, 4)),
            Some((Area::DiscreteInput, 3, 4))
        );
        assert_eq!(
            read_target(&Request::ReadInputRegisters(5, 6)),
            Some((Area::InputRegister, 5, 6))
        );
        assert_eq!(
            read_target(&Request::ReadHoldingRegisters(7, 200)),
            Some((Area::HoldingRegister, 7, 200))
        );
        assert_eq!(read_target(&Request::WriteSingleRegister(1, 1)), None);
    }
}
