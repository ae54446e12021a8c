//! The global counter at `{root}/counter`, in kazoo's `Counter` encoding (the ASCII decimal
//! integer), so a kazoo `Counter(client, path).value` reads it.
//!
//! The leader adds each round's readings in its commit transaction ([`increment_op`]) instead of
//! every device incrementing it: one conditional write per round, no compare-and-set storm.

use zookeeper_client::Error;

use super::{
    CoordError, FleetClient, NodeAcl,
    paths::{COUNTER, COUNTER_BASE},
    txn::{Label, Op},
};

/// The counter's value and the node version it was read at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterValue {
    pub value: i64,
    pub version: i32,
}

pub fn encode(value: i64) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// kazoo writes `repr(int)`; an empty node (created by hand) counts as 0. Strict: ASCII
/// digits with an optional `-`, within 64 bits; nothing else (no `+`, no spaces inside, no
/// exponent), so a value written by hand cannot wrap or be read as something it is not.
pub fn decode(bytes: &[u8]) -> Result<i64, CoordError> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    let parsed = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    };
    parsed.ok_or_else(|| CoordError::BadData {
        path: COUNTER.into(),
        found: crate::text::one_line_bounded(text, 64),
        expected: "a decimal integer within 64 bits (kazoo Counter encoding)",
    })
}

/// `value + delta`, refused when it would overflow (a counter written by hand near the top).
pub fn checked_add(value: i64, delta: i64) -> Result<i64, CoordError> {
    value.checked_add(delta).ok_or_else(|| CoordError::BadData {
        path: COUNTER.into(),
        found: value.to_string(),
        expected: "a counter that can grow by a round's readings without overflowing",
    })
}

/// Reads the counter, creating it at 0 if absent.
pub async fn read(client: &FleetClient) -> Result<CounterValue, CoordError> {
    let (data, version) = read_node(client).await?;
    Ok(CounterValue {
        value: decode(&data)?,
        version,
    })
}

/// The counter's value (`None` when the node holds something that is not a counter) and its
/// node version, creating it at 0 if absent. For the leader, which refuses a bad value
/// instead of stopping on it.
pub async fn read_lenient(client: &FleetClient) -> Result<(Option<i64>, i32), CoordError> {
    let (data, version) = read_node(client).await?;
    Ok((decode(&data).ok(), version))
}

/// The counter node's data and version, creating it at 0 if absent.
async fn read_node(client: &FleetClient) -> Result<(Vec<u8>, i32), CoordError> {
    loop {
        match client.get_data(COUNTER).await {
            Ok((data, stat)) => return Ok((data, stat.version)),
            Err(Error::NoNode) => match client
                .create(COUNTER, &encode(0), &client.persistent())
                .await
            {
                Ok(_) | Err(Error::NodeExists) => continue,
                Err(e) => return Err(CoordError::zk("create", COUNTER, e)),
            },
            Err(e) => return Err(CoordError::zk("read", COUNTER, e)),
        }
    }
}

/// The counter's value, without creating it: `None` when absent.
pub async fn peek(client: &FleetClient) -> Result<Option<i64>, CoordError> {
    match client.get_data(COUNTER).await {
        Ok((data, _)) => decode(&data).map(Some),
        Err(Error::NoNode) => Ok(None),
        Err(e) => Err(CoordError::zk("read", COUNTER, e)),
    }
}

/// The counter's creation at `value` (a fleet's state starting).
pub fn create(acl: &NodeAcl, value: i64) -> Op {
    Op::create(Label::Counter, COUNTER, &encode(value), acl)
}

/// Adding `delta` to the counter: the write only applies if nobody changed the counter since
/// `current` was read (the transaction fails on [`Label::Counter`] with BadVersion
/// otherwise).
pub fn increment_op(current: CounterValue, delta: i64) -> Result<Op, CoordError> {
    let next = encode(checked_add(current.value, delta)?);
    Ok(Op::set(
        Label::Counter,
        COUNTER,
        &next,
        Some(current.version),
    ))
}

/// Adds `delta` on its own (compare-and-set, retried on a concurrent change); returns the
/// new value.
pub async fn increment(client: &FleetClient, delta: i64) -> Result<i64, CoordError> {
    loop {
        let current = read(client).await?;
        let next = checked_add(current.value, delta)?;
        match client
            .set_data(COUNTER, &encode(next), Some(current.version))
            .await
        {
            Ok(_) => return Ok(next),
            Err(Error::BadVersion) => continue,
            Err(e) => return Err(CoordError::zk("set", COUNTER, e)),
        }
    }
}

/// A counter started without its base: the fleet's state was started while the API (which
/// knows where the counter stood) could not be asked. `{root}/counter-base` holds the first
/// round of that state; the leader adds the counter of the API's latest round below it once
/// the API answers, and deletes the node in the same transaction. Until then committed
/// rounds carry no `counter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingBase {
    /// The first round counted without the base.
    pub since: u64,
    pub version: i32,
}

/// `{root}/counter-base`, if the counter's base is pending. A node that does not hold a
/// round number (written by hand) counts as pending since the highest round: the base is
/// then the API's latest round.
pub async fn pending_base(client: &FleetClient) -> Result<Option<PendingBase>, CoordError> {
    match client.get_data(COUNTER_BASE).await {
        Ok((data, stat)) => Ok(Some(PendingBase {
            since: std::str::from_utf8(&data)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(u64::MAX),
            version: stat.version,
        })),
        Err(Error::NoNode) => Ok(None),
        Err(e) => Err(CoordError::zk("read", COUNTER_BASE, e)),
    }
}

/// Marks the counter's base pending from round `since` (in the start of a fleet's state).
pub fn pend_base(acl: &NodeAcl, since: u64) -> Op {
    Op::create(
        Label::CounterBase,
        COUNTER_BASE,
        since.to_string().as_bytes(),
        acl,
    )
}

/// The base is added: the marker goes (only as read).
pub fn settle_base(pending: PendingBase) -> Op {
    Op::delete(Label::CounterBase, COUNTER_BASE, Some(pending.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kazoo_encoding() {
        assert_eq!(encode(25), b"25");
        assert_eq!(decode(b"25").unwrap(), 25);
        assert_eq!(decode(b"-3").unwrap(), -3);
        assert_eq!(decode(b"").unwrap(), 0);
        assert!(decode(b"2.5").is_err());
        for bad in ["+5", "1e3", "5 5", "9223372036854775808", "0x10", "-", "٣"] {
            assert!(decode(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(decode(b"9223372036854775807\n").unwrap(), i64::MAX);
        assert!(checked_add(i64::MAX, 1).is_err());
        assert_eq!(checked_add(41, 1).unwrap(), 42);
    }
}
