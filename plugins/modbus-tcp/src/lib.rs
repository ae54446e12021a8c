//! Sensor: one register (or register pair) of a Modbus/TCP instrument — a power meter, a PLC,
//! a gateway to RS-485 devices — or several consecutive values read in one request, each a
//! named quantity with its unit (a power meter's voltage, current and power).
//!
//! The sandbox has no network unless the agent grants the instrument's address:
//! `[plugins.grants] connect = ["10.0.0.5:502"]` (or `fleetmeter plugin run --connect
//! 10.0.0.5:502`).
//!
//! Config:
//! - `address`: `host:port` of the instrument (required; port 502 is Modbus/TCP's own);
//! - `unit`: the unit identifier, 0 to 255 (default 1; a gateway routes by it);
//! - `register`: the protocol address of the first register, 0 to 65535, 0-based as on the
//!   wire. Manuals often write "40101" for holding register 101 (1-based): that is
//!   `function = "holding"`, `register = 100`; "30001" is `function = "input"`,
//!   `register = 0`;
//! - `function`: `holding` (function code 3, default) or `input` (code 4);
//! - `type`: `u16` (default), `i16`, `u32`, `i32` or `f32` (the 32-bit types read two
//!   registers);
//! - `word_order`: `big` (default: the first register holds the high word) or `little`;
//! - `scale` (1) and `offset` (0): the value is `raw * scale + offset`;
//! - `quantities`: several values in one request, `NAME[:UNIT]` separated by commas
//!   (`voltage:V, current:A, power:W`): the first is read at `register`, each next one right
//!   after it (`type` sized: 1 or 2 registers each), up to 16 and 125 registers. Without
//!   it the sample is one value, named `modbus-tcp`, unitless; `scale` and `offset` apply to
//!   every value.
//!
//! The connection is kept across rounds; after any failure it is dropped and made again,
//! once, within the same call. A Modbus exception (e.g. code 2, illegal data address) is the
//! round's error, named.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use fleetmeter_sdk::prelude::*;

/// Every wait on the instrument; the agent's own time limit (`timeout_ms`) bounds the call.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Function {
    Holding,
    Input,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Type {
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl Type {
    fn registers(self) -> u16 {
        match self {
            Type::U16 | Type::I16 => 1,
            Type::U32 | Type::I32 | Type::F32 => 2,
        }
    }
}

/// What to read, and how to make numbers of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    unit: u8,
    register: u16,
    function: Function,
    kind: Type,
    little_endian_words: bool,
    /// Consecutive values to read (1 without `quantities`).
    values: u16,
}

/// Most registers one Modbus read may ask for (the protocol's limit for codes 3 and 4).
const MAX_REGISTERS: u32 = 125;
/// Most quantities one sample may carry (the agent's limit).
const MAX_QUANTITIES: usize = fleetmeter_sdk::MAX_QUANTITIES;

pub struct ModbusTcp {
    address: String,
    request: Request,
    /// (name, unit) of each value read.
    quantities: Vec<(String, String)>,
    calibration: Calibration,
    connection: Option<TcpStream>,
    transaction: u16,
}

/// `quantities`: `NAME[:UNIT]`, comma-separated; the plugin's own name when absent.
fn parse_quantities(config: &Config) -> Result<Vec<(String, String)>> {
    let Some(spec) = config.get("quantities") else {
        return Ok(vec![(env!("CARGO_PKG_NAME").to_owned(), String::new())]);
    };
    let quantities: Vec<(String, String)> = spec
        .split(',')
        .map(|part| {
            let (name, unit) = part.split_once(':').unwrap_or((part, ""));
            (name.trim().to_owned(), unit.trim().to_owned())
        })
        .collect();
    if quantities.len() > MAX_QUANTITIES {
        bail!(
            "config `quantities`: {} names; at most {MAX_QUANTITIES} per sample",
            quantities.len()
        );
    }
    for (i, (name, _)) in quantities.iter().enumerate() {
        fleetmeter_sdk::check_quantity_name("quantities", name)?;
        if quantities[..i].iter().any(|(n, _)| n == name) {
            bail!("config `quantities`: {name:?} is named twice");
        }
    }
    Ok(quantities)
}

