//! Inlines the plugin contract (`wit/fleetmeter.wit`) into a macro that the export macros
//! expand in the *plugin's* crate.
//!
//! Why not generate the bindings here, in the SDK? wit-bindgen marks each world with a
//! custom section; if the SDK generated both the `sensor` and the `aggregator` world, every
//! plugin would carry both and wasm-component-ld would demand the exports of both. Expanding
//! `generate!` in the plugin crate, for the one world it implements, avoids that, and the WIT
//! file stays the single source of the contract.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let wit_path = manifest_dir.join("../wit/fleetmeter.wit");
    println!("cargo:rerun-if-changed={}", wit_path.display());
    let wit = fs::read_to_string(&wit_path).unwrap_or_else(|err| {
        panic!(
            "cannot read the plugin contract at {}: {err}; the SDK must be built from a \
             fleetmeter checkout (sensor-sdk/ next to wit/)",
            wit_path.display()
        )
    });
    // The contract version comes from the WIT file itself, so the SDK cannot claim another.
    let version = wit
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("package fleetmeter:plugin@")?
                .strip_suffix(';')
        })
        .unwrap_or_else(|| {
            panic!(
                "{} has no `package fleetmeter:plugin@VERSION;` line",
                wit_path.display()
            )
        });
    println!("cargo:rustc-env=FLEETMETER_CONTRACT_VERSION={version}");
    let generated = format!(
        r#"/// Expands the wit-bindgen bindings of one world of the plugin contract.
#[doc(hidden)]
#[macro_export]
macro_rules! __fleetmeter_generate {{
    ($world:literal) => {{
        $crate::__private::wit_bindgen::generate!({{
            inline: {wit:?},
            world: $world,
            runtime_path: "::fleetmeter_sdk::__private::wit_bindgen::rt",
        }});
    }};
}}
"#
    );
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("generate.rs");
    fs::write(&out, generated)
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", out.display()));
}
