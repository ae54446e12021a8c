//! Sensor: a number read from a text file — a 1-Wire `w1_slave`, an hwmon `temp1_input`, an
//! IIO `in_voltage0_raw`, any file an instrument's driver writes.
//!
//! The sandbox has no filesystem unless the agent grants a directory read-only:
//! `[plugins.grants] dirs = ["/sys/bus/w1/devices"]` (or `--dir /sys/bus/w1/devices`).
//!
//! Config:
//! - `path`: the file, inside a granted directory (required);
//! - `regex`: where the number is: its first capture group (or the whole match), e.g.
//!   `t=(-?\d+)` for a `w1_slave`; default: the first number in the file;
//! - `scale` (1) and `offset` (0): the value is `raw * scale + offset` (`scale = 0.001` for
//!   the kernel's millidegrees).

use std::{fs, io::Read};

use fleetmeter_sdk::prelude::*;
use regex_lite::Regex;

/// The largest file read: sysfs attributes are a page.
const MAX_FILE: u64 = 64 * 1024;
const FIRST_NUMBER: &str = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?";

pub struct File {
    path: String,
    regex: Regex,
    calibration: Calibration,
}

impl Sensor for File {
    fn new(config: &Config) -> Result<Self> {
        let mut known = vec!["path", "regex"];
        known.extend(fleetmeter_sdk::calibration::KEYS);
        config.allow_only(&known)?;
        let path = config
            .get("path")
            .ok_or_else(|| {
                Error::new(
                    "config `path` is required, e.g. /sys/bus/w1/devices/28-000005e2fdc3/w1_slave",
                )
            })?
            .to_owned();
        let regex = Regex::new(config.get("regex").unwrap_or(FIRST_NUMBER))
            .map_err(|e| Error::new(format!("config `regex`: {e}")))?;
        if regex.captures_len() > 2 {
            log::warn("config `regex` has several groups: the first one is the number");
        }
        let sensor = Self {
            path,
            regex,
            calibration: Calibration::from_config(config)?,
        };
        // Reading now tells a missing grant or path at start: a file, unlike an instrument
        // on the network, is there or the configuration is wrong.
        sensor.read_raw().map_err(|e| Error::new(format!("{e}")))?;
        Ok(sensor)
    }

    fn sample(&mut self) -> Result<f64> {
        let raw = self.read_raw()?;
        self.calibration.apply(raw)
    }
}

impl File {
    fn read_raw(&self) -> Result<f64> {
        let file = fs::File::open(&self.path).map_err(|e| {
            Error::new(format!(
                "cannot open {}: {e}; the sandbox sees only granted directories: grant the one \
                 holding it (`dirs = [\"DIR\"]` in [plugins.grants], or `--dir DIR`)",
                self.path
            ))
        })?;
        let mut text = String::new();
        file.take(MAX_FILE)
            .read_to_string(&mut text)
            .map_err(|e| Error::new(format!("cannot read {}: {e}", self.path)))?;
        number(&self.regex, &text).map_err(|e| Error::new(format!("{}: {e}", self.path)))
    }
}

fn number(regex: &Regex, text: &str) -> Result<f64> {
    let captures = regex.captures(text).ok_or_else(|| {
        Error::new(format!(
            "`{}` matches nothing in {:?}",
            regex.as_str(),
            shorten(text)
        ))
    })?;
    let found = captures
        .get(1)
        .or_else(|| captures.get(0))
        .map(|m| m.as_str())
        .unwrap_or("");
    found
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| {
            Error::new(format!(
                "`{found}` (matched by `{}`) is not a number",
                regex.as_str()
            ))
        })
}

fn shorten(text: &str) -> String {
    let mut s: String = text.chars().take(80).collect();
    if text.chars().count() > 80 {
        s.push('…');
    }
    s
}

export_sensor!(File);

#[cfg(test)]
mod tests {
    use super::*;

    const W1: &str =
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";

    #[test]
    fn finds_numbers() {
        let first = Regex::new(FIRST_NUMBER).unwrap();
        assert_eq!(number(&first, "45000\n").unwrap(), 45000.0);
        assert_eq!(number(&first, "temp: -3.5e1 C").unwrap(), -35.0);
        let t = Regex::new(r"t=(-?\d+)").unwrap();
        assert_eq!(number(&t, W1).unwrap(), 23125.0);
        assert!(
            number(&t, "crc=00 NO")
                .unwrap_err()
                .message()
                .contains("matches nothing")
        );
    }

    #[test]
    fn reads_a_w1_tree() {
        let dir = std::env::temp_dir().join(format!("fm-file-{}", std::process::id()));
        fs::create_dir_all(dir.join("28-000005e2fdc3")).unwrap();
        let path = dir.join("28-000005e2fdc3/w1_slave");
        fs::write(&path, W1).unwrap();
        let path = path.to_str().unwrap();
        let mut sensor = File::new(&Config::new([
            ("path", path),
            ("regex", r"t=(-?\d+)"),
            ("scale", "0.001"),
        ]))
        .unwrap();
        assert_eq!(sensor.sample().unwrap(), 23.125);
        let err = File::new(&Config::new([("path", "/nonexistent-fm/x")]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("grant the one"), "{err}");
        assert!(File::new(&Config::new([("path", path), ("regex", "(")])).is_err());
        fs::remove_dir_all(dir).unwrap();
    }
}
