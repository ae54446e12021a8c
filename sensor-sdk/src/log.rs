//! Logging into the agent's log. Each line is tagged with the plugin's name by the host.
//!
//! In native unit tests (no host), lines go to stderr instead.

#[allow(missing_debug_implementations, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin-host",
    });
}

#[cfg(target_arch = "wasm32")]
use bindings::fleetmeter::plugin::host;
use bindings::fleetmeter::plugin::host::Level;

fn write(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Logs at TRACE level.
pub fn trace(message: impl AsRef<str>) {
    write(Level::Trace, message.as_ref());
}

/// Logs at DEBUG level.
pub fn debug(message: impl AsRef<str>) {
    write(Level::Debug, message.as_ref());
}

/// Logs at INFO level.
pub fn info(message: impl AsRef<str>) {
    write(Level::Info, message.as_ref());
}

/// Logs at WARN level.
pub fn warn(message: impl AsRef<str>) {
    write(Level::Warn, message.as_ref());
}

/// Logs at ERROR level.
pub fn error(message: impl AsRef<str>) {
    write(Level::Error, message.as_ref());
}

/// Installs (once) a panic hook that hands the panic message to the host before the
/// instance aborts: on wasm32 a panic cannot unwind, so without this the host would only
/// see a bare `unreachable` trap.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            #[cfg(target_arch = "wasm32")]
            host::panicked(&info.to_string());
            #[cfg(not(target_arch = "wasm32"))]
            previous(info);
            #[cfg(target_arch = "wasm32")]
            let _ = &previous;
        }));
    });
}