impl MultiSensor for ModbusTcp {
    fn new(config: &Config) -> Result<Self> {
        let mut known = vec![
            "address",
            "unit",
            "register",
            "function",
            "type",
            "word_order",
            "quantities",
        ];
        known.extend(fleetmeter_sdk::calibration::KEYS);
        config.allow_only(&known)?;
        let address = config
            .get("address")
            .ok_or_else(|| {
                Error::new(
                    "config `address` is required: the instrument's host:port, e.g. 10.0.0.5:502",
                )
            })?
            .to_owned();
        if !address.contains(':') {
            bail!(
                "config `address`: `{address}` has no port (Modbus/TCP's is 502: `{address}:502`)"
            );
        }
        let quantities = parse_quantities(config)?;
        let request = Request::from_config(config, quantities.len() as u16)?;
        // No read yet: an instrument that is off while the agent starts costs rounds, not
        // the agent (`fleetmeter plugin run` shows a wrong address or register at once).
        let sensor = Self {
            address,
            request,
            quantities,
            calibration: Calibration::from_config(config)?,
            connection: None,
            transaction: 0,
        };
        let r = &sensor.request;
        log::info(format!(
            "reading {} {} from register {} as {} ({} word first) of unit {} at {}",
            r.values,
            match r.function {
                Function::Holding => "holding",
                Function::Input => "input",
            },
            r.register,
            format!("{:?}", r.kind).to_lowercase(),
            if r.little_endian_words { "low" } else { "high" },
            r.unit,
            sensor.address
        ));
        Ok(sensor)
    }

    fn sample(&mut self) -> Result<Vec<Quantity>> {
        let raw = match self.read_once() {
            Ok(raw) => raw,
            Err(Failure::Final(err)) => return Err(err),
            Err(Failure::Io(first)) => {
                self.connection = None;
                self.read_once().map_err(|again| {
                    self.connection = None;
                    Error::new(format!(
                        "{first}; reconnected, and again: {}",
                        again.error()
                    ))
                })?
            }
        };
        raw.into_iter()
            .zip(&self.quantities)
            .map(|(raw, (name, unit))| {
                Ok(Quantity::new(
                    name.as_str(),
                    self.calibration.apply(raw)?,
                    unit.as_str(),
                ))
            })
            .collect()
    }
}

enum Failure {
    /// The connection broke or answered nonsense: reconnect.
    Io(Error),
    /// The instrument answered with an exception, or the sandbox refused the connection:
    /// asking again would get the same answer.
    Final(Error),
}

impl Failure {
    fn error(self) -> Error {
        match self {
            Failure::Io(e) | Failure::Final(e) => e,
        }
    }
}

impl ModbusTcp {
    fn read_once(&mut self) -> Result<Vec<f64>, Failure> {
        let io = |what: &str, e: std::io::Error| {
            let error = Error::new(format!("{what} {}: {e}", self.address));
            // Refused by the sandbox (the agent adds which grant is missing): no retry.
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                Failure::Final(error)
            } else {
                Failure::Io(error)
            }
        };
        if self.connection.is_none() {
            let stream = TcpStream::connect(&self.address).map_err(|e| {
                let host = self.address.rsplit_once(':').map_or("", |(h, _)| h);
                let by_name = host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_err();
                if by_name && e.to_string().contains("lookup") {
                    // No lookups in the sandbox unless a `connect` grant names a host.
                    Failure::Final(Error::new(format!(
                        "cannot resolve {}: {e} (the sandbox resolves names only when a \
                         `connect` grant names a host: grant \"{}\", or set `address` to the \
                         instrument's IP address)",
                        self.address, self.address
                    )))
                } else {
                    io("cannot connect to", e)
                }
            })?;
            stream
                .set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|e| io("cannot set up", e))?;
            stream
                .set_write_timeout(Some(IO_TIMEOUT))
                .map_err(|e| io("cannot set up", e))?;
            let _ = stream.set_nodelay(true);
            self.connection = Some(stream);
        }
        self.transaction = self.transaction.wrapping_add(1);
        let frame = self.request.frame(self.transaction);
        let stream = self.connection.as_mut().expect("connected above");
        stream
            .write_all(&frame)
            .map_err(|e| io("cannot send to", e))?;
        let mut header = [0u8; 7];
        stream
            .read_exact(&mut header)
            .map_err(|e| io("no answer from", e))?;
        let length = u16::from_be_bytes([header[4], header[5]]) as usize;
        if !(2..=254).contains(&length) {
            return Err(Failure::Io(Error::new(format!(
                "{} answered a frame of length {length}: not Modbus/TCP?",
                self.address
            ))));
        }
        let mut pdu = vec![0u8; length - 1];
        stream
            .read_exact(&mut pdu)
            .map_err(|e| io("a short answer from", e))?;
        self.request.parse(self.transaction, &header, &pdu)
    }
}

