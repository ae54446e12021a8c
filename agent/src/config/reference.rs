//! The configuration reference in the book (`docs/configuration.md`), rendered from the key
//! table ([`super::keys::ALL`]); a test fails when the page and the table differ.

use super::keys::ALL;

/// The page that holds the reference, from the repository's root.
pub const PAGE: &str = "docs/configuration.md";

/// Marks around the generated table in the book's configuration page.
pub const BEGIN: &str = "<!-- configuration keys: generated from agent/src/config/keys.rs -->";
pub const END: &str = "<!-- end of configuration keys -->";

/// The configuration reference, one row per key.
pub fn table() -> String {
    let mut out = String::from(
        "| agent.toml | flag | environment | default | valid values, notes |\n|---|---|---|---|---|\n",
    );
    let code = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            format!("`{s}`")
        }
    };
    for key in ALL {
        let flag = match (key.positional, key.flag, key.value_name) {
            (Some(arg), Some(flag), _) => format!("`{arg}` or `--{flag} {arg}`"),
            (None, Some(flag), Some(value)) => format!("`--{flag} {value}`"),
            (None, Some(flag), _) => format!("`--{flag}`"),
            _ => String::new(),
        };
        let valid = match key.range {
            Some((min, max)) => format!("{min}–{max} {}", key.unit),
            None => String::new(),
        };
        let notes = [valid.as_str(), key.note]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            code(key.file.unwrap_or("")),
            flag,
            code(key.env.unwrap_or("")),
            code(key.default.trim_matches('"')),
            notes.replace('|', "\\|"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn repo_file(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
    }

    /// The page's reference is rendered from the table. After changing the table, run
    /// `FLEETMETER_BLESS=1 cargo test -p fleetmeter --lib configuration_reference` to
    /// rewrite it.
    #[test]
    fn the_configuration_reference_is_the_table() {
        let path = repo_file(PAGE);
        let readme = std::fs::read_to_string(&path).unwrap();
        let (Some(begin), Some(end)) = (readme.find(BEGIN), readme.find(END)) else {
            panic!("{PAGE} lacks the markers {BEGIN:?} … {END:?}");
        };
        let current = &readme[begin + BEGIN.len()..end];
        let expected = format!("\n{}", table());
        if current == expected {
            return;
        }
        if std::env::var_os("FLEETMETER_BLESS").is_some() {
            let updated = format!("{}{BEGIN}{expected}{}", &readme[..begin], &readme[end..]);
            std::fs::write(&path, updated).unwrap();
            return;
        }
        panic!(
            "{PAGE}'s configuration reference differs from the key table \
             (agent/src/config/keys.rs); rewrite it with \
             `FLEETMETER_BLESS=1 cargo test -p fleetmeter --lib configuration_reference`. \
             Expected:\n{expected}"
        );
    }
}
