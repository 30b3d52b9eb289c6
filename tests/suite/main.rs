//! medguard's integration suite, one binary organised by topic.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod bad_input;
mod cache;
mod dicom;
mod drift;
mod guard;
mod pacs;
mod parity;
mod sandbox;
mod server;
mod snapshot;
mod tamper;
