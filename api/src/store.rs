//! Rounds and legacy values in Redis.
//!
//! Keys, under a prefix (default `fleetmeter`):
//! - `{p}:round:{n}` — the round's JSON;
//! - `{p}:rounds` — sorted set of stored round numbers (score = round);
//! - `{p}:values` — sorted set of `/nuevo` values (member = JSON with the server time);
//! - `{p}:values:seq` — counter whose value is each `/nuevo` member's score: unique and
//!   increasing, so values stored within the same millisecond keep their order;
//! - `{p}:device:{id}` — sorted set of the device's readings from version 2 rounds on (member
//!   = `{"round","value","ts"}` JSON, plus `"quantities"` from a version 4 round of several;
//!   score = round), the latest [`READINGS_KEPT`] kept;
//! - `{p}:devices` — hash of device id → its latest reading (the same JSON).
//!
//! Storing a round (with its devices' readings) is one Lua script, so it is atomic: of any
//! number of concurrent writers of the same round, exactly one stores it and the others see
//! what was stored.

use std::collections::BTreeMap;

use std::time::Duration;

use redis::{AsyncCommands, Script, aio::ConnectionManager, aio::ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use crate::round::{LegacyValue, Quantity, Round};

/// The rule for a fleet's name in `/fleets/{name}/`: 1 to 64 ASCII letters, digits, `-` or
/// `_` (it names Redis keys and appears in URLs).
pub fn valid_fleet_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Readings kept per device (older ones are dropped as new rounds arrive): a day of rounds
/// every 10 s.
pub const READINGS_KEPT: usize = 8640;

/// One device's reading in one stored round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredReading {
    pub round: u64,
    /// Its value of the round's primary quantity (absent when its sample did not carry it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The round's commit time, ms since the Unix epoch.
    pub ts: u64,
    /// Every quantity of its sample, in a round of several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantities: Option<Vec<Quantity>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis is unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored data under {key} is not valid: {reason}")]
    Corrupt { key: String, reason: String },
}

/// What happened to a round that was offered for storage.
#[derive(Debug, PartialEq)]
pub enum PutOutcome {
    /// It is new and now stored.
    Stored,
    /// The same round, with the same content, was already stored: nothing changed.
    Duplicate,
    /// A different result is stored under this round number: nothing changed.
    Conflict(Box<Round>),
}

/// Cheap to clone: the connection manager multiplexes one connection and reconnects by
/// itself when Redis comes back.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    prefix: String,
    put_round: Script,
    list_rounds: Script,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

// KEYS: the round's key, the round set, the devices hash. ARGV: the round's JSON, its number,
// the per-device key prefix, the readings kept per device, then (device id, reading JSON)
// pairs. (Per-device keys are built here, not declared: one Redis, not a cluster.) The
// devices hash keeps a device's highest round: a late older round does not replace it.
const PUT_ROUND: &str = r"
local existing = redis.call('GET', KEYS[1])
if existing then
  return existing
end
redis.call('SET', KEYS[1], ARGV[1])
local n = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], n, ARGV[2])
local keep = tonumber(ARGV[4])
for i = 5, #ARGV, 2 do
  local id, reading = ARGV[i], ARGV[i + 1]
  local key = ARGV[3] .. id
  redis.call('ZADD', key, n, reading)
  redis.call('ZREMRANGEBYRANK', key, 0, -keep - 1)
  local latest = redis.call('HGET', KEYS[3], id)
  if not latest or cjson.decode(latest).round < n then
    redis.call('HSET', KEYS[3], id, reading)
  end
end
return false
";

// ARGV: the limit, the round key prefix, and the highest round number to list (`+inf` for
// all).
const LIST_ROUNDS: &str = r"
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[3], '-inf', 'LIMIT', 0, tonumber(ARGV[1]))
if #ids == 0 then
  return {}
end
local keys = {}
for i, id in ipairs(ids) do
  keys[i] = ARGV[2] .. id
end
return redis.call('MGET', unpack(keys))
";

impl Store {
    /// The same Redis, with fleet `name`'s own keys (`{prefix}:fleet:{name}:…`): one API
    /// serves several fleets, each under `/fleets/{name}/`. `name` is checked by the caller
    /// ([`valid_fleet_name`]).
    pub fn for_fleet(&self, name: &str) -> Self {
        Self {
            prefix: format!("{}:fleet:{name}", self.prefix),
            ..self.clone()
        }
    }

