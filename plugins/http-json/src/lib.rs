//! Sensor: a number in an instrument's JSON status page, fetched with HTTP GET and picked by
//! a JSON pointer (RFC 6901) — or several, each a named quantity with its unit, from one
//! fetch of the page.
//!
//! The sandbox sends no request unless the agent grants the page's origin:
//! `[plugins.grants] http = ["http://10.0.0.7:8080"]` (or `fleetmeter plugin run --http
//! http://10.0.0.7:8080`). Redirects are not followed: a 3xx is an error naming its target.
//!
//! Config:
//! - `url`: the page, `http://` or `https://` (required);
//! - `pointer`: where the number is, e.g. `/sensors/0/t` (`""` is the whole document). A
//!   string holding a number (`"21.5"`) is accepted. The sample is one value, named
//!   `http-json`, unitless;
//! - `quantities`, instead of `pointer`: several numbers of the same page,
//!   `NAME:POINTER[:UNIT]` separated by commas (`temperature:/t:Cel, humidity:/rh:%`), up to
//!   16 (a pointer with `:` or `,` in it needs `pointer`);
//! - `header`: one `Name: value` header, e.g. `Authorization: Bearer ...`; `$NAME` in the
//!   value is replaced by the environment variable NAME, so a token can come from
//!   `[plugins.grants.env]` instead of the config;
//! - `max_body_kib`: the largest page read, 1 to 4096 (default 256);
//! - `scale` (1) and `offset` (0): the value is `raw * scale + offset`.

use fleetmeter_sdk::{http, prelude::*};

pub struct HttpJson {
    page: http::Page,
    /// (name, pointer, unit) of each number.
    pointers: Vec<(String, String, String)>,
    headers: Vec<(String, String)>,
    calibration: Calibration,
}

fn check_pointer(key: &str, pointer: &str) -> Result<()> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        bail!("config `{key}`: `{pointer}` must start with `/` (RFC 6901), e.g. /{pointer}");
    }
    Ok(())
}

/// `pointer` (one number, named after the plugin) or `quantities` (several).
fn parse_pointers(config: &Config) -> Result<Vec<(String, String, String)>> {
    match (config.get("pointer"), config.get("quantities")) {
        (Some(_), Some(_)) => bail!("config: give `pointer` or `quantities`, not both"),
        (Some(pointer), None) => {
            check_pointer("pointer", pointer)?;
            Ok(vec![(
                env!("CARGO_PKG_NAME").to_owned(),
                pointer.to_owned(),
                String::new(),
            )])
        }
        (None, Some(spec)) => {
            let mut pointers: Vec<(String, String, String)> = Vec::new();
            for part in spec.split(',') {
                let mut fields = part.trim().splitn(3, ':');
                let name = fields.next().unwrap_or_default().trim().to_owned();
                fleetmeter_sdk::check_quantity_name("quantities", &name)?;
                let pointer = fields.next().ok_or_else(|| {
                    Error::new(format!(
                        "config `quantities`: `{part}` is not NAME:POINTER[:UNIT]"
                    ))
                })?;
                check_pointer("quantities", pointer.trim())?;
                if pointers.iter().any(|(n, _, _)| *n == name) {
                    bail!("config `quantities`: {name:?} is named twice");
                }
                let unit = fields.next().unwrap_or_default().trim().to_owned();
                pointers.push((name, pointer.trim().to_owned(), unit));
            }
            if pointers.len() > fleetmeter_sdk::MAX_QUANTITIES {
                bail!(
                    "config `quantities`: {} numbers; at most {} per sample",
                    pointers.len(),
                    fleetmeter_sdk::MAX_QUANTITIES
                );
            }
            Ok(pointers)
        }
        (None, None) => bail!(
            "config `pointer` is required: where the number is, e.g. /sensors/0/t (or \
             `quantities` for several)"
        ),
    }
}

impl MultiSensor for HttpJson {
    fn new(config: &Config) -> Result<Self> {
        let mut known = vec!["pointer", "quantities", "header"];
        known.extend(http::PAGE_KEYS);
        known.extend(fleetmeter_sdk::calibration::KEYS);
        config.allow_only(&known)?;
        let page = http::Page::from_config(config, "http://10.0.0.7:8080/status", 256)?;
        let pointers = parse_pointers(config)?;
        let headers = match config.get("header") {
            Some(line) => {
                let (name, value) =
                    http::parse_header(line).map_err(|e| Error::new(format!("config {e}")))?;
                vec![(name, expand_env(&value)?)]
            }
            None => Vec::new(),
        };
        Ok(Self {
            page,
            pointers,
            headers,
            calibration: Calibration::from_config(config)?,
        })
    }

    fn sample(&mut self) -> Result<Vec<Quantity>> {
        let page = http::get(&self.page.url, &self.headers, self.page.max_body)?;
        if !(200..300).contains(&page.status) {
            bail!(
                "{}: HTTP {}{}",
                self.page.url,
                page.status,
                if (300..400).contains(&page.status) {
                    " (a redirect: point `url` at its target; redirects are not followed)"
                } else {
                    ""
                }
            );
        }
        let document: serde_json::Value = serde_json::from_slice(&page.body)
            .map_err(|e| Error::new(format!("{}: not JSON: {e}", self.page.url)))?;
        self.pointers
            .iter()
            .map(|(name, pointer, unit)| {
                let raw = pick(&document, pointer)
                    .map_err(|e| Error::new(format!("{}: {e}", self.page.url)))?;
                Ok(Quantity::new(
                    name.as_str(),
                    self.calibration.apply(raw)?,
                    unit.as_str(),
                ))
            })
            .collect()
    }
}

