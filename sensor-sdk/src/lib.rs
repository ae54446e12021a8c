//! The guest SDK for fleetmeter plugins.
//!
//! A plugin is a struct, one trait impl and one macro call:
//!
//! ```
//! use fleetmeter_sdk::prelude::*;
//!
//! struct Constant(f64);
//!
//! impl Sensor for Constant {
//!     const UNIT: &'static str = "°C";
//!
//!     fn new(config: &Config) -> Result<Self> {
//!         config.allow_only(&["value"])?;
//!         Ok(Constant(config.parse_or("value", 21.5)?))
//!     }
//!
//!     fn sample(&mut self) -> Result<f64> {
//!         Ok(self.0)
//!     }
//! }
//!
//! export_sensor!(Constant);
//! # fn main() {
//! # let mut s = Constant::new(&Config::new([("value", "3")])).unwrap();
//! # assert_eq!(s.sample().unwrap(), 3.0);
//! # }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`) and
//! try it with `fleetmeter plugin run target/wasm32-wasip2/release/NAME.wasm`. The logic is
//! plain Rust: unit-test it natively with `cargo test` (the export macros expand to nothing
//! outside wasm32).
//!
//! A sensor that measures several things at once (a power meter: voltage, current, power)
//! implements [`MultiSensor`] instead and returns each [`Quantity`] with its unit:
//!
//! ```
//! use fleetmeter_sdk::prelude::*;
//!
//! struct Room;
//!
//! impl MultiSensor for Room {
//!     fn new(config: &Config) -> Result<Self> {
//!         config.allow_only(&[])?;
//!         Ok(Room)
//!     }
//!
//!     fn sample(&mut self) -> Result<Vec<Quantity>> {
//!         Ok(vec![
//!             Quantity::new("temperature", 21.5, "Cel"),
//!             Quantity::new("humidity", 40.2, "%"),
//!         ])
//!     }
//! }
//!
//! export_multi_sensor!(Room);
//! # fn main() {
//! # assert_eq!(Room.sample().unwrap()[1].unit, "%");
//! # }
//! ```
//!
//! # Layout
//! - [`Sensor`], [`MultiSensor`] and [`Aggregator`]: the traits a plugin implements.
//! - [`export_sensor!`] / [`export_multi_sensor!`] / [`export_aggregator!`]: bind the
//!   implementation to the WIT contract (`wit/fleetmeter.wit`, package
//!   `fleetmeter:plugin@0.2.0`). A [`Sensor`]'s value is one quantity named after the plugin
//!   (its crate name) in its [`Sensor::UNIT`]; an [`Aggregator`] is applied to each quantity
//!   of the round on its own.
//! - [`Config`]: the string configuration, with parsing helpers whose errors name the key.
//! - [`log`]: logging into the agent's log.
//! - [`Error`], [`Result`], [`bail!`]: errors that become the WIT error string.
//!
//! Errors returned from `new`, `sample` and `aggregate` reach the agent as WIT errors. A panic
//! cannot unwind on wasm32: the SDK's panic hook sends its message to the host, the call
//! fails with that message and the agent rebuilds the instance.

#![warn(missing_docs)]

pub mod calibration;
mod config;
mod error;
pub mod http;
pub mod log;

pub use calibration::Calibration;
pub use config::Config;
pub use error::{Error, Result};

/// The contract version this SDK builds plugins for: the version of the WIT package
/// (`wit/fleetmeter.wit`) the export macros expand, read from that file at build time. An
/// agent loads a plugin only when its own contract version is the same.
pub const CONTRACT_VERSION: &str = env!("FLEETMETER_CONTRACT_VERSION");

/// A sensor: produces one value per round on each device (one quantity, named after the
/// plugin). For several quantities per sample, implement [`MultiSensor`].
pub trait Sensor: Sized + 'static {
    /// Unit of the values, e.g. `"Cel"` or `"°C"`; empty when unitless.
    const UNIT: &'static str = "";
    /// One line for humans; defaults to the crate's `description`.
    const DESCRIPTION: &'static str = "";

    /// Builds the sensor from its configuration. Reject unknown keys
    /// ([`Config::allow_only`]) and bad values here: the agent refuses to start with the
    /// message instead of sampling garbage.
    fn new(config: &Config) -> Result<Self>;

    /// Takes one reading. Must be finite; an error costs this reading only.
    fn sample(&mut self) -> Result<f64>;
}

