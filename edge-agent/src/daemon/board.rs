//! Board I/O through the embedded-hal digital traits: the status LED shows the gateway's state
//! (steady: connected, slow blink: buffering, fast blink: fault) and digital inputs are read
//! as `bool` tags of the board's own device. Lines are GPIO character-device lines
//! (linux-embedded-hal `CdevPin`) or simulated pins for tests and machines without GPIO.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_config::{Board, GpioLine};
use edge_model::{now_ms, Batch, DeviceId, Quality, Sample, TagName, Value};
use embedded_hal::digital::{ErrorType, InputPin, OutputPin};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// What the status LED shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayState {
    /// Every device answers and every northbound is connected with no backlog: steady on.
    Connected,
    /// Devices answer, but a northbound is away or still sending a backlog: slow blink (1 Hz).
    Buffering,
    /// A device does not answer, or the store failed: fast blink (4 Hz).
    Fault,
}

/// What the LED state is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    pub devices_total: usize,
    pub devices_connected: usize,
    pub northbounds_total: usize,
    pub northbounds_connected: usize,
    /// Records stored but not yet acknowledged by the slowest northbound.
    pub backlog: u64,
    pub store_failed: bool,
}

/// A backlog below this is ordinary traffic in flight, not buffering.
pub const BACKLOG_BUFFERING: u64 = 100;

/// The state the LED shows for `h`. A fault wins over buffering: a technician at the cabinet
/// must see a dead device first.
pub fn gateway_state(h: &Health) -> GatewayState {
    if h.store_failed || h.devices_connected < h.devices_total {
        GatewayState::Fault
    } else if h.northbounds_connected < h.northbounds_total || h.backlog >= BACKLOG_BUFFERING {
        GatewayState::Buffering
    } else {
        GatewayState::Connected
    }
}

/// Whether the LED is lit `t_ms` into its pattern.
pub fn led_lit(state: GatewayState, t_ms: u64) -> bool {
    match state {
        GatewayState::Connected => true,
        GatewayState::Buffering => t_ms % 1000 < 500,
        GatewayState::Fault => t_ms % 250 < 125,
    }
}

/// Drives an LED pin from the gateway state; writes the pin only when its level changes.
#[derive(Debug)]
pub struct StatusLed<P: OutputPin> {
    pin: P,
    lit: Option<bool>,
}

impl<P: OutputPin> StatusLed<P> {
    pub fn new(pin: P) -> StatusLed<P> {
        StatusLed { pin, lit: None }
    }

    /// Shows `state` at `t_ms`; returns the level now on the pin.
    pub fn show(&mut self, state: GatewayState, t_ms: u64) -> Result<bool, P::Error> {
        let lit = led_lit(state, t_ms);
        if self.lit != Some(lit) {
            if lit {
                self.pin.set_high()?;
            } else {
                self.pin.set_low()?;
            }
            self.lit = Some(lit);
        }
        Ok(lit)
    }
}

/// Digital inputs read into samples: every input once at start, then on every change.
#[derive(Debug)]
pub struct DigitalInputs<P: InputPin> {
    device: DeviceId,
    inputs: Vec<(TagName, P, Option<Option<bool>>)>,
}

impl<P: InputPin> DigitalInputs<P> {
    pub fn new(device: &str, pins: Vec<(String, P)>) -> DigitalInputs<P> {
        DigitalInputs {
            device: DeviceId(device.to_owned()),
            inputs: pins
                .into_iter()
                .map(|(n, p)| (TagName(n), p, None))
                .collect(),
        }
    }

    /// Reads every input; the batch holds the ones that changed (an unreadable input is a
    /// `bad` sample once, until it reads again).
    pub fn scan(&mut self) -> Batch {
        let mut batch = Batch::new(self.device.clone());
        let ts = now_ms();
        for (name, pin, last) in &mut self.inputs {
            let now = pin.is_high().ok();
            if *last == Some(now) {
                continue;
            }
            *last = Some(now);
            batch.samples.push(Sample {
                tag: name.clone(),
                value: now.map(Value::Bool),
                quality: if now.is_some() {
                    Quality::Good
                } else {
                    Quality::Bad
                },
                read_ts_ms: ts,
                source_ts_ms: None,
                seq: 0,
            });
        }
        batch
    }
}

/// A simulated pin: a level shared by every clone, readable and drivable from tests.
#[derive(Debug, Clone, Default)]
pub struct SimPin {
    level: Arc<AtomicBool>,
}

impl SimPin {
    pub fn new(high: bool) -> SimPin {
        SimPin {
            level: Arc::new(AtomicBool::new(high)),
        }
    }

