//! What a plugin may say about itself. Checked when it is loaded, so that nothing a plugin
//! declares can make a round unpublishable (the API refuses an aggregator label or a unit
//! outside its limits) or put odd text into logs, metrics labels and `plugin inspect`.

use super::Metadata;

/// `name`: 1 to 64 bytes of ASCII letters, digits, `-`, `_` and `.`, starting with a letter
/// or digit (it becomes a metrics label and half of the `NAME@VERSION` the API stores).
pub const MAX_NAME_LEN: usize = 64;
/// `version`: 1 to 32 bytes of ASCII letters, digits, `.`, `-` and `+` (semver's alphabet).
pub const MAX_VERSION_LEN: usize = 32;
/// `unit`: at most 16 characters, none of them control or formatting characters, the
/// API's own limit. Empty means unitless.
pub const MAX_UNIT_CHARS: usize = crate::wire::MAX_UNIT_CHARS;
/// `description`: at most 256 characters on one line.
pub const MAX_DESCRIPTION_CHARS: usize = 256;

/// The first field that is out of bounds, and why; the value is shown escaped and cut.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("its metadata `{field}` {problem} (got \"{shown}\")")]
pub struct BadMetadata {
    pub field: &'static str,
    pub problem: String,
    pub shown: String,
}

pub(crate) fn validate(meta: &Metadata) -> Result<(), BadMetadata> {
    let bad = |field, problem: String, value: &str| BadMetadata {
        field,
        problem,
        shown: crate::text::one_line_bounded(value, 80),
    };
    let ident = |c: char, extra: &[char]| c.is_ascii_alphanumeric() || extra.contains(&c);
    let name = &meta.name;
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.chars().all(|c| ident(c, &['-', '_', '.']))
    {
        return Err(bad(
            "name",
            format!(
                "must be 1 to {MAX_NAME_LEN} ASCII letters, digits, '-', '_' or '.', starting \
                 with a letter or digit"
            ),
            name,
        ));
    }
    let version = &meta.version;
    if version.is_empty()
        || version.len() > MAX_VERSION_LEN
        || !version.chars().all(|c| ident(c, &['.', '-', '+']))
    {
        return Err(bad(
            "version",
            format!("must be 1 to {MAX_VERSION_LEN} ASCII letters, digits, '.', '-' or '+'"),
            version,
        ));
    }
    if meta.unit.chars().count() > MAX_UNIT_CHARS || !printable(&meta.unit) {
        return Err(bad(
            "unit",
            format!(
                "must be at most {MAX_UNIT_CHARS} printable characters (the measurements API's \
                 limit)"
            ),
            &meta.unit,
        ));
    }
    if meta.description.chars().count() > MAX_DESCRIPTION_CHARS || !printable(&meta.description) {
        return Err(bad(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} printable characters on one line"),
            &meta.description,
        ));
    }
    Ok(())
}

/// No character that [`crate::text::one_line`] would escape.
pub(crate) fn printable(text: &str) -> bool {
    matches!(crate::text::one_line(text), std::borrow::Cow::Borrowed(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, version: &str, unit: &str, description: &str) -> Metadata {
        Metadata {
            name: name.into(),
            version: version.into(),
            unit: unit.into(),
            description: description.into(),
        }
    }

    #[test]
    fn the_bundled_kinds_of_metadata_pass() {
        assert_eq!(
            validate(&meta("random-temperature", "0.1.0", "°C", "A random walk")),
            Ok(())
        );
        assert_eq!(
            validate(&meta("trimmed_mean.v2", "1.0.0-rc.1+b7", "", "")),
            Ok(())
        );
    }

    #[test]
    fn each_field_is_bounded_and_named() {
        let cases = [
            (meta("", "1", "", ""), "name"),
            (meta(&"n".repeat(65), "1", "", ""), "name"),
            (meta("-x", "1", "", ""), "name"),
            (meta("a b", "1", "", ""), "name"),
            (meta("x", "", "", ""), "version"),
            (meta("x", "1 ", "", ""), "version"),
            (meta("x", &"1".repeat(33), "", ""), "version"),
            (meta("x", "1", &"u".repeat(17), ""), "unit"),
            (meta("x", "1", "°C\n", ""), "unit"),
            (meta("x", "1", "\u{202e}C", ""), "unit"),
            (meta("x", "1", "", &"d".repeat(257)), "description"),
            (meta("x", "1", "", "line\nforged"), "description"),
        ];
        for (m, field) in cases {
            let err = validate(&m).unwrap_err();
            assert_eq!(err.field, field, "{m:?}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    #[test]
    fn the_longest_allowed_unit_counts_characters_not_bytes() {
        assert_eq!(validate(&meta("x", "1", &"°".repeat(16), "")), Ok(()));
    }
}
