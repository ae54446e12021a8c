//! The key table against the command line, `FileConfig`'s defaults, `agent.toml` and the
//! validators (`super::keys`).

use std::path::Path;

use clap::CommandFactory;

use super::*;
use crate::{cli::Cli, config::FileConfig};

fn repo_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

/// `[section] name` → (`section`, `name`); `[section]` alone is a table key.
fn split(file: &str) -> (&str, Option<&str>) {
    let (section, rest) = file
        .trim_start_matches('[')
        .split_once(']')
        .expect("a file key starts with [section]");
    (section, Some(rest.trim()).filter(|r| !r.is_empty()))
}

#[test]
fn the_run_command_line_is_the_table() {
    let cli = Cli::command();
    let run = cli.find_subcommand("run").expect("a run subcommand");
    let mut seen = Vec::new();
    for arg in run.get_arguments().chain(cli.get_arguments()) {
        let long = arg.get_long();
        let env = arg.get_env().and_then(|e| e.to_str());
        if matches!(long, Some("help" | "version")) || (long.is_none() && env.is_none()) {
            continue;
        }
        let key = ALL
            .iter()
            .find(|k| {
                (long.is_some() && k.flag == long)
                    || (long.is_none()
                        && k.positional == arg.get_value_names().map(|v| v[0].as_str()))
            })
            .unwrap_or_else(|| {
                panic!("`run` has --{long:?} / {env:?}, which the key table does not list")
            });
        // A key with a positional argument (`ID`) has its variable there, not on the flag.
        if key.positional.is_none() || long.is_none() {
            assert_eq!(key.env, env, "{}: the variable", key.label);
        }
        seen.push(key.label);
    }
    for key in ALL.iter().filter(|k| k.flag.is_some()) {
        assert!(
            seen.contains(&key.label),
            "the key table lists --{}, which `run` does not accept",
            key.long()
        );
    }
}

#[test]
fn the_table_defaults_are_the_built_in_defaults() {
    let defaults = FileConfig::default();
    for key in ALL.iter().filter(|k| !k.default.is_empty()) {
        let Some(file) = key.file else { continue };
        let (section, Some(name)) = split(file) else {
            panic!("{file}: a table key has no default");
        };
        let text = format!("[{section}]\n{name} = {}\n", key.default);
        let parsed = crate::config::parse(&text)
            .unwrap_or_else(|e| panic!("{file}: default {} does not parse: {e}", key.default));
        assert_eq!(
            parsed, defaults,
            "{file}: the table's default {} is not the built-in one",
            key.default
        );
    }
}

#[test]
fn every_key_of_agent_toml_is_in_the_table() {
    let text = std::fs::read_to_string(repo_file("agent.toml")).unwrap();
    // Commented-out keys (`# token = "..."`) are documented keys too.
    let is_key = |rest: &str| {
        rest.split_once(" = ").is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    let uncommented: String = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("# ") {
            Some(rest) if is_key(rest) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let table: toml::Table = toml::from_str(&uncommented).expect("agent.toml parses");
    let files: Vec<&str> = ALL.iter().filter_map(|k| k.file).collect();
    let mut count = 0;
    fn walk(prefix: &str, table: &toml::Table, files: &[&str], count: &mut usize) {
        for (name, value) in table {
            let section = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match value {
                toml::Value::Table(_) if files.contains(&format!("[{section}]").as_str()) => {
                    *count += 1;
                }
                toml::Value::Table(inner) => walk(&section, inner, files, count),
                _ => {
                    let key = format!("[{prefix}] {name}");
                    assert!(
                        files.contains(&key.as_str()),
                        "agent.toml has {key}, the key table does not"
                    );
                    *count += 1;
                }
            }
        }
    }
    walk("", &table, &files, &mut count);
    assert!(count >= 25, "only {count} keys found in agent.toml");
    for file in files {
        let (section, name) = split(file);
        let found = match name {
            Some(name) => {
                text.contains(&format!("[{section}]")) && text.contains(&format!("{name} ="))
            }
            None => text.contains(&format!("[{section}]")),
        };
        assert!(found, "agent.toml does not document {file}");
    }
}

#[test]
fn ranges_match_the_validators() {
    use crate::coord::dynconfig::{MAX_PERIOD, MIN_PERIOD};
    assert_eq!(
        SAMPLING_PERIOD.range,
        Some((MIN_PERIOD.as_secs_f64(), MAX_PERIOD.as_secs_f64()))
    );
    let limits = crate::plugin::Limits::default();
    for (timeout, ok) in [(0, false), (1, true), (60_000, true), (60_001, false)] {
        let l = crate::plugin::Limits {
            timeout_ms: timeout,
            ..limits.clone()
        };
        assert_eq!(l.validate().is_ok(), ok, "timeout_ms {timeout}");
    }
    assert_eq!(LIMIT_TIMEOUT.range, Some((1.0, 60_000.0)));
    assert_eq!(LIMIT_MEMORY.range, Some((1.0, 4096.0)));
    use crate::plugin::{MAX_LOG_BYTES, MAX_LOG_LINES};
    for key in [LIMIT_LOG_LINES_PER_CALL, LIMIT_LOG_LINES_PER_SECOND] {
        assert_eq!(key.range, Some((0.0, f64::from(MAX_LOG_LINES))));
    }
    for key in [LIMIT_LOG_BYTES_PER_CALL, LIMIT_LOG_BYTES_PER_SECOND] {
        assert_eq!(key.range, Some((0.0, MAX_LOG_BYTES as f64)));
    }
}