impl Request {
    fn from_config(config: &Config, values: u16) -> Result<Self> {
        let unit: u8 = config.parse_or("unit", 1)?;
        let register: u16 = config
            .parse("register")?
            .ok_or_else(|| Error::new("config `register` is required: the 0-based protocol address (holding register 40101 is `register = 100`)"))?;
        let function = match config.get("function").unwrap_or("holding") {
            "holding" => Function::Holding,
            "input" => Function::Input,
            other => bail!("config `function`: `{other}` is not `holding` or `input`"),
        };
        let kind = match config.get("type").unwrap_or("u16") {
            "u16" => Type::U16,
            "i16" => Type::I16,
            "u32" => Type::U32,
            "i32" => Type::I32,
            "f32" => Type::F32,
            other => bail!("config `type`: `{other}` is not u16, i16, u32, i32 or f32"),
        };
        let little_endian_words = match config.get("word_order").unwrap_or("big") {
            "big" => false,
            "little" => true,
            other => bail!("config `word_order`: `{other}` is not `big` or `little`"),
        };
        let registers = u32::from(kind.registers()) * u32::from(values);
        if registers > MAX_REGISTERS {
            bail!(
                "config `quantities`: {values} values of {} register(s) make {registers} \
                 registers; one Modbus read asks for at most {MAX_REGISTERS}",
                kind.registers()
            );
        }
        if u32::from(register) + registers > 65536 {
            bail!("config `register`: {register} plus {registers} register(s) passes 65535");
        }
        Ok(Self {
            unit,
            register,
            function,
            kind,
            little_endian_words,
            values,
        })
    }

    /// Registers one read asks for.
    fn count(&self) -> u16 {
        self.kind.registers() * self.values
    }

    fn code(&self) -> u8 {
        match self.function {
            Function::Holding => 3,
            Function::Input => 4,
        }
    }

    /// The request ADU: MBAP header (transaction, protocol 0, length, unit), then function,
    /// first register, count.
    pub fn frame(&self, transaction: u16) -> [u8; 12] {
        let mut f = [0u8; 12];
        f[0..2].copy_from_slice(&transaction.to_be_bytes());
        f[4..6].copy_from_slice(&6u16.to_be_bytes());
        f[6] = self.unit;
        f[7] = self.code();
        f[8..10].copy_from_slice(&self.register.to_be_bytes());
        f[10..12].copy_from_slice(&self.count().to_be_bytes());
        f
    }

    /// The values in an answer (`header`: the 7-byte MBAP header; `pdu`: what follows).
    fn parse(&self, transaction: u16, header: &[u8; 7], pdu: &[u8]) -> Result<Vec<f64>, Failure> {
        let bad = |why: String| Failure::Io(Error::new(why));
        if u16::from_be_bytes([header[0], header[1]]) != transaction || header[2..4] != [0, 0] {
            return Err(bad(format!(
                "an answer to another request (transaction {}, expected {transaction})",
                u16::from_be_bytes([header[0], header[1]])
            )));
        }
        match pdu.first() {
            Some(&code) if code == self.code() | 0x80 => {
                let exception = pdu.get(1).copied().unwrap_or(0);
                return Err(Failure::Final(Error::new(format!(
                    "Modbus exception {exception} ({}) reading register {} of unit {}",
                    exception_name(exception),
                    self.register,
                    self.unit
                ))));
            }
            Some(&code) if code == self.code() => {}
            other => {
                return Err(bad(format!(
                    "an answer with function {other:?}, expected {}",
                    self.code()
                )));
            }
        }
        let count = self.count() as usize * 2;
        if pdu.get(1).copied().map(usize::from) != Some(count) || pdu.len() != 2 + count {
            return Err(bad(format!(
                "an answer of {} data bytes, expected {count}",
                pdu.len().saturating_sub(2)
            )));
        }
        let size = self.kind.registers() as usize * 2;
        Ok(pdu[2..]
            .chunks_exact(size)
            .map(|v| self.decode(v))
            .collect())
    }

    fn decode(&self, data: &[u8]) -> f64 {
        let word = |i: usize| [data[2 * i], data[2 * i + 1]];
        match self.kind {
            Type::U16 => u16::from_be_bytes(word(0)) as f64,
            Type::I16 => i16::from_be_bytes(word(0)) as f64,
            Type::U32 | Type::I32 | Type::F32 => {
                let (high, low) = if self.little_endian_words {
                    (word(1), word(0))
                } else {
                    (word(0), word(1))
                };
                let bytes = [high[0], high[1], low[0], low[1]];
                match self.kind {
                    Type::U32 => u32::from_be_bytes(bytes) as f64,
                    Type::I32 => i32::from_be_bytes(bytes) as f64,
                    // The f32's shortest decimal form, not its binary expansion: 49.95, not
                    // 49.95000076293945.
                    _ => {
                        let f = f32::from_be_bytes(bytes);
                        f.to_string().parse().unwrap_or(f as f64)
                    }
                }
            }
        }
    }
}

fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        10 => "gateway path unavailable",
        11 => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

