//! The leader's collection of a round's readings: it waits for every live device until the
//! collection deadline, then goes on without the stragglers (counted).
//!
//! Where readings come from is a [`ReadingSource`]: ZooKeeper in the agent ([`ZkReadings`],
//! driven by the leader's [`Roster`] watch: it reads only the nodes that changed, when they
//! change), a scripted source in the tests below, which run under paused time.
//! Every reading is hostile input: a node that does not parse, or holds another round's
//! reading, counts as no reading.

use std::collections::BTreeMap;

use tokio::time::Instant;

use crate::{
    coord::roster::Roster,
    plugin::Reading,
    wire::{Advert, DeviceReading, Quantity, check_sample},
};

/// Where the leader reads the fleet from.
pub(crate) trait ReadingSource {
    /// The live devices now; `None` when they cannot be listed (the last list stands).
    async fn members(&mut self) -> Option<Vec<String>>;
    /// The raw node data of each of `devices`, in order (`None`: absent, unreadable, or
    /// unchanged since the source last returned it).
    async fn readings(&mut self, devices: &[&String]) -> Option<Vec<Option<Vec<u8>>>>;
    /// Waits until a reading may have arrived, or until `until`.
    async fn wait(&mut self, until: Instant);
}

/// What a collection found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Collected {
    /// The round's readings, by device id.
    pub readings: Vec<Reading>,
    /// Live devices at the end of the collection.
    pub live: usize,
    /// Live devices without a reading at the deadline.
    pub missed: usize,
    /// What the devices whose nodes were read advertise.
    pub adverts: BTreeMap<String, Advert>,
}

/// Round `round`'s readings, waiting for every live device until `until`. `members` is the
/// last member list known, used until the source answers. A node without quantities (an
/// agent before 0.2.0) is one quantity, `legacy` (name, unit).
pub(crate) async fn collect(
    source: &mut impl ReadingSource,
    mut members: Vec<String>,
    round: u64,
    until: Instant,
    legacy: &(String, String),
) -> Collected {
    let mut readings = BTreeMap::new();
    let mut adverts = BTreeMap::new();
    loop {
        if let Some(now) = source.members().await {
            members = now;
        }
        let missing: Vec<&String> = members
            .iter()
            .filter(|d| !readings.contains_key(*d))
            .collect();
        if !missing.is_empty()
            && let Some(data) = source.readings(&missing).await
        {
            for (device, data) in missing.iter().zip(data) {
                let Some(data) = data else { continue };
                // One parse for a reading (which carries the advert); the advert alone for a
                // node without a reading yet.
                match serde_json::from_slice::<DeviceReading>(&data) {
                    Ok(reading) => {
                        if reading.round == round
                            && let Some(sample) = sample_of(&reading, legacy)
                        {
                            readings.insert((*device).clone(), sample);
                        }
                        adverts.insert((*device).clone(), reading.advert);
                    }
                    Err(_) => {
                        if let Ok(advert) = serde_json::from_slice::<Advert>(&data) {
                            adverts.insert((*device).clone(), advert);
                        }
                    }
                }
            }
        }
        let everyone = members.iter().all(|d| readings.contains_key(d));
        if (everyone && !members.is_empty()) || Instant::now() >= until {
            break;
        }
        source.wait(until).await;
    }
    let missed = members
        .iter()
        .filter(|d| !readings.contains_key(*d))
        .count();
    Collected {
        readings: readings
            .into_iter()
            .map(|(device, quantities)| Reading { device, quantities })
            .collect(),
        live: members.len(),
        missed,
        adverts,
    }
}

/// A node's sample: its quantities when it has them and they pass the sample rules, else
/// its one value as `legacy`; `None` (no reading) when either is out of bounds.
fn sample_of(reading: &DeviceReading, legacy: &(String, String)) -> Option<Vec<Quantity>> {
    let sample = match &reading.quantities {
        Some(quantities) => quantities.clone(),
        None => vec![Quantity::new(&legacy.0, reading.value, &legacy.1)],
    };
    check_sample(&sample).is_ok().then_some(sample)
}

