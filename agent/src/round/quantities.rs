//! A round's quantities, pure: which the leader aggregates (a quantity whose unit differs
//! between devices is refused for the round, never averaged), and what the round publishes
//! for each (its aggregate and every device's value).

use std::borrow::Cow;

use crate::{
    plugin::Reading,
    telemetry::Telemetry,
    wire::{Quantity, RoundQuantity},
};

/// A quantity refused for one round: the devices disagree on its unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub name: String,
    /// Each unit reported, with the devices that reported it (first devices only).
    pub units: Vec<(String, Vec<String>)>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (unit, devices)) in self.units.iter().enumerate() {
            let unit = if unit.is_empty() { "no unit" } else { unit };
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{unit:?} from device {}", devices.join(", "))?;
            if devices.len() == SHOWN_DEVICES {
                f.write_str(", …")?;
            }
        }
        Ok(())
    }
}

/// Devices named per unit in a refusal.
const SHOWN_DEVICES: usize = 3;

/// The readings with every quantity whose unit is not the same on every device that
/// carried it taken out (and a device left with no quantity taken out), and what was
/// refused.
pub fn screen(readings: &[Reading]) -> (Cow<'_, [Reading]>, Vec<Refused>) {
    let mut refused: Vec<Refused> = Vec::new();
    for name in crate::plugin::quantity_order(readings) {
        let mut units: Vec<(String, Vec<String>)> = Vec::new();
        for r in readings {
            let Some(q) = r.quantities.iter().find(|q| q.name == name) else {
                continue;
            };
            match units.iter_mut().find(|(u, _)| *u == q.unit) {
                Some((_, devices)) if devices.len() < SHOWN_DEVICES => {
                    devices.push(r.device.clone())
                }
                Some(_) => {}
                None => units.push((q.unit.clone(), vec![r.device.clone()])),
            }
        }
        if units.len() > 1 {
            refused.push(Refused {
                name: name.to_owned(),
                units,
            });
        }
    }
    if refused.is_empty() {
        return (Cow::Borrowed(readings), refused);
    }
    let kept = readings
        .iter()
        .filter_map(|r| {
            let quantities: Vec<Quantity> = r
                .quantities
                .iter()
                .filter(|q| !refused.iter().any(|x| x.name == q.name))
                .cloned()
                .collect();
            (!quantities.is_empty()).then(|| Reading {
                device: r.device.clone(),
                quantities,
            })
        })
        .collect();
    (Cow::Owned(kept), refused)
}

/// Logs and counts each refused quantity of `round`.
pub fn report_refused(round: u64, refused: &[Refused], telemetry: &Telemetry) {
    for r in refused {
        telemetry.quantity_refused(&r.name);
        tracing::warn!(
            round,
            quantity = %r.name,
            units = %r,
            "quantity refused for this round: the devices disagree on its unit (never averaged); \
             give every device the same unit for it"
        );
    }
}

/// What the round publishes for each quantity of `readings` (in the order they first
/// appear): its unit, the aggregator's value (`None` when it published none) and each
/// device's value, in the order of `readings`.
pub fn round_quantities(readings: &[Reading], published: &[(String, f64)]) -> Vec<RoundQuantity> {
    crate::plugin::quantity_order(readings)
        .into_iter()
        .map(|name| {
            let values: Vec<Option<f64>> = readings
                .iter()
                .map(|r| {
                    r.quantities
                        .iter()
                        .find(|q| q.name == name)
                        .map(|q| q.value)
                })
                .collect();
            let unit = readings
                .iter()
                .flat_map(|r| &r.quantities)
                .find(|q| q.name == name)
                .map(|q| q.unit.clone())
                .unwrap_or_default();
            RoundQuantity {
                name: name.to_owned(),
                unit,
                value: published.iter().find(|(n, _)| n == name).map(|(_, v)| *v),
                values,
            }
        })
        .collect()
}

/// The quantity-bearing fields of a round's result.
#[derive(Debug, PartialEq)]
pub struct Published {
    /// The primary quantity's (the first with a value): `value`, `unit`, and `values` when
    /// every device carried it.
    pub value: f64,
    pub unit: Option<String>,
    pub values: Option<Vec<f64>>,
    /// The devices whose samples were aggregated.
    pub devices: Vec<String>,
    pub quantities: Vec<RoundQuantity>,
}