/// Most quantities one sample may carry: the agent refuses a sample of more.
pub const MAX_QUANTITIES: usize = 16;

/// One named value of a sample, with its unit.
///
/// The agent checks every sample: 1 to [`MAX_QUANTITIES`] quantities with distinct names of
/// 1 to 64 ASCII letters, digits, `-`, `_` or `.` (starting with a letter or digit), finite
/// values, units of at most 16 printable characters (UCUM-style: `Cel`, `V`, `A`, `W`, `%`,
/// `hPa`). A sample out of those bounds costs its round's reading, with the reason logged.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantity {
    /// Its name, e.g. `"temperature"`.
    pub name: String,
    /// The value (finite).
    pub value: f64,
    /// Its unit; empty when unitless.
    pub unit: String,
}

impl Quantity {
    /// A quantity.
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
        }
    }
}

/// Whether `name` may name a quantity: 1 to 64 ASCII letters, digits, `-`, `_` or `.`,
/// starting with a letter or digit; the error says so, naming `key` (the config key it came
/// from). For sensors that take their quantities' names from their configuration.
pub fn check_quantity_name(key: &str, name: &str) -> Result<()> {
    let good = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !good {
        bail!(
            "config `{key}`: {name:?} is not a quantity name (1 to 64 ASCII letters, digits, \
             '-', '_' or '.', starting with a letter or digit)"
        );
    }
    Ok(())
}

/// A sensor that reports several quantities per sample, each with its unit.
pub trait MultiSensor: Sized + 'static {
    /// One line for humans; defaults to the crate's `description`.
    const DESCRIPTION: &'static str = "";

    /// Builds the sensor from its configuration (see [`Sensor::new`]).
    fn new(config: &Config) -> Result<Self>;

    /// Takes one sample: its quantities, each finite, with distinct names (see [`Quantity`]
    /// for the bounds). An error costs this reading only.
    fn sample(&mut self) -> Result<Vec<Quantity>>;
}

/// One device's reading of one quantity in a round.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The device id.
    pub device: String,
    /// The sampled value (finite).
    pub value: f64,
}

impl Reading {
    /// A reading; handy in tests.
    pub fn new(device: impl Into<String>, value: f64) -> Self {
        Self {
            device: device.into(),
            value,
        }
    }
}

/// An aggregation policy: turns the readings of one quantity in one round into the published
/// value. The SDK calls it once per quantity of the round, with the devices that carried that
/// quantity (the agent has already refused a quantity whose unit differs between devices).
///
/// Aggregators get no real clock and no randomness from the host, so every leader computes
/// the same result from the same readings: keep `aggregate` a pure function of its input.
pub trait Aggregator: Sized + 'static {
    /// One line for humans; defaults to the crate's `description`.
    const DESCRIPTION: &'static str = "";

    /// Builds the aggregator from its configuration.
    fn new(config: &Config) -> Result<Self>;

    /// The round's value, or `None` to publish nothing for this round. `readings` is never
    /// empty when called by the agent (a round without readings publishes nothing), but a
    /// robust aggregator still answers `None` for it.
    fn aggregate(&mut self, readings: &[Reading]) -> Result<Option<f64>>;
}

/// Everything a plugin needs: `use fleetmeter_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::log;
    pub use crate::{
        Aggregator, Calibration, Config, Error, MultiSensor, Quantity, Reading, Result, Sensor,
        bail, export_aggregator, export_multi_sensor, export_sensor,
    };
}

// The `__fleetmeter_generate!` macro, with the WIT contract inlined (see build.rs).
include!(concat!(env!("OUT_DIR"), "/generate.rs"));

/// `describe` and `init` of an export, the same for every kind of plugin: the metadata from
/// the plugin's `Cargo.toml` (and `DESCRIPTION`), the state built by `new`.
#[doc(hidden)]
#[macro_export]
macro_rules! __fleetmeter_describe_init {
    ($ty:ty, $trait:path, $unit:expr) => {
        fn describe() -> Metadata {
            let meta = $crate::__private::metadata(
                ::core::env!("CARGO_PKG_NAME"),
                ::core::env!("CARGO_PKG_VERSION"),
                $unit,
                <$ty as $trait>::DESCRIPTION,
                ::core::env!("CARGO_PKG_DESCRIPTION"),
            );
            Metadata {
                name: meta.0,
                version: meta.1,
                unit: meta.2,
                description: meta.3,
            }
        }

        fn init(
            config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
        ) -> ::core::result::Result<(), ::std::string::String> {
            $crate::__private::init::<$ty>(config, <$ty as $trait>::new)
        }
    };
}

