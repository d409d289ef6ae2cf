//! The simulated PLC seen from the outside: a real tokio-modbus client (or a raw socket, where the
//! wire itself matters) on 127.0.0.1, every wait bounded by a timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_sim::{Area, ExceptionCode, ModbusSim};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_modbus::client::{tcp, Context};
use tokio_modbus::prelude::{Client, Reader, Request, Slave, Writer};

/// Generous bound for anything that should happen at once on localhost.
const WAIT: Duration = Duration::from_secs(5);
/// How long a request must stay unanswered to count as "never answered".
const SILENCE: Duration = Duration::from_millis(300);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(output) => output,
        Err(_) => panic!("{what} took longer than {WAIT:?}"),
    }
}

async fn start_sim() -> ModbusSim {
    let bind: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    within("start", ModbusSim::start(bind))
        .await
        .expect("the simulator binds a free port")
}

async fn connect(sim: &ModbusSim) -> Context {
    within("connect", tcp::connect(sim.local_addr()))
        .await
        .expect("the simulator accepts connections")
}

async fn read_hr(ctx: &mut Context, start: u16, count: u16) -> Vec<u16> {
    within("read", ctx.read_holding_registers(start, count))
        .await
        .expect("transport works")
        .expect("no exception")
}

/// A Modbus TCP "read holding registers" frame, built by hand.
fn raw_read_frame(transaction: u16, start: u16, count: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(12);
    frame.extend_from_slice(&transaction.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 6, 1, 0x03]);
    frame.extend_from_slice(&start.to_be_bytes());
    frame.extend_from_slice(&count.to_be_bytes());
    frame
}

#[tokio::test]
async fn every_area_round_trips_over_the_wire() {
    let sim = start_sim().await;
    let mut ctx = connect(&sim).await;

    within("write", ctx.write_multiple_registers(100, &[1, 2, 3]))
        .await
        .expect("transport")
        .expect("no exception");
    within("write", ctx.write_single_register(103, 0xFFFF))
        .await
        .expect("transport")
        .expect("no exception");
    assert_eq!(read_hr(&mut ctx, 100, 4).await, vec![1, 2, 3, 0xFFFF]);
    assert_eq!(
        sim.registers(Area::HoldingRegister, 100, 4),
        vec![1, 2, 3, 0xFFFF]
    );

    within("write", ctx.write_multiple_coils(7, &[true, false, true]))
        .await
        .expect("transport")
        .expect("no exception");
    within("write", ctx.write_single_coil(10, true))
        .await
        .expect("transport")
        .expect("no exception");
    let coils = within("read", ctx.read_coils(7, 4))
        .await
        .expect("transport")
        .expect("no exception");
    assert_eq!(coils, vec![true, false, true, true]);
    assert_eq!(sim.bits(Area::Coil, 7, 4), vec![true, false, true, true]);

    sim.set_registers(Area::InputRegister, 65534, &[41, 42]);
    let words = within("read", ctx.read_input_registers(65534, 2))
        .await
        .expect("transport")
        .expect("no exception");
    assert_eq!(words, vec![41, 42]);

    sim.set_bits(Area::DiscreteInput, 0, &[false, true, true]);
    let inputs = within("read", ctx.read_discrete_inputs(0, 3))
        .await
        .expect("transport")
        .expect("no exception");
    assert_eq!(inputs, vec![false, true, true]);
}

#[tokio::test]
async fn every_unit_id_reads_the_same_bank() {
    let sim = start_sim().await;
    sim.set_registers(Area::HoldingRegister, 0, &[7, 8]);
    for unit in [0, 1, 17, 247, 255] {
        let mut ctx = within("connect", tcp::connect_slave(sim.local_addr(), Slave(unit)))
            .await
            .expect("connects");
        assert_eq!(read_hr(&mut ctx, 0, 2).await, vec![7, 8], "unit {unit}");
    }
}

