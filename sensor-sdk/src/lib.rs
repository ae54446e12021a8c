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
//! # Layout
//! - [`Sensor`] and [`Aggregator`]: the traits a plugin implements.
//! - [`export_sensor!`] / [`export_aggregator!`]: bind the implementation to the WIT contract
//!   (`wit/fleetmeter.wit`, package `fleetmeter:plugin@0.1.0`).
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

/// A sensor: produces one value per round on each device.
pub trait Sensor: Sized + 'static {
    /// Unit of the values, e.g. `"°C"`; empty when unitless.
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

/// One device's reading in a round.
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

/// An aggregation policy: turns the readings of one round into the published value.
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
        Aggregator, Calibration, Config, Error, Reading, Result, Sensor, bail, export_aggregator,
        export_sensor,
    };
}

// The `__fleetmeter_generate!` macro, with the WIT contract inlined (see build.rs).
include!(concat!(env!("OUT_DIR"), "/generate.rs"));

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

            use exports::fleetmeter::plugin::sensor_api::{Guest, Metadata};

            struct Export;

            impl Guest for Export {
                fn describe() -> Metadata {
                    let meta = $crate::__private::metadata(
                        ::core::env!("CARGO_PKG_NAME"),
                        ::core::env!("CARGO_PKG_VERSION"),
                        <$ty as $crate::Sensor>::UNIT,
                        <$ty as $crate::Sensor>::DESCRIPTION,
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
                    $crate::__private::init::<$ty>(config, <$ty as $crate::Sensor>::new)
                }

                fn sample() -> ::core::result::Result<f64, ::std::string::String> {
                    $crate::__private::sample::<$ty>()
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

            use exports::fleetmeter::plugin::aggregator_api::{Guest, Metadata, Reading};

            struct Export;

            impl Guest for Export {
                fn describe() -> Metadata {
                    let meta = $crate::__private::metadata(
                        ::core::env!("CARGO_PKG_NAME"),
                        ::core::env!("CARGO_PKG_VERSION"),
                        "",
                        <$ty as $crate::Aggregator>::DESCRIPTION,
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
                    $crate::__private::init::<$ty>(config, <$ty as $crate::Aggregator>::new)
                }

                fn aggregate(
                    readings: ::std::vec::Vec<Reading>,
                ) -> ::core::result::Result<::core::option::Option<f64>, ::std::string::String>
                {
                    $crate::__private::aggregate::<$ty>(
                        readings
                            .into_iter()
                            .map(|r| $crate::Reading {
                                device: r.device,
                                value: r.value,
                            })
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

    use crate::{Aggregator, Config, Reading, Result, Sensor};

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

    pub fn aggregate<T: Aggregator>(readings: Vec<Reading>) -> Result<Option<f64>, String> {
        match with_plugin::<T, _>(|p| p.aggregate(&readings))? {
            Some(value) if !value.is_finite() => Err(format!(
                "the aggregator produced a non-finite value ({value})"
            )),
            result => Ok(result),
        }
    }
}

#[cfg(test)]
mod tests {
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
