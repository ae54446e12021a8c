//! The deployment files as tests read them: docker-compose.yml (with its merge keys), the
//! Dockerfile's instructions and the runtime image's environment, and the secrets the
//! compose file's `secrets` service makes.

use std::{collections::BTreeMap, path::Path};

use serde_norway::Value;

use super::repo_root;

pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn yaml(path: &str) -> Value {
    let mut value: Value =
        serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} parses: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{path}: merge keys: {e}"));
    value
}

pub fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is a string: {value:?}"))
}

pub fn strings(value: &Value, what: &str) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what} is a list: {value:?}"))
        .iter()
        .map(|v| str_of(v, what).to_owned())
        .collect()
}

/// A service's `environment`, as a map (compose allows a map or a `K=V` list; we use maps).
pub fn environment(service: &Value) -> BTreeMap<String, String> {
    let Some(env) = service.get("environment") else {
        return BTreeMap::new();
    };
    env.as_mapping()
        .expect("environment is a map")
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("environment value {other:?}"),
            };
            (str_of(k, "env name").to_owned(), value)
        })
        .collect()
}

pub struct Compose {
    pub services: BTreeMap<String, Value>,
}

impl Compose {
    pub fn load() -> Self {
        let compose = yaml("docker-compose.yml");
        let services = compose
            .get("services")
            .and_then(Value::as_mapping)
            .expect("services")
            .iter()
            .map(|(k, v)| (str_of(k, "service name").to_owned(), v.clone()))
            .collect();
        Self { services }
    }

    /// Services running the fleetmeter image's default entrypoint (`fleetmeter run`).
    pub fn agents(&self) -> BTreeMap<&str, &Value> {
        self.services
            .iter()
            .filter(|(_, s)| s.get("build").is_some() && s.get("entrypoint").is_none())
            .map(|(name, s)| (name.as_str(), s))
            .collect()
    }

    pub fn service(&self, name: &str) -> &Value {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("service {name} in docker-compose.yml"))
    }
}

/// One Dockerfile instruction, with its stage index.
pub struct Instruction {
    pub stage: usize,
    pub keyword: String,
    pub args: String,
}

pub fn dockerfile() -> Vec<Instruction> {
    let text = read("Dockerfile").replace("\\\n", " ");
    let mut stage = 0;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, args) = line.split_once(' ').unwrap_or((line, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stage += 1;
        }
        out.push(Instruction {
            stage,
            keyword,
            args: args.trim().to_owned(),
        });
    }
    out
}

/// `COPY` instructions from the build context: (sources, destination, stage).
pub fn context_copies() -> Vec<(Vec<String>, String, usize)> {
    dockerfile()
        .into_iter()
        .filter(|i| i.keyword == "COPY" && !i.args.contains("--from"))
        .map(|i| {
            let mut parts: Vec<String> = i.args.split_whitespace().map(str::to_owned).collect();
            let dest = parts.pop().expect("a destination");
            (parts, dest, i.stage)
        })
        .collect()
}

/// The runtime stage's `ENV`, with paths copied from the context mapped back to the
/// repository (so that `/etc/fleetmeter/agent.toml` is checked as the repository's
/// agent.toml, the file the image carries).
pub fn runtime_env() -> BTreeMap<String, String> {
    let instructions = dockerfile();
    let last = instructions.iter().map(|i| i.stage).max().unwrap();
    let copied: BTreeMap<String, String> = context_copies()
        .into_iter()
        .filter(|(_, _, stage)| *stage == last)
        .filter_map(|(sources, dest, _)| match sources.as_slice() {
            [one] => Some((dest, repo_root().join(one).display().to_string())),
            _ => None,
        })
        .collect();
    let mut env = BTreeMap::new();
    for i in instructions
        .iter()
        .filter(|i| i.stage == last && i.keyword == "ENV")
    {
        for pair in i.args.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV K=V");
            let v = copied.get(v).cloned().unwrap_or_else(|| v.to_owned());
            env.insert(k.to_owned(), v);
        }
    }
    env
}

impl Compose {
    /// Runs the `secrets` service's script as compose would, with its volume at `dir`
    /// instead of /run/fleetmeter (and without its `chown`s to the containers' users: here
    /// the services run as the test's user). Returns what it wrote, by file name.
    pub fn make_secrets(&self, dir: &Path) -> BTreeMap<String, String> {
        let service = self.service("secrets");
        let command = strings(service.get("command").expect("command"), "command");
        let script = command
            .join("\n")
            .replace("$$", "$")
            .replace(SECRETS, &dir.display().to_string())
            .lines()
            .filter(|l| !l.trim_start().starts_with("chown "))
            .collect::<Vec<_>>()
            .join("\n");
        // The script runs `fleetmeter` (the image's); here, the one just built.
        let bin = Path::new(env!("CARGO_BIN_EXE_fleetmeter"))
            .parent()
            .unwrap()
            .to_owned();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .env("PATH", path)
            .status()
            .expect("run /bin/sh");
        assert!(status.success(), "the secrets script failed: {script}");
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect()
    }
}

/// Where the compose services mount the secrets volume.
pub const SECRETS: &str = "/run/fleetmeter";

/// `env` with the secrets volume's path replaced by `dir`.
pub fn with_secrets_at(env: &BTreeMap<String, String>, dir: &Path) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| (k.clone(), v.replace(SECRETS, &dir.display().to_string())))
        .collect()
}
