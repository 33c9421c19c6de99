//! The only module of ebb that may use `unsafe`: thin, safe wrappers over the
//! Linux interfaces ebb is built on.
//!
//! Every wrapper takes borrowed fds (`BorrowedFd`/`AsFd`) and hands back
//! `OwnedFd`, so ownership is visible in the types. Nothing above this module
//! sees a raw fd except [`fanotify::EventId`], the number the kernel matches a
//! permission response by (it is data, not a handle: see that type).
//!
//! Tests here pin down the kernel facts the design depends on (see
//! `DESIGN.md`, "Facts verified"), so a kernel that behaves differently is
//! caught by `cargo test`, not by a user reading zeros.
#![allow(unsafe_code)]

pub mod extents;
pub mod fanotify;
pub mod fdtable;
pub mod file;
pub mod handle;
pub mod shm;
pub mod socket;
pub mod sqlite;
pub mod systemd;