    /// Does not connect: the first request does, so the API starts (and answers 503) while
    /// Redis is down.
    pub fn new(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client.get_connection_manager_lazy(config)?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            put_round: Script::new(PUT_ROUND),
            list_rounds: Script::new(LIST_ROUNDS),
        })
    }

    fn round_key(&self, n: u64) -> String {
        format!("{}:round:{n}", self.prefix)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Stores `round` unless that round number is already stored, and with it each device's
    /// reading (version 2 rounds).
    pub async fn put_round(&self, round: &Round) -> Result<PutOutcome, StoreError> {
        let key = self.round_key(round.round);
        let json = serde_json::to_string(round).expect("a Round always serializes");
        let mut conn = self.conn.clone();
        let mut invocation = self.put_round.key(&key);
        invocation
            .key(format!("{}:rounds", self.prefix))
            .key(format!("{}:devices", self.prefix))
            .arg(&json)
            .arg(round.round)
            .arg(format!("{}:device:", self.prefix))
            .arg(READINGS_KEPT);
        let several = round.quantities.as_ref().is_some_and(|q| q.len() > 1);
        let primary: std::collections::HashMap<&str, f64> = round.readings().collect();
        for (i, device) in round.devices.iter().enumerate() {
            let value = primary.get(device.as_str()).copied();
            let quantities = several.then(|| round.device_quantities(i, ""));
            if value.is_none() && quantities.as_ref().is_none_or(Vec::is_empty) {
                continue;
            }
            let reading = StoredReading {
                round: round.round,
                value,
                ts: round.ts,
                quantities,
            };
            invocation
                .arg(device)
                .arg(serde_json::to_string(&reading).expect("a reading always serializes"));
        }
        let existing: Option<String> = invocation.invoke_async(&mut conn).await?;
        let Some(existing) = existing else {
            return Ok(PutOutcome::Stored);
        };
        let existing = parse_round(&key, &existing)?;
        Ok(if existing == *round {
            PutOutcome::Duplicate
        } else {
            PutOutcome::Conflict(Box::new(existing))
        })
    }

    pub async fn round(&self, n: u64) -> Result<Option<Round>, StoreError> {
        let key = self.round_key(n);
        let mut conn = self.conn.clone();
        let json: Option<String> = conn.get(&key).await?;
        json.map(|j| parse_round(&key, &j)).transpose()
    }

    /// The `limit` highest-numbered rounds, newest first.
    pub async fn rounds(&self, limit: usize) -> Result<Vec<Round>, StoreError> {
        self.rounds_before(limit, None).await
    }

    /// The `limit` latest stored rounds numbered below `before` (all when `None`), newest
    /// first.
    pub async fn rounds_before(
        &self,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<Round>, StoreError> {
        let highest = match before {
            None => "+inf".to_owned(),
            Some(0) => return Ok(Vec::new()),
            Some(n) => (n - 1).to_string(),
        };
        let mut conn = self.conn.clone();
        let jsons: Vec<Option<String>> = self
            .list_rounds
            .key(format!("{}:rounds", self.prefix))
            .arg(limit)
            .arg(format!("{}:round:", self.prefix))
            .arg(highest)
            .invoke_async(&mut conn)
            .await?;
        jsons
            .into_iter()
            .flatten()
            .map(|j| parse_round("a listed round", &j))
            .collect()
    }

    /// Every device with a stored reading, and its latest one.
    pub async fn devices(&self) -> Result<BTreeMap<String, StoredReading>, StoreError> {
        let key = format!("{}:devices", self.prefix);
        let mut conn = self.conn.clone();
        let all: BTreeMap<String, String> = conn.hgetall(&key).await?;
        all.into_iter()
            .map(|(id, json)| Ok((id, parse_json(&key, &json)?)))
            .collect()
    }

    /// Device `id`'s `limit` latest readings, newest first (empty for an unknown device).
    pub async fn readings(&self, id: &str, limit: usize) -> Result<Vec<StoredReading>, StoreError> {
        let key = format!("{}:device:{id}", self.prefix);
        let stop = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        let mut conn = self.conn.clone();
        let jsons: Vec<String> = conn.zrevrange(&key, 0, stop).await?;
        jsons.iter().map(|j| parse_json(&key, j)).collect()
    }

    /// Stores a `/nuevo` value with the server's time.
    pub async fn add_value(&self, value: f64, ts: u64) -> Result<LegacyValue, StoreError> {
        let mut conn = self.conn.clone();
        let seq: u64 = conn.incr(format!("{}:values:seq", self.prefix), 1).await?;
        let stored = LegacyValue { value, ts, seq };
        let json = serde_json::to_string(&stored).expect("a LegacyValue always serializes");
        let _: () = conn
            .zadd(format!("{}:values", self.prefix), json, seq)
            .await?;
        Ok(stored)
    }

    /// The `limit` latest `/nuevo` values, newest first.
    pub async fn values(&self, limit: usize) -> Result<Vec<LegacyValue>, StoreError> {
        let mut conn = self.conn.clone();
        let stop = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        let jsons: Vec<String> = conn
            .zrevrange(format!("{}:values", self.prefix), 0, stop)
            .await?;
        jsons
            .iter()
            .map(|j| {
                serde_json::from_str(j).map_err(|e| StoreError::Corrupt {
                    key: format!("{}:values", self.prefix),
                    reason: e.to_string(),
                })
            })
            .collect()
    }
}

fn parse_round(key: &str, json: &str) -> Result<Round, StoreError> {
    parse_json(key, json)
}

fn parse_json<T: serde::de::DeserializeOwned>(key: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}
