//! What the plugin commands share: where plugins and compiled code live, and `KEY=VALUE`
//! arguments (`fleetmeter plugin …`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    config::keys,
    plugin::{self, EngineOptions, PluginEngine},
};

/// Where plugins and compiled code live.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Directory where plugin names are looked up (`mean` means DIR/mean.wasm).
    #[arg(
        long = keys::PLUGIN_DIR.long(),
        env = keys::PLUGIN_DIR.var(),
        default_value = keys::PLUGIN_DIR.default.trim_matches('"')
    )]
    pub plugin_dir: PathBuf,
    /// Directory for compiled plugins [default: $XDG_CACHE_HOME/fleetmeter/plugins or
    /// ~/.cache/fleetmeter/plugins].
    #[arg(long, env = "FLEETMETER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile plugins on every start instead of using the cache.
    #[arg(long)]
    pub no_cache: bool,
}

pub(super) fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("`{raw}` is not KEY=VALUE")),
    }
}

pub(super) fn engine(args: &EngineArgs, fuel: bool) -> Result<PluginEngine> {
    let cache_dir = if args.no_cache {
        None
    } else {
        args.cache_dir.clone().or_else(plugin::default_cache_dir)
    };
    Ok(PluginEngine::new(EngineOptions {
        cache_dir,
        fuel,
        ..EngineOptions::default()
    })?)
}

pub(super) fn locate(file: &str, args: &EngineArgs) -> Result<PathBuf> {
    let path = plugin::resolve(file, &args.plugin_dir);
    if !path.exists() {
        if path.starts_with(&args.plugin_dir) {
            bail!(
                "no plugin `{file}`: {} does not exist (build the bundled plugins with \
                 scripts/build-plugins, or pass a path to a .wasm file)",
                path.display()
            );
        }
        bail!("plugin file {} does not exist", path.display());
    }
    Ok(path)
}
