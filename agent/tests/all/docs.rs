//! The README and the book in `docs/` (mdBook layout): every page is in `docs/SUMMARY.md`,
//! every relative link and anchor resolves, and the README stays a front door. mdBook itself
//! is not built here (compiling it would cost CI minutes); this is what its build would
//! check, plus anchors, which it does not.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use crate::support::repo_root;

/// The README's length: a front door, not a book (250 until the tutorial gained its step for
/// several quantities per sample).
const README_MAX_LINES: usize = 280;

/// The lines of `path` outside fenced code blocks.
fn unfenced(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push(line.to_owned());
        }
    }
    out
}

/// The text of `path` outside fenced code blocks and inline code.
fn prose(path: &Path) -> String {
    let mut out = String::new();
    for line in unfenced(path) {
        // Drop inline code spans: a `[x](y)` inside backticks is not a link.
        let mut inside = false;
        for c in line.chars() {
            if c == '`' {
                inside = !inside;
            } else if !inside {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// `[text](target)` link targets, in order.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(after[..end].trim().to_owned());
        rest = &after[end..];
    }
    out
}

/// The anchors GitHub and mdBook give a page's headings: lower case, punctuation dropped
/// (except `-` and `_`), spaces as `-`, a repeat numbered `-1`, `-2`…
fn anchors(path: &Path) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in unfenced(path) {
        let Some(heading) = line.trim_start_matches('#').strip_prefix(' ') else {
            continue;
        };
        if !line.starts_with('#') {
            continue;
        }
        // Inline code counts by its text.
        let slug: String = heading
            .replace('`', "")
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut candidate = slug.clone();
        let mut n = 0;
        while seen.contains(&candidate) {
            n += 1;
            candidate = format!("{slug}-{n}");
        }
        seen.insert(candidate);
    }
    seen
}

fn pages() -> Vec<PathBuf> {
    let root = repo_root();
    let mut pages = vec![root.join("README.md")];
    let mut book: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    book.sort();
    pages.extend(book);
    pages
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let dir = page.parent().unwrap();
        for target in links(&prose(&page)) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let resolved = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            checked += 1;
            if !resolved.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
                continue;
            }
            if let Some(anchor) = anchor
                && !anchors(&resolved).contains(anchor)
            {
                broken.push(format!(
                    "{}: {target} (no heading with that anchor in {})",
                    page.display(),
                    resolved.display()
                ));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_page_of_the_book_is_in_its_summary() {
    let docs = repo_root().join("docs");
    let summary = docs.join("SUMMARY.md");
    let listed: BTreeSet<String> = links(&prose(&summary)).into_iter().collect();
    for page in pages().iter().skip(1) {
        let name = page.file_name().unwrap().to_str().unwrap();
        if name == "SUMMARY.md" {
            continue;
        }
        assert!(
            listed.contains(name),
            "docs/{name} is not in docs/SUMMARY.md: mdBook would not publish it"
        );
    }
    for name in &listed {
        assert!(
            docs.join(name).exists(),
            "docs/SUMMARY.md lists {name}, which does not exist"
        );
    }
}

#[test]
fn the_readme_is_a_front_door() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines; keep it under {README_MAX_LINES} and move depth to docs/"
    );
    for must in [
        "docker compose up --build",
        "scripts/test",
        "docs/SUMMARY.md",
    ] {
        assert!(
            readme.contains(must),
            "the README no longer mentions {must}"
        );
    }
}

#[test]
fn the_anchor_rules_match_githubs() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("p.md");
    std::fs::write(
        &page,
        "# Operating it: `fleetmeter status` and `config`\n## Scale: `scripts/bench-fleet`\n## Scale: `scripts/bench-fleet`\n```sh\n# not a heading\n```\n",
    )
    .unwrap();
    let found = anchors(&page);
    assert!(
        found.contains("operating-it-fleetmeter-status-and-config"),
        "{found:?}"
    );
    assert!(found.contains("scale-scriptsbench-fleet"), "{found:?}");
    assert!(found.contains("scale-scriptsbench-fleet-1"), "{found:?}");
    assert!(!found.iter().any(|a| a.contains("not-a-heading")));
}
