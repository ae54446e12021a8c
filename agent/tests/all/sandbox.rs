//! A plugin that traps, panics, loops, hogs memory or fails must cost one call, never the
//! agent. Uses the `misbehaving-sensor` fixture (a real component; see plugins/fixtures/).

use std::time::Duration;

use crate::support::Single;
use crate::support::{engine, fixture, fuel_engine, settings};
use fleetmeter::plugin::{CallError, Failure, Limits, PluginSettings, SensorPlugin};

async fn misbehaving(config: &[(&str, &str)]) -> SensorPlugin {
    SensorPlugin::load(&engine(), &fixture("misbehaving-sensor"), settings(config))
        .await
        .unwrap()
}

fn failure(result: Result<f64, CallError>) -> Failure {
    match result {
        Err(CallError::Failed { plugin, failure }) => {
            assert_eq!(plugin, "misbehaving-sensor", "failures name the plugin");
            failure
        }
        other => panic!("expected a failed call, got {other:?}"),
    }
}

#[tokio::test]
async fn a_trap_costs_one_call_and_the_instance_is_rebuilt() {
    let mut sensor = misbehaving(&[("mode", "trap"), ("every", "2")]).await;
    assert_eq!(sensor.sample().await.one().unwrap(), 1.0);
    let trap = failure(sensor.sample().await.one());
    assert!(
        matches!(&trap, Failure::Trap(m) if m.contains("unreachable")),
        "{trap}"
    );
    // A fresh instance: its own call counter starts again.
    assert_eq!(sensor.sample().await.one().unwrap(), 1.0);
    let stats = sensor.stats();
    assert_eq!(stats.failures, 1);
    assert_eq!(stats.calls, 3);
    assert_eq!(
        stats.instantiations, 3,
        "describe at load, the ready instance, the rebuild"
    );
}

#[tokio::test]
async fn a_panic_is_reported_with_its_message() {
    let mut sensor = misbehaving(&[("mode", "panic")]).await;
    match failure(sensor.sample().await.one()) {
        Failure::Panic(message) => {
            assert!(message.contains("asked to panic on sample 1"), "{message}");
            assert!(!message.contains('\n'), "one line: {message:?}");
        }
        other => panic!("expected a panic, got {other}"),
    }
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_by_the_deadline() {
    let mut sensor = SensorPlugin::load(
        &engine(),
        &fixture("misbehaving-sensor"),
        PluginSettings {
            limits: Limits {
                timeout_ms: 100,
                ..Limits::default()
            },
            ..settings(&[("mode", "spin"), ("every", "2")])
        },
    )
    .await
    .unwrap();
    assert_eq!(sensor.sample().await.one().unwrap(), 1.0);
    assert_eq!(
        failure(sensor.sample().await.one()),
        Failure::Timeout(Duration::from_millis(100))
    );
    // The deadline is re-armed before each call: the next call is not cut short.
    assert_eq!(sensor.sample().await.one().unwrap(), 1.0);
    assert_eq!(
        sensor.sample().await.one().unwrap_err().to_string(),
        "plugin misbehaving-sensor exceeded its time limit of 100ms per call"
    );
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_by_fuel() {
    let mut sensor = SensorPlugin::load(
        &fuel_engine(),
        &fixture("misbehaving-sensor"),
        PluginSettings {
            limits: Limits {
                fuel: Some(2_000_000),
                ..Limits::default()
            },
            ..settings(&[("mode", "spin"), ("every", "2")])
        },
    )
    .await
    .unwrap();
    // Fuel is refilled before each call: a normal call after a heavy one succeeds.
    assert_eq!(sensor.sample().await.one().unwrap(), 1.0);
    assert_eq!(
        failure(sensor.sample().await.one()),
        Failure::OutOfFuel(2_000_000)
    );
    assert_eq!(sensor.sample().await.one().unwrap(), 1.0);
}

#[tokio::test]
async fn a_fuel_limit_needs_a_fuel_engine() {
    let err = SensorPlugin::load(
        &engine(),
        &fixture("misbehaving-sensor"),
        PluginSettings {
            limits: Limits {
                fuel: Some(1000),
                ..Limits::default()
            },
            ..PluginSettings::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("without fuel metering"), "{err}");
}

#[tokio::test]
async fn a_memory_bomb_hits_the_cap() {
    let mut sensor = SensorPlugin::load(
        &engine(),
        &fixture("misbehaving-sensor"),
        PluginSettings {
            limits: Limits {
                max_memory_mib: 16,
                ..Limits::default()
            },
            ..settings(&[("mode", "hog"), ("every", "2")])
        },
    )
    .await
    .unwrap();
    assert_eq!(sensor.sample().await.one().unwrap(), 1.0);
    assert_eq!(
        failure(sensor.sample().await.one()),
        Failure::MemoryLimit(16 * 1024 * 1024)
    );
    assert_eq!(
        sensor.sample().await.one().unwrap(),
        1.0,
        "the rebuilt instance starts small"
    );
}

#[tokio::test]
async fn an_error_returned_by_the_plugin_keeps_the_instance() {
    let mut sensor = misbehaving(&[("mode", "error"), ("every", "2")]).await;
    assert_eq!(sensor.sample().await.one().unwrap(), 1.0);
    match sensor.sample().await.one() {
        Err(CallError::Guest { plugin, message }) => {
            assert_eq!(plugin, "misbehaving-sensor");
            assert_eq!(message, "simulated sensor failure on sample 2");
        }
        other => panic!("expected a guest error, got {other:?}"),
    }
    // Same instance: its counter goes on.
    assert_eq!(sensor.sample().await.one().unwrap(), 3.0);
    assert_eq!(sensor.stats().guest_errors, 1);
    assert_eq!(sensor.stats().failures, 0);
}

#[tokio::test]
async fn repeated_failures_back_off() {
    let mut sensor = SensorPlugin::load(
        &engine(),
        &fixture("misbehaving-sensor"),
        PluginSettings {
            limits: Limits {
                failures_before_backoff: 2,
                backoff_initial_ms: 60_000,
                ..Limits::default()
            },
            ..settings(&[("mode", "trap")])
        },
    )
    .await
    .unwrap();
    failure(sensor.sample().await.one());
    failure(sensor.sample().await.one());
    match sensor.sample().await.one() {
        Err(CallError::BackingOff {
            failures,
            remaining,
            ..
        }) => {
            assert_eq!(failures, 2);
            assert!(remaining > Duration::from_secs(30), "{remaining:?}");
        }
        other => panic!("expected back-off, got {other:?}"),
    }
    let stats = sensor.stats();
    assert_eq!(stats.backed_off, 1);
    assert_eq!(stats.failures, 2);
    // describe at load, the ready instance (trapped), one rebuild (trapped); none for the
    // refused call.
    assert_eq!(stats.instantiations, 3);
}

#[tokio::test]
async fn a_rejected_config_is_a_load_error_not_a_crash() {
    let err = SensorPlugin::load(
        &engine(),
        &fixture("misbehaving-sensor"),
        settings(&[("mode", "reject")]),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("rejected its configuration"),
        "{err}"
    );
}