    pub fn set(&self, high: bool) {
        self.level.store(high, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }
}

impl ErrorType for SimPin {
    type Error = Infallible;
}

impl InputPin for SimPin {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.get())
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(!self.get())
    }
}

impl OutputPin for SimPin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.set(false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        self.set(true);
        Ok(())
    }
}

/// A board pin of either backend, as the embedded-hal traits see it.
pub enum BoardPin {
    Sim(SimPin),
    Cdev(linux_embedded_hal::CdevPin),
}

impl std::fmt::Debug for BoardPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoardPin::Sim(p) => write!(f, "BoardPin::Sim({})", p.get()),
            BoardPin::Cdev(_) => f.write_str("BoardPin::Cdev"),
        }
    }
}

/// Why a board pin failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("GPIO {chip} line {line}: {source}")]
    Open {
        chip: String,
        line: u32,
        source: linux_embedded_hal::gpio_cdev::errors::Error,
    },
    #[error("GPIO: {0}")]
    Io(String),
}

impl embedded_hal::digital::Error for PinError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

impl ErrorType for BoardPin {
    type Error = PinError;
}

impl InputPin for BoardPin {
    fn is_high(&mut self) -> Result<bool, PinError> {
        match self {
            BoardPin::Sim(p) => Ok(p.get()),
            BoardPin::Cdev(p) => p.is_high().map_err(|e| PinError::Io(e.to_string())),
        }
    }
    fn is_low(&mut self) -> Result<bool, PinError> {
        self.is_high().map(|h| !h)
    }
}

impl OutputPin for BoardPin {
    fn set_low(&mut self) -> Result<(), PinError> {
        match self {
            BoardPin::Sim(p) => {
                p.set(false);
                Ok(())
            }
            BoardPin::Cdev(p) => p.set_low().map_err(|e| PinError::Io(e.to_string())),
        }
    }
    fn set_high(&mut self) -> Result<(), PinError> {
        match self {
            BoardPin::Sim(p) => {
                p.set(true);
                Ok(())
            }
            BoardPin::Cdev(p) => p.set_high().map_err(|e| PinError::Io(e.to_string())),
        }
    }
}

/// Opens a configured line as an input or output. `chip = "sim"` gives a simulated pin (low).
pub fn open_pin(line: &GpioLine, output: bool) -> Result<BoardPin, PinError> {
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    if line.chip == "sim" {
        return Ok(BoardPin::Sim(SimPin::new(false)));
    }
    let open_err = |source| PinError::Open {
        chip: line.chip.clone(),
        line: line.line,
        source,
    };
    let mut chip = Chip::new(&line.chip).map_err(open_err)?;
    let handle_line = chip.get_line(line.line).map_err(open_err)?;
    let mut flags = if output {
        LineRequestFlags::OUTPUT
    } else {
        LineRequestFlags::INPUT
    };
    if line.active_low {
        flags.insert(LineRequestFlags::ACTIVE_LOW);
    }
    let handle = handle_line
        .request(flags, 0, "edge-agent")
        .map_err(open_err)?;
    linux_embedded_hal::CdevPin::new(handle)
        .map(BoardPin::Cdev)
        .map_err(open_err)
}

/// How often the LED pattern is updated; fine enough for the 4 Hz fault blink.
const LED_TICK: Duration = Duration::from_millis(25);

