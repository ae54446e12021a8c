//! Sensor: the temperature of a Linux thermal zone (`/sys/class/thermal/ZONE/temp`, in
//! millidegrees Celsius).
//!
//! The sandbox has no filesystem unless the agent grants a directory: grant
//! `/sys/class/thermal` read-only (agent.toml `dirs = ["/sys/class/thermal"]`, or
//! `fleetmeter plugin run --dir /sys/class/thermal`).
//!
//! Config: `zone` (default `thermal_zone0`), `root` (where the directory is visible inside
//! the sandbox; default `/sys/class/thermal`).

use std::{fs, path::PathBuf};

use fleetmeter_sdk::prelude::*;

pub struct ThermalZone {
    temp: PathBuf,
}

impl Sensor for ThermalZone {
    const UNIT: &'static str = "°C";

    fn new(config: &Config) -> Result<Self> {
        config.allow_only(&["zone", "root"])?;
        let root = PathBuf::from(config.get("root").unwrap_or("/sys/class/thermal"));
        let zone = config.get("zone").unwrap_or("thermal_zone0");
        if zone.is_empty() || zone.contains('/') || zone == ".." {
            bail!("config `zone`: `{zone}` is not a zone name (e.g. thermal_zone0)");
        }
        let zones = match fs::read_dir(&root) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("thermal_zone"))
                    .collect();
                names.sort();
                names
            }
            Err(err) => bail!(
                "cannot read {}: {err}; the sandbox has no filesystem unless granted: grant the \
                 host directory read-only (agent.toml `dirs = [\"{}\"]`, or `--dir {}` with \
                 `fleetmeter plugin run`)",
                root.display(),
                root.display(),
                root.display()
            ),
        };
        let sensor = Self {
            temp: root.join(zone).join("temp"),
        };
        if let Err(err) = sensor.read() {
            if !zones.iter().any(|z| z == zone) {
                bail!(
                    "no thermal zone `{zone}` under {}; zones present: {}",
                    root.display(),
                    if zones.is_empty() {
                        "none".to_owned()
                    } else {
                        zones.join(", ")
                    }
                );
            }
            return Err(err);
        }
        log::info(format!("reading {}", sensor.temp.display()));
        Ok(sensor)
    }

    fn sample(&mut self) -> Result<f64> {
        self.read()
    }
}

impl ThermalZone {
    fn read(&self) -> Result<f64> {
        let raw = fs::read_to_string(&self.temp)
            .map_err(|err| Error::new(format!("cannot read {}: {err}", self.temp.display())))?;
        parse_millidegrees(&raw)
            .map_err(|err| Error::new(format!("{}: {err}", self.temp.display())))
    }
}

/// The kernel writes an integer number of millidegrees Celsius, e.g. `45000\n`.
fn parse_millidegrees(raw: &str) -> Result<f64> {
    let trimmed = raw.trim();
    let milli: i64 = trimmed
        .parse()
        .map_err(|_| Error::new(format!("expected millidegrees, found `{trimmed}`")))?;
    Ok(milli as f64 / 1000.0)
}

export_sensor!(ThermalZone);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_format() {
        assert_eq!(parse_millidegrees("45000\n").unwrap(), 45.0);
        assert_eq!(parse_millidegrees("-1500").unwrap(), -1.5);
        assert!(parse_millidegrees("hot").is_err());
    }

    #[test]
    fn reads_a_zone_and_lists_zones_when_missing() {
        let dir = std::env::temp_dir().join(format!("fm-thermal-{}", std::process::id()));
        fs::create_dir_all(dir.join("thermal_zone3")).unwrap();
        fs::write(dir.join("thermal_zone3/temp"), "51234\n").unwrap();
        let root = dir.to_str().unwrap();
        let mut sensor =
            ThermalZone::new(&Config::new([("root", root), ("zone", "thermal_zone3")])).unwrap();
        assert_eq!(sensor.sample().unwrap(), 51.234);
        let err = ThermalZone::new(&Config::new([("root", root)]))
            .err()
            .unwrap();
        assert!(
            err.message().contains("zones present: thermal_zone3"),
            "{err}"
        );
        let err = ThermalZone::new(&Config::new([("root", "/nonexistent-fm")]))
            .err()
            .unwrap();
        assert!(err.message().contains("grant the host directory"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }
}
