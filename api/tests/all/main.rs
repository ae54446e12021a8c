//! The API's integration tests, in one binary: the API against a real Redis ([`api`]) and
//! its page in a real browser ([`page_in_browser`]), with shared fixtures in [`support`].

mod support;

mod api;
mod page_in_browser;
