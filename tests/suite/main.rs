//! medguard's integration suite, one binary organised by topic.

mod bad_input;
mod cache;
mod parity;
mod sandbox;
mod tamper;
