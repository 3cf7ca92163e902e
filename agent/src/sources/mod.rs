//! Where entries come from besides the CLI: list formats today (plain, Spamhaus DROP,
//! rbldnsd data); reputation feeds and DNSBL results plug in here next. A source turns
//! text or answers into `(prefix, reason)` entries and bad-line reports; the daemon's
//! engine applies them to the store, guarded by `policy::guard`.

pub mod feeds;
pub mod formats;
