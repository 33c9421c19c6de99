//! ebb: data tiering and change tracking for Linux.
//!
//! Cold file content moves to a cheaper store and comes back the moment any
//! program reads it, through fanotify pre-content events. Start with
//! `DESIGN.md`; each module below is one idea of it.

pub mod bench;
pub mod catalog;
pub mod cli;
pub mod daemon;
pub mod failover;
pub mod hooks;
pub mod hsm;
pub mod journal;
pub mod remote;
pub mod rundir;
pub mod snapshot;
pub mod store;
pub mod sys;
pub mod testing;
pub mod tree;