/// The number at `pointer` in the JSON `document`.
fn pick(document: &serde_json::Value, pointer: &str) -> Result<f64> {
    let value = document
        .pointer(pointer)
        .ok_or_else(|| Error::new(format!("nothing at `{pointer}`")))?;
    match value {
        serde_json::Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| Error::new(format!("`{n}` at `{pointer}` is not a number we can read"))),
        serde_json::Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| Error::new(format!("the string {s:?} at `{pointer}` is not a number"))),
        other => {
            let shown: String = other.to_string().chars().take(80).collect();
            Err(Error::new(format!(
                "{shown} at `{pointer}` is not a number"
            )))
        }
    }
}

/// `$NAME` (letters, digits, `_`) replaced by the environment variable NAME; an unset one is
/// an error naming it.
fn expand_env(value: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let name: String = rest[at + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            out.push('$');
            rest = &rest[at + 1..];
            continue;
        }
        let found = std::env::var(&name).map_err(|_| {
            Error::new(format!("config `header` uses ${name}, which is not set: grant it in [plugins.grants.env] (or `--env {name}=...`)"))
        })?;
        out.push_str(&found);
        rest = &rest[at + 1 + name.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

export_multi_sensor!(HttpJson);

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(body: &[u8], pointer: &str) -> Result<f64> {
        let document: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| Error::new(format!("not JSON: {e}")))?;
        super::pick(&document, pointer)
    }

    #[test]
    fn several_numbers_of_one_page_are_named_quantities() {
        let config = Config::new([("quantities", "temperature:/t:Cel, humidity:/rh:%,n:/n")]);
        assert_eq!(
            parse_pointers(&config).unwrap(),
            [
                ("temperature".into(), "/t".into(), "Cel".into()),
                ("humidity".into(), "/rh".into(), "%".into()),
                ("n".into(), "/n".into(), String::new())
            ]
        );
        for (pairs, needle) in [
            (vec![("quantities", "t:/t,t:/u")], "named twice"),
            (vec![("quantities", "t")], "NAME:POINTER"),
            (vec![("quantities", "a b:/t")], "not a quantity name"),
            (vec![("quantities", "t:x")], "must start with"),
            (vec![("quantities", "t:/t"), ("pointer", "/t")], "not both"),
        ] {
            let err = parse_pointers(&Config::new(pairs)).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn picks_numbers_and_says_why_not() {
        let body = br#"{"sensors":[{"t":21.5},{"t":"22.25"}],"ok":true}"#;
        assert_eq!(pick(body, "/sensors/0/t").unwrap(), 21.5);
        assert_eq!(pick(body, "/sensors/1/t").unwrap(), 22.25);
        assert!(
            pick(body, "/sensors/2/t")
                .unwrap_err()
                .message()
                .contains("nothing at")
        );
        assert!(
            pick(body, "/ok")
                .unwrap_err()
                .message()
                .contains("not a number")
        );
        assert!(
            pick(b"<html>", "/x")
                .unwrap_err()
                .message()
                .contains("not JSON")
        );
        assert_eq!(pick(b"7", "").unwrap(), 7.0);
    }

    #[test]
    fn config_is_checked() {
        let ok = HttpJson::new(&Config::new([
            ("url", "http://h:1/s"),
            ("pointer", "/a"),
            ("scale", "2"),
        ]))
        .unwrap();
        assert_eq!(ok.calibration.scale, 2.0);
        for (pairs, needle) in [
            (vec![("pointer", "/a")], "url"),
            (vec![("url", "ftp://h/"), ("pointer", "/a")], "url"),
            (
                vec![("url", "http://h/"), ("pointer", "a")],
                "must start with",
            ),
            (
                vec![("url", "http://h/"), ("pointer", "/a"), ("header", "nope")],
                "header",
            ),
            (
                vec![
                    ("url", "http://h/"),
                    ("pointer", "/a"),
                    ("header", "X: $FM_UNSET_FOR_TEST"),
                ],
                "FM_UNSET_FOR_TEST",
            ),
            (
                vec![
                    ("url", "http://h/"),
                    ("pointer", "/a"),
                    ("max_body_kib", "0"),
                ],
                "max_body_kib",
            ),
            (
                vec![("url", "http://h/"), ("pointer", "/a"), ("pointr", "/a")],
                "pointr",
            ),
        ] {
            let err = HttpJson::new(&Config::new(pairs))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn expands_env() {
        assert_eq!(expand_env("Bearer abc").unwrap(), "Bearer abc");
        assert_eq!(expand_env("a$ b").unwrap(), "a$ b");
        let path = std::env::var("PATH").unwrap();
        assert_eq!(expand_env("x $PATH y").unwrap(), format!("x {path} y"));
    }
}
