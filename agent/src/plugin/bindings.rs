//! Host bindings generated from the contract's WIT files: `wit/fleetmeter.wit` (the current
//! version, 0.2.0) and `wit/v0.1.0/fleetmeter.wit` (0.1.0, still loaded). Private: the rest
//! of the crate uses the hand-written types of `plugin` (Metadata, Quantity, Reading) and
//! these stay an implementation detail.

/// Contract 0.2.0: samples of named quantities.
pub(crate) mod v2 {
    pub(crate) mod sensor {
        wasmtime::component::bindgen!({
            path: "../wit/fleetmeter.wit",
            world: "sensor",
            // Exports are called async (see `instance`); the `host` imports stay plain.
            exports: { default: async },
        });
    }

    pub(crate) mod aggregator {
        wasmtime::component::bindgen!({
            path: "../wit/fleetmeter.wit",
            world: "aggregator",
            exports: { default: async },
            with: {
                "fleetmeter:plugin/host@0.2.0": super::sensor::fleetmeter::plugin::host,
                "fleetmeter:plugin/types@0.2.0": super::sensor::fleetmeter::plugin::types,
            },
        });
    }

    pub(crate) use sensor::fleetmeter::plugin::{host, types};
}

/// Contract 0.1.0: one value per sample.
pub(crate) mod v1 {
    pub(crate) mod sensor {
        wasmtime::component::bindgen!({
            path: "../wit/v0.1.0/fleetmeter.wit",
            world: "sensor",
            exports: { default: async },
        });
    }

    pub(crate) mod aggregator {
        wasmtime::component::bindgen!({
            path: "../wit/v0.1.0/fleetmeter.wit",
            world: "aggregator",
            exports: { default: async },
            with: {
                "fleetmeter:plugin/host@0.1.0": super::sensor::fleetmeter::plugin::host,
                "fleetmeter:plugin/types@0.1.0": super::sensor::fleetmeter::plugin::types,
            },
        });
    }

    pub(crate) use sensor::fleetmeter::plugin::{host, types};
}
