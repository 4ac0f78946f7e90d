//! Routing: where a message goes and when it may go there.
//!
//! - [`subject`]: the subject and pattern grammar;
//! - [`table`]: the token trie that resolves a subject to its most specific route;
//! - [`ratelimit`]: GCRA rate limiters (per principal, route and service);
//! - [`queue`]: bounded, prioritized admission with a concurrency limit per route.

pub mod queue;
pub mod ratelimit;
pub mod subject;
pub mod table;

pub use queue::{Admission, AdmissionQueue};
pub use ratelimit::{Gcra, KeyedGcra};
pub use table::RouteTable;