#[tokio::test]
async fn reads_beyond_the_protocol_limits_are_refused_like_a_real_device() {
    let sim = start_sim().await;
    let mut ctx = connect(&sim).await;

    let too_many_registers = within("read", ctx.read_holding_registers(0, 126))
        .await
        .expect("transport");
    assert_eq!(too_many_registers, Err(ExceptionCode::IllegalDataValue));
    let too_many_bits = within("read", ctx.read_coils(0, 2001))
        .await
        .expect("transport");
    assert_eq!(too_many_bits, Err(ExceptionCode::IllegalDataValue));
    let past_the_end = within("read", ctx.read_input_registers(65535, 2))
        .await
        .expect("transport");
    assert_eq!(past_the_end, Err(ExceptionCode::IllegalDataAddress));

    assert_eq!(read_hr(&mut ctx, 0, 125).await.len(), 125);
    let bits = within("read", ctx.read_discrete_inputs(0, 2000))
        .await
        .expect("transport")
        .expect("2000 bits are allowed");
    assert_eq!(bits.len(), 2000);
}

#[tokio::test]
async fn unsupported_functions_answer_illegal_function() {
    let sim = start_sim().await;
    let mut ctx = connect(&sim).await;
    let mask = within("call", ctx.call(Request::MaskWriteRegister(0, 0x00FF, 0)))
        .await
        .expect("transport");
    assert_eq!(mask, Err(ExceptionCode::IllegalFunction));
    let custom = within(
        "call",
        ctx.call(Request::Custom(0x41, vec![1, 2, 3].into())),
    )
    .await
    .expect("transport");
    assert_eq!(custom, Err(ExceptionCode::IllegalFunction));
    assert_eq!(
        read_hr(&mut ctx, 0, 1).await,
        vec![0],
        "the connection lives on"
    );
}

#[tokio::test]
async fn injected_exceptions_answer_reads_and_writes_touching_their_range_until_cleared() {
    let sim = start_sim().await;
    let mut ctx = connect(&sim).await;
    sim.add_exception(
        Area::HoldingRegister,
        10..20,
        ExceptionCode::ServerDeviceBusy,
    );
    sim.add_exception(Area::Coil, 0..1, ExceptionCode::IllegalDataAddress);

    assert_eq!(read_hr(&mut ctx, 0, 10).await.len(), 10);
    let overlapping = within("read", ctx.read_holding_registers(5, 6))
        .await
        .expect("transport");
    assert_eq!(overlapping, Err(ExceptionCode::ServerDeviceBusy));
    let write = within("write", ctx.write_single_register(19, 5))
        .await
        .expect("transport");
    assert_eq!(write, Err(ExceptionCode::ServerDeviceBusy));
    assert_eq!(sim.registers(Area::HoldingRegister, 19, 1), vec![0]);
    let coil = within("read", ctx.read_coils(0, 8))
        .await
        .expect("transport");
    assert_eq!(coil, Err(ExceptionCode::IllegalDataAddress));

    sim.clear_exceptions();
    assert_eq!(read_hr(&mut ctx, 5, 6).await.len(), 6);
    within("write", ctx.write_single_register(19, 5))
        .await
        .expect("transport")
        .expect("no exception once cleared");
    assert_eq!(sim.registers(Area::HoldingRegister, 19, 1), vec![5]);
}

#[tokio::test]
async fn a_silent_device_keeps_connections_open_but_never_answers() {
    let sim = start_sim().await;
    sim.set_registers(Area::HoldingRegister, 0, &[0x1234]);
    let mut ctx = connect(&sim).await;
    let mut raw = within("connect", TcpStream::connect(sim.local_addr()))
        .await
        .expect("connects");

    sim.set_silent(true);
    let before = sim.request_count();
    let client_read = tokio::time::timeout(SILENCE, ctx.read_holding_registers(0, 1)).await;
    assert!(client_read.is_err(), "a silent device must not answer");

    within("send", raw.write_all(&raw_read_frame(1, 0, 1)))
        .await
        .expect("the socket is open");
    let mut reply = [0u8; 11];
    let raw_read = tokio::time::timeout(SILENCE, raw.read(&mut reply)).await;
    assert!(
        raw_read.is_err(),
        "no answer and no end-of-file while silent: {raw_read:?}"
    );
    assert_eq!(
        sim.request_count(),
        before,
        "dropped requests are not counted"
    );

    sim.set_silent(false);
    // The same socket is still open and answers the next request, never the dropped one.
    within("send", raw.write_all(&raw_read_frame(2, 0, 1)))
        .await
        .expect("the socket is still open");
    within("receive", raw.read_exact(&mut reply))
        .await
        .expect("an answer arrives");
    assert_eq!(&reply[..2], &2u16.to_be_bytes(), "transaction 2 answered");
    assert_eq!(&reply[7..], &[0x03, 2, 0x12, 0x34]);

    let mut fresh = connect(&sim).await;
    assert_eq!(read_hr(&mut fresh, 0, 1).await, vec![0x1234]);
}