/// The device nodes under `{root}/devices`, as the leader's roster sees them change. The
/// first look of a collection sees every device's latest data (a node read during an
/// earlier round may hold this round's reading by now, or a reading written ahead); later
/// looks see only the nodes that changed since.
pub(crate) struct ZkReadings<'a> {
    roster: &'a mut Roster,
    first: bool,
}

impl<'a> ZkReadings<'a> {
    pub fn new(roster: &'a mut Roster) -> Self {
        Self {
            roster,
            first: true,
        }
    }
}

impl ReadingSource for ZkReadings<'_> {
    async fn members(&mut self) -> Option<Vec<String>> {
        // Errors are logged by the roster, once per run of them.
        self.roster.refresh().await.ok()?;
        Some(self.roster.members())
    }

    async fn readings(&mut self, devices: &[&String]) -> Option<Vec<Option<Vec<u8>>>> {
        let all = self.first;
        let read = self.roster.read(devices, all).await.ok()?;
        self.first = false;
        Some(read)
    }

    async fn wait(&mut self, until: Instant) {
        self.roster.wait(until).await;
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use super::*;

    /// How often the scripted source is looked at.
    const POLL: Duration = Duration::from_millis(25);

    /// Devices whose readings appear at given times after the start.
    struct Scripted {
        start: Instant,
        members: Vec<String>,
        /// device → (appears after, node data)
        arrivals: HashMap<String, (Duration, Vec<u8>)>,
        polls: usize,
    }

    impl Scripted {
        fn new(members: &[&str]) -> Self {
            Self {
                start: Instant::now(),
                members: members.iter().map(|m| m.to_string()).collect(),
                arrivals: HashMap::new(),
                polls: 0,
            }
        }

        fn reading(mut self, device: &str, after_ms: u64, round: u64, value: f64) -> Self {
            let data = serde_json::to_vec(&DeviceReading {
                round,
                value,
                ts: 0,
                quantities: None,
                advert: Default::default(),
            })
            .unwrap();
            self.arrivals
                .insert(device.into(), (Duration::from_millis(after_ms), data));
            self
        }

        fn raw(mut self, device: &str, data: &[u8]) -> Self {
            self.arrivals
                .insert(device.into(), (Duration::ZERO, data.to_vec()));
            self
        }
    }

    impl ReadingSource for Scripted {
        async fn members(&mut self) -> Option<Vec<String>> {
            self.polls += 1;
            Some(self.members.clone())
        }

        async fn readings(&mut self, devices: &[&String]) -> Option<Vec<Option<Vec<u8>>>> {
            let elapsed = self.start.elapsed();
            Some(
                devices
                    .iter()
                    .map(|d| {
                        self.arrivals
                            .get(*d)
                            .filter(|(after, _)| elapsed >= *after)
                            .map(|(_, data)| data.clone())
                    })
                    .collect(),
            )
        }

        async fn wait(&mut self, until: Instant) {
            tokio::time::sleep(POLL.min(until.saturating_duration_since(Instant::now()))).await;
        }
    }

    fn values(collected: &Collected) -> Vec<(&str, f64)> {
        collected
            .readings
            .iter()
            .map(|r| (r.device.as_str(), r.quantities[0].value))
            .collect()
    }

    fn legacy() -> (String, String) {
        ("random-temperature".into(), "°C".into())
    }

    #[tokio::test(start_paused = true)]
    async fn returns_as_soon_as_every_live_device_reported() {
        let start = Instant::now();
        let mut source = Scripted::new(&["1", "2", "3"])
            .reading("1", 0, 7, 80.0)
            .reading("2", 100, 7, 81.0)
            .reading("3", 300, 7, 82.0);
        let collected = collect(
            &mut source,
            vec![],
            7,
            start + Duration::from_secs(4),
            &legacy(),
        )
        .await;
        assert_eq!(values(&collected), [("1", 80.0), ("2", 81.0), ("3", 82.0)]);
        assert_eq!((collected.live, collected.missed), (3, 0));
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(300) + POLL,
            "done within one poll of the last reading, not at the deadline: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn goes_on_without_stragglers_at_the_deadline() {
        let start = Instant::now();
        let mut source = Scripted::new(&["1", "2", "3"])
            .reading("1", 0, 7, 80.0)
            .reading("3", 5000, 7, 82.0); // too late; "2" never reports
        let collected = collect(
            &mut source,
            vec![],
            7,
            start + Duration::from_secs(4),
            &legacy(),
        )
        .await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(4),
            "waited exactly until the deadline"
        );
        assert_eq!(values(&collected), [("1", 80.0)]);
        assert_eq!((collected.live, collected.missed), (3, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn what_each_device_runs_is_read_with_or_without_a_reading() {
        let start = Instant::now();
        let mut source = Scripted::new(&["1", "2", "3"])
            .raw(
                "1",
                br#"{"round":7,"value":80.0,"ts":1,"agent":"0.2.0","wire":[1,2]}"#,
            )
            .raw("2", br#"{"agent":"0.2.0","wire":[1,1]}"#)
            .raw("3", br#"{"round":7,"value":81.0,"ts":1}"#);
        let collected = collect(
            &mut source,
            vec![],
            7,
            start + Duration::from_secs(1),
            &legacy(),
        )
        .await;
        assert_eq!(values(&collected), [("1", 80.0), ("3", 81.0)]);
        assert_eq!(collected.adverts["1"].wire, Some([1, 2]));
        assert_eq!(collected.adverts["2"].wire, Some([1, 1]), "no reading yet");
        assert_eq!(
            collected.adverts["3"],
            Advert::default(),
            "an agent before 0.2.0"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn readings_of_other_rounds_and_garbage_do_not_count() {
        let start = Instant::now();
        let mut source = Scripted::new(&["1", "2", "3", "4"])
            .reading("1", 0, 7, 80.0)
            .reading("2", 0, 6, 99.0) // last round's
            .raw("3", b"{\"round\":7,\"value\":\"hot\"}")
            .raw("4", b"{\"round\":7,\"value\":1e999,\"ts\":0}");
        let collected = collect(
            &mut source,
            vec![],
            7,
            start + Duration::from_secs(1),
            &legacy(),
        )
        .await;
        assert_eq!(values(&collected), [("1", 80.0)]);
        assert_eq!(collected.missed, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sample_of_quantities_is_read_whole_and_one_out_of_bounds_is_no_reading() {
        let start = Instant::now();
        let many: Vec<String> = (0..=crate::wire::MAX_QUANTITIES)
            .map(|i| format!(r#"{{"name":"q{i}","value":1}}"#))
            .collect();
        let too_many = format!(
            r#"{{"round":7,"value":1,"ts":1,"quantities":[{}]}}"#,
            many.join(",")
        );
        let mut source = Scripted::new(&["1", "2", "3", "4"])
            .raw(
                "1",
                br#"{"round":7,"value":21.5,"ts":1,"quantities":[{"name":"t","value":21.5,"unit":"Cel"},{"name":"rh","value":40,"unit":"%"}]}"#,
            )
            .raw("2", br#"{"round":7,"value":80.0,"ts":1}"#)
            .raw(
                "3",
                br#"{"round":7,"value":1,"ts":1,"quantities":[{"name":"a b","value":1}]}"#,
            )
            .raw("4", too_many.as_bytes());
        let collected = collect(
            &mut source,
            vec![],
            7,
            start + Duration::from_secs(1),
            &legacy(),
        )
        .await;
        assert_eq!(
            collected.readings,
            [
                Reading {
                    device: "1".into(),
                    quantities: vec![
                        Quantity::new("t", 21.5, "Cel"),
                        Quantity::new("rh", 40.0, "%")
                    ],
                },
                Reading::one("2", "random-temperature", 80.0, "°C"),
            ]
        );
        assert_eq!(collected.missed, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_fleet_waits_until_the_deadline_and_collects_nothing() {
        let start = Instant::now();
        let mut source = Scripted::new(&[]);
        let collected = collect(
            &mut source,
            vec![],
            1,
            start + Duration::from_secs(2),
            &legacy(),
        )
        .await;
        assert_eq!(collected, Collected::default());
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(
            source.polls > 1,
            "it kept looking for devices that join late"
        );
    }
}