export_multi_sensor!(ModbusTcp);

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&str, &str)]) -> Request {
        Request::from_config(&Config::new(pairs.iter().copied()), 1).unwrap()
    }

    #[test]
    fn frames_a_read() {
        let r = request(&[
            ("register", "100"),
            ("unit", "7"),
            ("function", "input"),
            ("type", "f32"),
        ]);
        assert_eq!(r.frame(0x0102), [1, 2, 0, 0, 0, 6, 7, 4, 0, 100, 0, 2]);
    }

    #[test]
    fn decodes_every_type_and_word_order() {
        let header = |t: u16| {
            let b = t.to_be_bytes();
            [b[0], b[1], 0, 0, 0, 0, 1]
        };
        let f = 230.5f32.to_be_bytes();
        for (pairs, data, expected) in [
            (vec![("type", "u16")], vec![0xff, 0xfe], 65534.0),
            (vec![("type", "i16")], vec![0xff, 0xfe], -2.0),
            (vec![("type", "u32")], vec![0, 1, 0, 2], 65538.0),
            (vec![("type", "i32")], vec![0xff, 0xff, 0xff, 0xfe], -2.0),
            (
                vec![("type", "i32"), ("word_order", "little")],
                vec![0xff, 0xfe, 0xff, 0xff],
                -2.0,
            ),
            (vec![("type", "f32")], f.to_vec(), 230.5),
            (
                vec![("type", "f32"), ("word_order", "little")],
                vec![f[2], f[3], f[0], f[1]],
                230.5,
            ),
            (
                vec![("type", "f32")],
                49.95f32.to_be_bytes().to_vec(),
                49.95,
            ),
        ] {
            let mut pairs = pairs;
            pairs.push(("register", "0"));
            let r = request(&pairs);
            let mut pdu = vec![3, data.len() as u8];
            pdu.extend(&data);
            let value = r.parse(9, &header(9), &pdu).ok().unwrap();
            assert_eq!(value, [expected], "{pairs:?}");
        }
    }

    #[test]
    fn an_exception_is_named_and_a_stray_answer_refused() {
        let r = request(&[("register", "9")]);
        let header = [0, 5, 0, 0, 0, 3, 1];
        match r.parse(5, &header, &[0x83, 2]) {
            Err(Failure::Final(e)) => assert!(
                e.message().contains("exception 2 (illegal data address)"),
                "{e}"
            ),
            _ => panic!("expected an exception"),
        }
        assert!(matches!(
            r.parse(6, &header, &[3, 2, 0, 1]),
            Err(Failure::Io(_))
        ));
        assert!(matches!(
            r.parse(5, &header, &[3, 4, 0, 1, 0, 2]),
            Err(Failure::Io(_))
        ));
    }

    #[test]
    fn config_is_checked() {
        for (pairs, needle) in [
            (vec![("register", "1"), ("function", "coil")], "function"),
            (vec![("register", "1"), ("type", "u64")], "type"),
            (vec![("register", "65535"), ("type", "u32")], "passes 65535"),
            (vec![], "register"),
            (
                vec![("register", "1"), ("word_order", "middle")],
                "word_order",
            ),
        ] {
            let err = Request::from_config(&Config::new(pairs), 1)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn several_quantities_are_one_read_of_consecutive_values() {
        let config = Config::new([("quantities", "voltage:V, current:A,power:W")]);
        let quantities = parse_quantities(&config).unwrap();
        assert_eq!(
            quantities,
            [
                ("voltage".to_owned(), "V".to_owned()),
                ("current".to_owned(), "A".to_owned()),
                ("power".to_owned(), "W".to_owned())
            ]
        );
        let r =
            Request::from_config(&Config::new([("register", "10"), ("type", "f32")]), 3).unwrap();
        assert_eq!(r.frame(1), [0, 1, 0, 0, 0, 6, 1, 3, 0, 10, 0, 6]);
        let mut pdu = vec![3, 12];
        for v in [230.5f32, 1.25, 288.125] {
            pdu.extend(v.to_be_bytes());
        }
        let values = r.parse(1, &[0, 1, 0, 0, 0, 15, 1], &pdu).ok().unwrap();
        assert_eq!(values, [230.5, 1.25, 288.125]);
        // A short answer is refused, not read as fewer values.
        assert!(matches!(
            r.parse(1, &[0, 1, 0, 0, 0, 11, 1], &pdu[..10]),
            Err(Failure::Io(_))
        ));
    }

    #[test]
    fn quantities_are_checked() {
        for (spec, needle) in [
            ("a b:V", "not a quantity name"),
            ("v:V,v:A", "named twice"),
            (",", "not a quantity name"),
        ] {
            let err = parse_quantities(&Config::new([("quantities", spec)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("q{i}")).collect();
        let err = parse_quantities(&Config::new([("quantities", many.join(",").as_str())]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 16"), "{err}");
        let err = Request::from_config(&Config::new([("register", "0"), ("type", "f32")]), 63)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 125"), "{err}");
        // No `quantities`: one value, named after the plugin.
        assert_eq!(
            parse_quantities(&Config::default()).unwrap(),
            [("modbus-tcp".to_owned(), String::new())]
        );
    }
}