/// Exports a [`Sensor`] implementation as the plugin's `sensor` world.
///
/// Expands to nothing outside wasm32, so the crate also builds and tests natively.
/// The plugin must depend on this SDK under its own name, `fleetmeter_sdk`.
#[macro_export]
macro_rules! export_sensor {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        #[allow(
            unused_imports,
            missing_debug_implementations,
            clippy::all,
            reason = "generated bindings in the plugin's crate: not the plugin author's to lint"
        )]
        mod __fleetmeter_sensor_export {
            use super::*;
            $crate::__fleetmeter_generate!("sensor");

            use exports::fleetmeter::plugin::sensor_api::{Guest, Metadata, Quantity};

            struct Export;

            impl Guest for Export {
                $crate::__fleetmeter_describe_init!(
                    $ty,
                    $crate::Sensor,
                    <$ty as $crate::Sensor>::UNIT
                );

                fn sample()
                -> ::core::result::Result<::std::vec::Vec<Quantity>, ::std::string::String>
                {
                    let value = $crate::__private::sample::<$ty>()?;
                    ::core::result::Result::Ok(::std::vec![Quantity {
                        name: ::core::env!("CARGO_PKG_NAME").into(),
                        value,
                        unit: <$ty as $crate::Sensor>::UNIT.into(),
                    }])
                }
            }

            export!(Export);
        }
    };
}

/// Exports a [`MultiSensor`] implementation as the plugin's `sensor` world.
///
/// Expands to nothing outside wasm32, so the crate also builds and tests natively.
/// The plugin must depend on this SDK under its own name, `fleetmeter_sdk`.
#[macro_export]
macro_rules! export_multi_sensor {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        #[allow(
            unused_imports,
            missing_debug_implementations,
            clippy::all,
            reason = "generated bindings in the plugin's crate: not the plugin author's to lint"
        )]
        mod __fleetmeter_sensor_export {
            use super::*;
            $crate::__fleetmeter_generate!("sensor");

            use exports::fleetmeter::plugin::sensor_api::{Guest, Metadata, Quantity};

            struct Export;

            impl Guest for Export {
                $crate::__fleetmeter_describe_init!($ty, $crate::MultiSensor, "");

                fn sample()
                -> ::core::result::Result<::std::vec::Vec<Quantity>, ::std::string::String>
                {
                    ::core::result::Result::Ok(
                        $crate::__private::sample_all::<$ty>()?
                            .into_iter()
                            .map(|q| Quantity {
                                name: q.name,
                                value: q.value,
                                unit: q.unit,
                            })
                            .collect(),
                    )
                }
            }

            export!(Export);
        }
    };
}

/// Exports an [`Aggregator`] implementation as the plugin's `aggregator` world.
///
/// Expands to nothing outside wasm32, so the crate also builds and tests natively.
/// The plugin must depend on this SDK under its own name, `fleetmeter_sdk`.
#[macro_export]
macro_rules! export_aggregator {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        #[allow(
            unused_imports,
            missing_debug_implementations,
            clippy::all,
            reason = "generated bindings in the plugin's crate: not the plugin author's to lint"
        )]
        mod __fleetmeter_aggregator_export {
            use super::*;
            $crate::__fleetmeter_generate!("aggregator");

            use exports::fleetmeter::plugin::aggregator_api::{Column, Guest, Metadata, Published};

            struct Export;

            impl Guest for Export {
                $crate::__fleetmeter_describe_init!($ty, $crate::Aggregator, "");

                fn aggregate(
                    devices: ::std::vec::Vec<::std::string::String>,
                    quantities: ::std::vec::Vec<Column>,
                ) -> ::core::result::Result<::std::vec::Vec<Published>, ::std::string::String>
                {
                    let columns = quantities.into_iter().map(|c| (c.name, c.values)).collect();
                    ::core::result::Result::Ok(
                        $crate::__private::aggregate_each::<$ty>(&devices, columns)?
                            .into_iter()
                            .map(|(name, value)| Published { name, value })
                            .collect(),
                    )
                }
            }

            export!(Export);
        }
    };
}

/// Glue called by the export macros; not a public API.
#[doc(hidden)]
pub mod __private {
    use std::{any::Any, cell::RefCell};

    pub use wit_bindgen;

    use crate::{Aggregator, Config, MultiSensor, Quantity, Reading, Result, Sensor};

