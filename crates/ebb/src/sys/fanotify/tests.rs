//! Kernel facts about fanotify that ebb is built on, each checked on a
//! loop-mounted XFS so a kernel that behaves differently fails here.

use super::*;
use crate::testing::LoopFs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Wait up to `timeout` for at least one event.
fn next_events(group: &Group, buf: &mut EventBuffer, timeout: Duration) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    loop {
        let events = group.read_events(buf).expect("read events");
        if !events.is_empty() || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn fixture() -> (LoopFs, Group) {
    let fs = LoopFs::xfs(300).expect("loop xfs");
    let group = Group::new(InitOptions::pre_content()).expect("pre-content group");
    (fs, group)
}

#[test]
fn pre_access_reports_range_and_fill_through_event_fd_reaches_reader() {
    crate::require_root!();
    let (fs, group) = fixture();
    let path = fs.path().join("stub");
    std::fs::write(&path, vec![0u8; 1 << 20]).expect("create");
    group
        .mark_filesystem(fs.path(), FAN_PRE_ACCESS)
        .expect("fs mark");

    let reader_path = path.clone();
    let reader = std::thread::spawn(move || {
        let f = std::fs::File::open(reader_path).expect("open");
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, 8192).expect("read");
        buf
    });
    let mut buf = EventBuffer::default();
    let events = next_events(&group, &mut buf, Duration::from_secs(10));
    let ev = events.into_iter().next().expect("a pre-access event");
    assert_eq!(ev.mask & FAN_PRE_ACCESS, FAN_PRE_ACCESS);
    assert!(ev.is_permission());
    let (off, count) = ev.range.expect("range info record");
    assert!(
        off <= 8192 && off + count >= 8192 + 4096,
        "range {off}+{count}"
    );
    let file = ev.file.as_ref().expect("event fd");
    let payload = vec![0xabu8; 4096];
    nix::sys::uio::pwrite(file, &payload, 8192).expect("pwrite through event fd");
    group
        .respond(ev.id().expect("id"), Response::Allow)
        .expect("allow");
    assert_eq!(reader.join().expect("reader"), payload);
    // The write through the event fd raised no event of its own.
    assert!(next_events(&group, &mut buf, Duration::from_millis(200)).is_empty());
}

#[test]
fn deny_with_errno_fails_the_read_with_that_errno() {
    crate::require_root!();
    let (fs, group) = fixture();
    let path = fs.path().join("f");
    std::fs::write(&path, b"hello").expect("create");
    group
        .mark_filesystem(fs.path(), FAN_PRE_ACCESS)
        .expect("fs mark");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::fs::File::open(path)
            .expect("open")
            .read_to_string(&mut s)
            .map(|_| s)
    });
    let mut buf = EventBuffer::default();
    let ev = next_events(&group, &mut buf, Duration::from_secs(10))
        .into_iter()
        .next()
        .expect("event");
    group
        .respond(ev.id().expect("id"), Response::DenyErrno(libc::EIO))
        .expect("deny");
    let err = reader.join().expect("join").expect_err("read must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
}

#[test]
fn evictable_ignore_mark_silences_a_file_and_removal_restores_events() {
    crate::require_root!();
    let (fs, group) = fixture();
    let path = fs.path().join("f");
    std::fs::write(&path, vec![1u8; 8192]).expect("create");
    group
        .mark_filesystem(fs.path(), FAN_PRE_ACCESS)
        .expect("fs mark");
    let mut f = std::fs::File::open(&path).expect("open");
    group
        .add_ignore(f.as_fd(), FAN_PRE_ACCESS, true)
        .expect("ignore mark");
    let mut data = Vec::new();
    f.read_to_end(&mut data).expect("read without any event");
    let mut buf = EventBuffer::default();
    assert!(next_events(&group, &mut buf, Duration::from_millis(100)).is_empty());

    group
        .remove_ignore(f.as_fd(), FAN_PRE_ACCESS)
        .expect("remove ignore");
    group
        .remove_ignore(f.as_fd(), FAN_PRE_ACCESS)
        .expect("removing twice is fine");
    f.seek(SeekFrom::Start(0)).expect("seek");
    let reader = std::thread::spawn(move || f.read_to_end(&mut Vec::new()).map(|_| ()));
    let events = next_events(&group, &mut buf, Duration::from_secs(10));
    assert!(!events.is_empty(), "reads raise events again");
    for ev in &events {
        group
            .respond(ev.id().expect("id"), Response::Allow)
            .expect("allow");
    }
    // Answer any further events the read raises until it is done.
    while !reader.is_finished() {
        for ev in group.read_events(&mut buf).expect("read") {
            group
                .respond(ev.id().expect("id"), Response::Allow)
                .expect("allow");
        }
    }
    reader.join().expect("join").expect("read");
}

#[test]
fn nonotify_fd_writes_raise_no_events() {
    crate::require_root!();
    let (fs, group) = fixture();
    let path = fs.path().join("f");
    std::fs::write(&path, vec![0u8; 4096]).expect("create");
    let plain = std::fs::File::open(&path).expect("open");
    let quiet = reopen_nonotify(plain.as_fd(), libc::O_RDWR).expect("nonotify fd");
    drop(plain);
    group
        .mark_filesystem(fs.path(), FAN_PRE_ACCESS)
        .expect("fs mark");
    nix::sys::uio::pwrite(&quiet, b"quiet", 0).expect("pwrite");
    let mut buf = EventBuffer::default();
    assert!(next_events(&group, &mut buf, Duration::from_millis(200)).is_empty());
    drop(group); // a plain read would now wait on it
    assert_eq!(&std::fs::read(&path).expect("read")[..5], b"quiet");
}

#[test]
fn open_perm_holds_an_open_until_the_group_goes_away() {
    crate::require_root!();
    let fs = LoopFs::xfs(300).expect("loop xfs");
    let path = fs.path().join("f");
    std::fs::write(&path, b"x").expect("create");
    let f = std::fs::File::open(&path).expect("open");
    let hold = Group::new(InitOptions {
        class: Class::Content,
        nonblock: true,
        unlimited_queue: true,
        event_open_flags: libc::O_RDONLY,
    })
    .expect("content group");
    hold.mark_inode(f.as_fd(), FAN_OPEN_PERM)
        .expect("open-perm mark");
    let opener = std::thread::spawn(move || std::fs::read(path));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!opener.is_finished(), "the open waits for the group");
    drop(hold);
    assert_eq!(opener.join().expect("join").expect("read"), b"x");
}
