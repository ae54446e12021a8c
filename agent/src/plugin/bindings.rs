//! Host bindings generated from `wit/fleetmeter.wit`. Private: the rest of the crate uses the
//! hand-written types of `plugin` (Metadata, Reading) and these stay an implementation detail.

pub(crate) mod sensor {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sensor",
        // Exports are called async (see `instance`); the `host` imports stay plain.
        exports: { default: async },
    });
}

pub(crate) mod aggregator {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "aggregator",
        exports: { default: async },
        with: {
            "fleetmeter:plugin/host": super::sensor::fleetmeter::plugin::host,
            "fleetmeter:plugin/types": super::sensor::fleetmeter::plugin::types,
        },
    });
}

pub(crate) use sensor::fleetmeter::plugin::{host, types};