    thread_local! {
        // The plugin's state between calls. wasm32 components are single-threaded and the
        // host serialises calls, so one slot per instance is enough.
        static PLUGIN: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    /// (name, version, unit, description)
    pub fn metadata(
        name: &str,
        version: &str,
        unit: &str,
        description: &str,
        crate_description: &str,
    ) -> (String, String, String, String) {
        let description = if description.is_empty() {
            crate_description
        } else {
            description
        };
        (
            name.to_owned(),
            version.to_owned(),
            unit.to_owned(),
            description.to_owned(),
        )
    }

    pub fn init<T: 'static>(
        config: Vec<(String, String)>,
        build: fn(&Config) -> Result<T>,
    ) -> Result<(), String> {
        crate::log::install_panic_hook();
        let plugin = build(&Config::new(config))?;
        PLUGIN.with(|slot| *slot.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    fn with_plugin<T: 'static, R>(f: impl FnOnce(&mut T) -> Result<R>) -> Result<R, String> {
        PLUGIN.with(|slot| {
            let mut slot = slot.borrow_mut();
            match slot.as_mut().and_then(|p| p.downcast_mut::<T>()) {
                Some(plugin) => f(plugin).map_err(String::from),
                None => Err("the host called the plugin before `init`".to_owned()),
            }
        })
    }

    pub fn sample<T: Sensor>() -> Result<f64, String> {
        let value = with_plugin::<T, _>(|p| p.sample())?;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(format!("the sensor produced a non-finite value ({value})"))
        }
    }

    pub fn sample_all<T: MultiSensor>() -> Result<Vec<Quantity>, String> {
        let sample = with_plugin::<T, _>(|p| p.sample())?;
        match sample.iter().find(|q| !q.value.is_finite()) {
            Some(q) => Err(format!(
                "the sensor produced a non-finite value for {} ({})",
                q.name, q.value
            )),
            None => Ok(sample),
        }
    }

    /// (quantity, each device's value) per quantity of the round.
    pub type Columns = Vec<(String, Vec<Option<f64>>)>;

    /// The aggregator applied to each quantity of the round on its own, with the devices that
    /// carried it: the value of each it publishes, in the columns' order.
    pub fn aggregate_each<T: Aggregator>(
        devices: &[String],
        columns: Columns,
    ) -> Result<Vec<(String, f64)>, String> {
        let mut published = Vec::new();
        for (name, values) in columns {
            let readings: Vec<Reading> = devices
                .iter()
                .zip(values)
                .filter_map(|(device, value)| Some(Reading::new(device.clone(), value?)))
                .collect();
            match with_plugin::<T, _>(|p| p.aggregate(&readings))? {
                Some(value) if !value.is_finite() => {
                    return Err(format!(
                        "the aggregator produced a non-finite value for {name} ({value})"
                    ));
                }
                Some(value) => published.push((name, value)),
                None => {}
            }
        }
        Ok(published)
    }
}

#[cfg(test)]
mod tests {
    use crate::prelude::*;

    struct Mean;

    impl Aggregator for Mean {
        fn new(_: &Config) -> Result<Self> {
            Ok(Mean)
        }

        fn aggregate(&mut self, readings: &[Reading]) -> Result<Option<f64>> {
            if readings.len() < 2 {
                return Ok(None);
            }
            Ok(Some(
                readings.iter().map(|r| r.value).sum::<f64>() / readings.len() as f64,
            ))
        }
    }

    #[test]
    fn an_aggregator_is_applied_to_each_quantity_on_its_own() {
        super::__private::init::<Mean>(Vec::new(), Mean::new).unwrap();
        let devices = ["1".to_owned(), "2".to_owned()];
        let published = super::__private::aggregate_each::<Mean>(
            &devices,
            vec![
                ("t".to_owned(), vec![Some(20.0), Some(22.0)]),
                ("rh".to_owned(), vec![Some(40.0), None]),
            ],
        )
        .unwrap();
        // rh has one reading: this aggregator publishes nothing for it.
        assert_eq!(published, [("t".to_owned(), 21.0)]);
    }

    #[test]
    fn the_contract_version_is_the_wit_package_version() {
        let wit = include_str!("../../wit/fleetmeter.wit");
        let expected = format!("package fleetmeter:plugin@{};", super::CONTRACT_VERSION);
        assert!(
            wit.lines().any(|l| l.trim() == expected),
            "wit/fleetmeter.wit does not declare `{expected}`"
        );
    }
}