#[tokio::test]
async fn a_response_delay_slows_every_answer() {
    let sim = start_sim().await;
    let mut ctx = connect(&sim).await;
    let delay = Duration::from_millis(500);
    sim.set_response_delay(delay);
    let started = Instant::now();
    read_hr(&mut ctx, 0, 1).await;
    assert!(started.elapsed() >= delay);

    sim.set_response_delay(Duration::ZERO);
    let started = Instant::now();
    read_hr(&mut ctx, 0, 1).await;
    assert!(started.elapsed() < delay);
}

#[tokio::test]
async fn a_connection_stuck_mid_frame_does_not_hold_up_others() {
    let sim = start_sim().await;
    let mut stuck = within("connect", TcpStream::connect(sim.local_addr()))
        .await
        .expect("connects");
    within("send", stuck.write_all(&raw_read_frame(1, 0, 1)[..5]))
        .await
        .expect("half a header is sent");
    let mut ctx = connect(&sim).await;
    assert_eq!(read_hr(&mut ctx, 0, 2).await, vec![0, 0]);
}

#[tokio::test]
async fn stop_closes_every_connection_and_refuses_new_ones_until_restart() {
    let sim = start_sim().await;
    sim.set_registers(Area::HoldingRegister, 0, &[99]);
    let addr = sim.local_addr();
    let mut ctx = connect(&sim).await;
    let mut raw = within("connect", TcpStream::connect(addr))
        .await
        .expect("connects");
    assert_eq!(read_hr(&mut ctx, 0, 1).await, vec![99]);
    assert_eq!(sim.connection_count(), 2);

    within("stop", sim.stop()).await;

    let mut buf = [0u8; 1];
    let eof = within("read after stop", raw.read(&mut buf)).await;
    assert!(
        matches!(eof, Ok(0) | Err(_)),
        "the socket is closed: {eof:?}"
    );
    let read = within("read after stop", ctx.read_holding_registers(0, 1)).await;
    assert!(read.is_err(), "the open client fails: {read:?}");
    let refused = within("connect after stop", tcp::connect(addr)).await;
    assert!(refused.is_err(), "nobody listens after stop");
    within("stop again", sim.stop()).await;

    within("restart", sim.restart())
        .await
        .expect("the same port is free again");
    assert_eq!(sim.local_addr(), addr);
    let mut again = connect(&sim).await;
    assert_eq!(
        read_hr(&mut again, 0, 1).await,
        vec![99],
        "the bank survives"
    );
    assert_eq!(sim.connection_count(), 3);
}

#[tokio::test]
async fn restart_while_running_power_cycles_the_device() {
    let sim = start_sim().await;
    let mut ctx = connect(&sim).await;
    read_hr(&mut ctx, 0, 1).await;
    within("restart", sim.restart())
        .await
        .expect("restarts on the same port");
    let read = within("read after restart", ctx.read_holding_registers(0, 1)).await;
    assert!(read.is_err(), "the old connection is gone: {read:?}");
    let mut fresh = connect(&sim).await;
    read_hr(&mut fresh, 0, 1).await;
}

#[tokio::test]
async fn dropping_the_last_handle_closes_connections_and_ends_programs() {
    let sim = start_sim().await;
    let mut raw = within("connect", TcpStream::connect(sim.local_addr()))
        .await
        .expect("connects");
    let program = sim.spawn_program(Duration::from_millis(5), |_, _| {});
    let clone = sim.clone();
    drop(sim);
    clone.set_registers(Area::HoldingRegister, 0, &[1]);
    drop(clone);

    let mut buf = [0u8; 1];
    let eof = within("read after drop", raw.read(&mut buf)).await;
    assert!(
        matches!(eof, Ok(0) | Err(_)),
        "the socket is closed: {eof:?}"
    );
    within("program end", program)
        .await
        .expect("the program ends without panicking");
}