/// What a round publishes from its (screened) readings and the aggregator's values; `None`
/// when it published no quantity (the round publishes nothing).
pub fn publish(readings: &[Reading], published: &[(String, f64)]) -> Option<Published> {
    let quantities = round_quantities(readings, published);
    let primary = quantities.iter().find(|q| q.value.is_some())?;
    Some(Published {
        value: primary.value?,
        unit: Some(primary.unit.clone()).filter(|u| !u.is_empty()),
        values: primary.values.iter().copied().collect(),
        devices: readings.iter().map(|r| r.device.clone()).collect(),
        quantities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(device: &str, quantities: &[(&str, f64, &str)]) -> Reading {
        Reading {
            device: device.into(),
            quantities: quantities
                .iter()
                .map(|(n, v, u)| Quantity::new(*n, *v, *u))
                .collect(),
        }
    }

    #[test]
    fn a_quantity_whose_units_differ_is_refused_and_the_others_kept() {
        let readings = [
            sample("1", &[("t", 21.0, "Cel"), ("rh", 40.0, "%")]),
            sample("2", &[("t", 22.0, "Cel"), ("rh", 0.41, "1")]),
            sample("3", &[("rh", 42.0, "%")]),
        ];
        let (kept, refused) = screen(&readings);
        assert_eq!(
            refused,
            [Refused {
                name: "rh".into(),
                units: vec![
                    ("%".into(), vec!["1".into(), "3".into()]),
                    ("1".into(), vec!["2".into()])
                ],
            }]
        );
        assert_eq!(
            refused[0].to_string(),
            r#""%" from device 1, 3; "1" from device 2"#
        );
        // Device 3 carried only the refused quantity: it contributes nothing this round.
        assert_eq!(
            *kept,
            [
                sample("1", &[("t", 21.0, "Cel")]),
                sample("2", &[("t", 22.0, "Cel")])
            ]
        );
    }

    #[test]
    fn the_primary_quantity_is_the_first_published() {
        let readings = [
            sample("1", &[("t", 21.0, "Cel"), ("rh", 40.0, "%")]),
            sample("2", &[("rh", 42.0, "%")]),
        ];
        let p = publish(&readings, &[("rh".to_owned(), 41.0)]).unwrap();
        assert_eq!(
            (p.value, p.unit.as_deref(), p.values.as_deref()),
            (41.0, Some("%"), Some([40.0, 42.0].as_slice()))
        );
        let p = publish(
            &readings,
            &[("t".to_owned(), 21.0), ("rh".to_owned(), 41.0)],
        )
        .unwrap();
        assert_eq!((p.value, p.values), (21.0, None), "device 2 has no t");
        assert_eq!(p.devices, ["1", "2"]);
        assert_eq!(publish(&readings, &[]), None);
    }

    #[test]
    fn agreeing_units_pass_unchanged() {
        let readings = [
            sample("1", &[("t", 1.0, "")]),
            sample("2", &[("t", 2.0, "")]),
        ];
        let (kept, refused) = screen(&readings);
        assert!(matches!(kept, Cow::Borrowed(_)), "not copied");
        assert_eq!((&*kept, refused), (&readings[..], vec![]));
    }

    #[test]
    fn each_quantity_has_its_aggregate_and_every_devices_value() {
        let readings = [
            sample("1", &[("t", 21.0, "Cel"), ("rh", 40.0, "%")]),
            sample("2", &[("rh", 42.0, "%")]),
        ];
        let published = [("rh".to_owned(), 41.0)];
        assert_eq!(
            round_quantities(&readings, &published),
            [
                RoundQuantity {
                    name: "t".into(),
                    unit: "Cel".into(),
                    value: None,
                    values: vec![Some(21.0), None],
                },
                RoundQuantity {
                    name: "rh".into(),
                    unit: "%".into(),
                    value: Some(41.0),
                    values: vec![Some(40.0), Some(42.0)],
                },
            ]
        );
    }
}
