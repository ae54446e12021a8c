//! Debian's headless Chromium, for the API's page: its DOM after load with the browser's log
//! (console messages appear as `:CONSOLE` lines), and screenshots for people to look at.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// `$CHROMIUM`, else `/usr/bin/chromium` (scripts/test installs it).
pub fn binary() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} not found: scripts/test installs Debian's chromium (or set CHROMIUM)",
        path.display()
    );
    path
}

fn headless(extra: &[String], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(binary())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(output.status.success(), "chromium failed: {output:?}");
    output
}

/// The DOM after load, and Chromium's log.
pub fn load(url: &str) -> (String, String) {
    let output = headless(&["--dump-dom".to_owned()], url);
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A PNG of the page at `width` × `height` CSS pixels, written to `path`.
pub fn screenshot(url: &str, path: &Path, width: u32, height: u32) {
    headless(
        &[
            format!("--screenshot={}", path.display()),
            format!("--window-size={width},{height}"),
        ],
        url,
    );
    let written = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    assert!(written > 0, "no screenshot at {}", path.display());
}
