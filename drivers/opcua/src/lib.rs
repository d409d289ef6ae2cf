//! OPC UA southbound: node ids and device settings (pure, used by the board config), and with
//! the `client` feature the device task (sessions, subscriptions, polling, recovery, writes
//! through edge-driver's `WriteHandle`), browse and the gateway's certificate store.

pub mod node;
pub mod spec;

#[cfg(feature = "client")]
pub mod browse;
#[cfg(feature = "client")]
pub mod convert;
#[cfg(feature = "client")]
pub mod device;
#[cfg(feature = "client")]
pub mod pki;
#[cfg(feature = "client")]
pub mod session;

pub use node::{Identifier, Namespace, NodeAddress, NodeAddressError};
pub use spec::{
    security_is_consistent, Deadband, DeviceSpec, Identity, Password, PkiSettings, SecurityMode,
    SecurityNameError, SecurityPolicy, TagMode, TagSpec,
};

#[cfg(feature = "client")]
pub use device::OpcUaDevice;

/// The OPC UA stack, for callers that build their own requests (the simulator's tests).
#[cfg(feature = "client")]
pub use opcua;