/// Starts the board task: the LED follows `health`, the inputs are scanned at their interval
/// and sent to the store like any device's batches. Lines that cannot be opened are logged
/// and left out; the gateway runs without them.
pub fn spawn_board(
    board: &Board,
    health: watch::Receiver<Health>,
    tx: mpsc::Sender<Batch>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let led = board
        .status_led
        .as_ref()
        .and_then(|l| match open_pin(l, true) {
            Ok(p) => Some(StatusLed::new(p)),
            Err(e) => {
                warn!(error = %e, "cannot open the status LED; running without it");
                None
            }
        });
    let mut pins = Vec::new();
    let mut scan_every = Duration::from_secs(1);
    for input in &board.inputs {
        match open_pin(&input.line, false) {
            Ok(p) => {
                scan_every = scan_every.min(input.poll_interval);
                pins.push((input.name.clone(), p));
            }
            Err(e) => {
                warn!(input = %input.name, error = %e, "cannot open a digital input; it is not published")
            }
        }
    }
    if led.is_none() && pins.is_empty() {
        return None;
    }
    info!(
        led = led.is_some(),
        inputs = pins.len(),
        "board I/O running"
    );
    let mut inputs = DigitalInputs::new(&board.input_device, pins);
    let mut led = led;
    Some(tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut led_tick = tokio::time::interval(LED_TICK);
        let mut scan_tick = tokio::time::interval(scan_every);
        led_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        scan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut led_failed = false;
        loop {
            tokio::select! {
                biased;
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() { break; }
                }
                _ = led_tick.tick() => {
                    if let Some(l) = led.as_mut() {
                        let state = gateway_state(&health.borrow());
                        let t = start.elapsed().as_millis() as u64;
                        if let Err(e) = l.show(state, t) {
                            if !led_failed {
                                warn!(error = %e, "cannot drive the status LED");
                                led_failed = true;
                            }
                        }
                    }
                }
                _ = scan_tick.tick() => {
                    let batch = inputs.scan();
                    if !batch.is_empty() && tx.send(batch).await.is_err() {
                        break;
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health {
            devices_total: 3,
            devices_connected: 3,
            northbounds_total: 1,
            northbounds_connected: 1,
            backlog: 0,
            store_failed: false,
        }
    }

    #[test]
    fn all_well_is_connected_and_the_led_is_steady() {
        assert_eq!(gateway_state(&health()), GatewayState::Connected);
        assert!((0..2000).all(|t| led_lit(GatewayState::Connected, t)));
    }

    #[test]
    fn a_broker_away_or_a_backlog_is_buffering_with_a_slow_blink() {
        let mut h = health();
        h.northbounds_connected = 0;
        assert_eq!(gateway_state(&h), GatewayState::Buffering);
        let mut h = health();
        h.backlog = BACKLOG_BUFFERING;
        assert_eq!(gateway_state(&h), GatewayState::Buffering);
        h.backlog = BACKLOG_BUFFERING - 1;
        assert_eq!(gateway_state(&h), GatewayState::Connected);
        assert!(led_lit(GatewayState::Buffering, 100));
        assert!(!led_lit(GatewayState::Buffering, 600));
        assert!(led_lit(GatewayState::Buffering, 1100));
    }

    #[test]
    fn a_dead_device_or_a_failed_store_is_a_fault_even_while_buffering() {
        let mut h = health();
        h.devices_connected = 2;
        h.northbounds_connected = 0;
        assert_eq!(gateway_state(&h), GatewayState::Fault);
        let mut h = health();
        h.store_failed = true;
        assert_eq!(gateway_state(&h), GatewayState::Fault);
        let lit: Vec<bool> = [0, 130, 250, 380]
            .map(|t| led_lit(GatewayState::Fault, t))
            .to_vec();
        assert_eq!(lit, vec![true, false, true, false]);
    }

    #[test]
    fn the_led_pin_follows_the_pattern_on_the_simulated_backend() {
        let pin = SimPin::new(false);
        let mut led = StatusLed::new(pin.clone());
        assert_eq!(led.show(GatewayState::Connected, 0), Ok(true));
        assert!(pin.get());
        assert_eq!(led.show(GatewayState::Buffering, 700), Ok(false));
        assert!(!pin.get());
        assert_eq!(led.show(GatewayState::Fault, 10), Ok(true));
        assert!(pin.get());
    }

    #[test]
    fn inputs_are_published_once_at_start_then_only_on_change() {
        let part = SimPin::new(false);
        let stack = SimPin::new(true);
        let mut inputs = DigitalInputs::new(
            "io",
            vec![
                ("part_present".into(), part.clone()),
                ("stack_red".into(), stack.clone()),
            ],
        );
        let first = inputs.scan();
        assert_eq!(first.device.0, "io");
        let values: Vec<(String, Option<Value>)> = first
            .samples
            .iter()
            .map(|s| (s.tag.0.clone(), s.value.clone()))
            .collect();
        assert_eq!(
            values,
            vec![
                ("part_present".into(), Some(Value::Bool(false))),
                ("stack_red".into(), Some(Value::Bool(true)))
            ]
        );
        assert!(inputs.scan().is_empty());
        part.set(true);
        let changed = inputs.scan();
        assert_eq!(changed.samples.len(), 1);
        assert_eq!(changed.samples[0].tag.0, "part_present");
        assert_eq!(changed.samples[0].value, Some(Value::Bool(true)));
        assert_eq!(changed.samples[0].quality, Quality::Good);
    }

    #[test]
    fn a_simulated_line_opens_without_hardware_and_a_missing_chip_is_an_error() {
        let sim = GpioLine {
            chip: "sim".into(),
            line: 4,
            active_low: false,
        };
        assert!(matches!(open_pin(&sim, true), Ok(BoardPin::Sim(_))));
        let missing = GpioLine {
            chip: "/dev/gpiochip-none".into(),
            line: 4,
            active_low: false,
        };
        assert!(matches!(
            open_pin(&missing, false),
            Err(PinError::Open { .. })
        ));
    }
}