#[tokio::test]
async fn a_program_moves_values_over_time() {
    let sim = start_sim().await;
    let program = sim.spawn_program(Duration::from_millis(10), |bank, tick| {
        let tick = u16::try_from(tick % 1000).expect("below 1000");
        bank.set_registers(Area::InputRegister, 0, &[tick]);
        bank.set_bits(Area::DiscreteInput, 0, &[tick % 2 == 1]);
    });
    let mut ctx = connect(&sim).await;

    let mut seen = Vec::new();
    for _ in 0..200 {
        let words = within("read", ctx.read_input_registers(0, 1))
            .await
            .expect("transport")
            .expect("no exception");
        if seen.last() != Some(&words[0]) {
            seen.push(words[0]);
        }
        if seen.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen.len() >= 4, "values move: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "ticks count up: {seen:?}"
    );
    program.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_several_registers_atomically() {
    let sim = start_sim().await;
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let sim = sim.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut n: u16 = 0;
            for _ in 0..1_000_000 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                n = n.wrapping_add(1);
                sim.update(|bank| {
                    bank.set_registers(Area::HoldingRegister, 0, &[n]);
                    bank.set_registers(Area::HoldingRegister, 1, &[n]);
                });
                tokio::task::yield_now().await;
            }
            n
        })
    };

    let mut ctx = connect(&sim).await;
    for _ in 0..300 {
        let words = read_hr(&mut ctx, 0, 2).await;
        assert_eq!(words[0], words[1], "a read saw half an update");
    }
    done.store(true, Ordering::SeqCst);
    let written = within("writer", writer).await.expect("writer ends");
    assert!(written > 0);
    let last = sim.update(|bank| bank.registers(Area::HoldingRegister, 0, 2).to_vec());
    assert_eq!(last, vec![written, written]);
}

#[tokio::test]
async fn requests_are_counted_and_reads_logged() {
    let sim = start_sim().await;
    let mut ctx = connect(&sim).await;
    assert_eq!(sim.request_count(), 0);

    read_hr(&mut ctx, 0, 10).await;
    within("read", ctx.read_input_registers(5, 2))
        .await
        .expect("transport")
        .expect("no exception");
    within("read", ctx.read_coils(0, 8))
        .await
        .expect("transport")
        .expect("no exception");
    within("read", ctx.read_discrete_inputs(3, 1))
        .await
        .expect("transport")
        .expect("no exception");
    within("write", ctx.write_single_register(0, 1))
        .await
        .expect("transport")
        .expect("no exception");
    let refused = within("read", ctx.read_holding_registers(0, 126))
        .await
        .expect("transport");
    assert!(refused.is_err());

    assert_eq!(sim.request_count(), 6);
    assert_eq!(
        sim.read_requests(),
        vec![
            (Area::HoldingRegister, 0, 10),
            (Area::InputRegister, 5, 2),
            (Area::Coil, 0, 8),
            (Area::DiscreteInput, 3, 1),
            (Area::HoldingRegister, 0, 126),
        ]
    );
    sim.clear_read_requests();
    assert!(sim.read_requests().is_empty());
    read_hr(&mut ctx, 1, 1).await;
    assert_eq!(sim.read_requests(), vec![(Area::HoldingRegister, 1, 1)]);
    assert_eq!(sim.request_count(), 7);
    assert_eq!(sim.connection_count(), 1);
}

#[tokio::test]
async fn reads_through_the_handle_do_not_count_as_requests() {
    let sim = start_sim().await;
    sim.set_registers(Area::HoldingRegister, 0, &[1]);
    assert_eq!(sim.registers(Area::HoldingRegister, 0, 1), vec![1]);
    assert_eq!(sim.registers(Area::Coil, 0, 1), Vec::<u16>::new());
    assert_eq!(sim.request_count(), 0);
    assert!(sim.read_requests().is_empty());
}
