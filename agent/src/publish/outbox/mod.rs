//! The outbox in ZooKeeper: the rounds the leader committed and the API has not accepted
//! yet, the rounds the API refused, and the ledger that bounds both.
//!
//! # Layout (under the fleet's root)
//! - `/results/{n:020}`: a committed round waiting for the API. Its data is the round's JSON
//!   ([`Round`](crate::wire::Round)) when that is at most [`INLINE_MAX`] bytes. A larger round
//!   (thousands of devices with long ids) is written in parts of at most [`PART_SIZE`] bytes
//!   to `/parts/{n:020}-{term}/{k:04}` before the commit, and the entry holds
//!   `{"parts": {"dir", "count", "bytes", "sha256"}}`, so every request, the commit
//!   included, stays far below ZooKeeper's 1 MB packet limit (`jute.maxbuffer`). `term` is
//!   the leader's election node: two leaders racing over a round never share parts.
//! - `/rejected/{n:020}`: a round the API refused (a 4xx that retrying cannot fix), or an
//!   entry that cannot be read, with the status, the API's answer and the time
//!   ([`Rejected`]). Only an operator takes it out: `fleetmeter outbox resend|discard`.
//! - `/outbox`: the ledger, `{"rounds": R, "bytes": B}` ([`ledger`]).
//!
//! # Files
//! - [`codec`]: the three forms of an entry's data (plain, marked, parts) and the rejection
//!   record, pure.
//! - `names`: where entries live, listed in round order.
//! - [`mark`]: the commit-mark key, derived from the fleet's secret.
//! - [`ledger`]: the bound, read, recounted and updated in the same transactions.
//! - [`store`]: entries in ZooKeeper: write, read back, remove, set aside.
//! - [`admin`]: the operator's commands: list, resend, discard.
//! - [`gc`]: parts no entry refers to.

mod admin;
pub mod codec;
mod gc;
pub mod ledger;
pub mod mark;
mod names;
mod store;

pub use admin::{Handled, Listed, ResendError, discard, list, resend};
pub use codec::{Encoded, INLINE_MAX, PART_SIZE, PartsRef, Rejected, encode};
pub use gc::collect_garbage;
pub use ledger::{Ledger, LedgerState};
pub use mark::MarkKey;
pub use names::{rejected_path, result_path};
pub use store::{
    LoadError, Loaded, delete_parts, entry_ops, highest_round, load, reject, rejected_rounds,
    remove_delivered, write_parts,
};
