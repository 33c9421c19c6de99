//! Kernel facts about fanotify that ebb is built on, each checked on a
//! loop-mounted XFS so a kernel that behaves differently fails here.

use super::*;
use crate::testing::LoopFs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
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

/// Allow `first`, then every further event the group raises, until
/// `reader` is done (a read raises an event per `read(2)`); its result.
/// Fails after 10 s.
fn allow_until_done<T>(
    group: &Group,
    buf: &mut EventBuffer,
    first: Vec<Event>,
    reader: std::thread::JoinHandle<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending = first;
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "the reader never finished");
        for ev in pending.drain(..) {
            group
                .respond(ev.id().expect("id"), Response::Allow)
                .expect("allow");
        }
        pending = group.read_events(buf).expect("read");
        std::thread::sleep(Duration::from_millis(1));
    }
    reader.join().expect("join")
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
    // Event fds are read-only; the fill goes through a quiet writable fd
    // opened by handle on the tree's own mount.
    let file = ev.file.as_ref().expect("event fd");
    let (handle, _) = crate::sys::handle::handle_of(file.as_fd()).expect("handle");
    let root = std::fs::File::open(fs.path()).expect("root");
    let writable = open_by_handle_nonotify(root.as_fd(), &handle, libc::O_RDWR).expect("reopen");
    let payload = vec![0xabu8; 4096];
    nix::sys::uio::pwrite(&writable, &payload, 8192).expect("pwrite through a quiet fd");
    group
        .respond(ev.id().expect("id"), Response::Allow)
        .expect("allow");
    assert_eq!(reader.join().expect("reader"), payload);
    // The write through the quiet fd raised no event of its own.
    assert!(next_events(&group, &mut buf, Duration::from_millis(200)).is_empty());
}

/// Why event fds are read-only: with `O_RDWR` the kernel cannot open the
/// fd of an event on a running binary (`ETXTBSY`), so `read` fails and the
/// event is gone (the reader is denied by the kernel); read-only, it
/// arrives.
#[test]
fn an_event_whose_fd_cannot_be_opened_fails_the_read() {
    crate::require_root!();
    let fs = LoopFs::xfs(300).expect("loop xfs");
    let path = fs.path().join("sleep");
    std::fs::copy("/usr/bin/sleep", &path).expect("copy a binary");
    let mut running = std::process::Command::new(&path)
        .arg("600")
        .spawn()
        .expect("run it");
    for (flags, arrives) in [(libc::O_RDWR, false), (libc::O_RDONLY, true)] {
        let group = Group::new(InitOptions {
            event_open_flags: flags | libc::O_LARGEFILE,
            ..InitOptions::pre_content()
        })
        .expect("group");
        group
            .mark_filesystem(fs.path(), FAN_PRE_ACCESS)
            .expect("fs mark");
        let reader_path = path.clone();
        let reader = std::thread::spawn(move || std::fs::read(reader_path));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = EventBuffer::default();
        let got = loop {
            match group.read_events(&mut buf) {
                Ok(events) if events.is_empty() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                other => break other,
            }
        };
        match got {
            Ok(events) if arrives => {
                allow_until_done(&group, &mut buf, events, reader).expect("read allowed");
            }
            Err(e) if !arrives => {
                assert_eq!(e.raw_os_error(), Some(libc::ETXTBSY), "{e}");
                reader
                    .join()
                    .expect("join")
                    .expect_err("denied by the kernel");
            }
            other => panic!("flags {flags:#x}: {other:?}"),
        }
    }
    let _ = running.kill();
    let _ = running.wait();
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
    allow_until_done(&group, &mut buf, events, reader).expect("read");
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

/// A truncate is checked by path, not by fd: one through a nonotify fd
/// still raises `FAN_PRE_ACCESS` (a daemon must never cut a file on the
/// thread that answers its events), and the range is where the new end
/// falls (the page holding it), not what is cut off.
#[test]
fn a_truncate_raises_pre_access_even_through_a_nonotify_fd() {
    crate::require_root!();
    let (fs, group) = fixture();
    let path = fs.path().join("f");
    std::fs::write(&path, vec![1u8; 100_000]).expect("create");
    let plain = std::fs::File::open(&path).expect("open");
    let quiet =
        std::fs::File::from(reopen_nonotify(plain.as_fd(), libc::O_RDWR).expect("nonotify fd"));
    drop(plain);
    group
        .mark_filesystem(fs.path(), FAN_PRE_ACCESS)
        .expect("fs mark");
    let cutter = std::thread::spawn(move || quiet.set_len(50_000));
    let mut buf = EventBuffer::default();
    let events = next_events(&group, &mut buf, Duration::from_secs(5));
    let event = events.first().expect("the truncate raised an event");
    assert_eq!(
        event.range.map(|(off, _)| off),
        Some(49_152),
        "{:?}",
        event.range
    );
    assert!(!cutter.is_finished(), "the truncate waits for the answer");
    let id = event.id().expect("a permission event");
    group.respond(id, Response::Allow).expect("allow");
    cutter.join().expect("join").expect("truncate");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 50_000);
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
        report: 0,
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

/// What the change journal will stand on: a notification group reporting
/// directory handles and names (`FAN_REPORT_DFID_NAME_TARGET`) sees a
/// create, a rename (old and new name in one `FAN_RENAME` event) and a
/// delete, each naming the directory by the handle `name_to_handle_at`
/// gives for it.
#[test]
fn dfid_name_events_name_the_directory_and_the_entry() {
    use crate::sys::handle::handle_of;
    crate::require_root!();
    let fs = LoopFs::xfs(300).expect("loop xfs");
    let dir = fs.path().join("d");
    std::fs::create_dir(&dir).expect("mkdir");
    let (dir_handle, _) =
        handle_of(std::fs::File::open(&dir).expect("open dir").as_fd()).expect("handle");
    let group = Group::new(InitOptions::names()).expect("fid group");
    group
        .mark_filesystem(
            fs.path(),
            libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_RENAME | libc::FAN_ONDIR,
        )
        .expect("fs mark");
    std::fs::write(dir.join("a"), b"x").expect("create");
    std::fs::rename(dir.join("a"), dir.join("b")).expect("rename");
    std::fs::remove_file(dir.join("b")).expect("delete");

    // Read in place, as the journal reads them.
    let mut buf = EventBuffer::default();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 3 && Instant::now() < deadline {
        seen.extend(group.read_named(&mut buf).expect("read").map(|e| Record {
            mask: e.mask,
            fd: -1,
            pid: 0,
            range: None,
            fids: e.fids().map(FidInfo::from).collect(),
        }));
        std::thread::sleep(Duration::from_millis(5));
    }
    let name_in = |ev: &Record, kind: u8| {
        ev.fids
            .iter()
            .find(|f| f.kind == kind)
            .map(|f| (f.handle.clone(), f.name.clone().unwrap_or_default()))
    };
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].mask & libc::FAN_CREATE, libc::FAN_CREATE);
    assert_eq!(
        name_in(&seen[0], INFO_DFID_NAME),
        Some((dir_handle.clone(), b"a".to_vec()))
    );
    assert_eq!(seen[1].mask & libc::FAN_RENAME, libc::FAN_RENAME);
    assert_eq!(
        name_in(&seen[1], INFO_OLD_DFID_NAME),
        Some((dir_handle.clone(), b"a".to_vec()))
    );
    assert_eq!(
        name_in(&seen[1], INFO_NEW_DFID_NAME),
        Some((dir_handle.clone(), b"b".to_vec()))
    );
    assert_eq!(seen[2].mask & libc::FAN_DELETE, libc::FAN_DELETE);
    assert_eq!(
        name_in(&seen[2], INFO_DFID_NAME),
        Some((dir_handle, b"b".to_vec()))
    );
    assert!(
        seen[0].fids.iter().any(|f| f.kind == INFO_FID),
        "the created file's own handle comes too (FAN_REPORT_TARGET_FID)"
    );
}

#[test]
fn fid_records_that_do_not_hold_together_are_dropped_not_misread() {
    // A DFID_NAME record claiming a 64-byte handle in a 28-byte record.
    let mut rec = vec![INFO_DFID_NAME, 0, 28, 0];
    rec.extend_from_slice(&[0; 8]); // fsid
    rec.extend_from_slice(&64u32.to_ne_bytes());
    rec.extend_from_slice(&1i32.to_ne_bytes());
    rec.extend_from_slice(b"abcdefgh");
    assert!(parse_fids(&rec).is_empty());
    // The same record with an honest 4-byte handle and a name.
    let mut ok = vec![INFO_DFID_NAME, 0, 28, 0];
    ok.extend_from_slice(&[0; 8]);
    ok.extend_from_slice(&4u32.to_ne_bytes());
    ok.extend_from_slice(&1i32.to_ne_bytes());
    ok.extend_from_slice(b"\x01\x02\x03\x04ab\0\0");
    let fids = parse_fids(&ok);
    assert_eq!(fids.len(), 1);
    assert_eq!(fids[0].handle.bytes, vec![1, 2, 3, 4]);
    assert_eq!(fids[0].name.as_deref(), Some(&b"ab"[..]));
}

#[test]
fn events_read_in_place_are_the_events_parsed() {
    // Two events (a DFID_NAME record each), then a truncated third.
    let event = |mask: u64, name: &[u8]| {
        let mut fid = vec![INFO_DFID_NAME, 0, 0, 0];
        fid.extend_from_slice(&[7; 8]);
        fid.extend_from_slice(&4u32.to_ne_bytes());
        fid.extend_from_slice(&1i32.to_ne_bytes());
        fid.extend_from_slice(&[1, 2, 3, 4]);
        fid.extend_from_slice(name);
        fid.push(0);
        fid.resize(fid.len().next_multiple_of(4), 0);
        fid[2] = fid.len() as u8;
        let mut ev = ((METADATA_LEN + fid.len()) as u32).to_ne_bytes().to_vec();
        ev.extend_from_slice(&[FANOTIFY_METADATA_VERSION, 0]);
        ev.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        ev.extend_from_slice(&mask.to_ne_bytes());
        ev.extend_from_slice(&(-1i32).to_ne_bytes());
        ev.extend_from_slice(&42i32.to_ne_bytes());
        ev.extend_from_slice(&fid);
        ev
    };
    let mut buf = event(libc::FAN_CREATE, b"a");
    buf.extend(event(libc::FAN_DELETE | libc::FAN_ONDIR, b"bc"));
    let whole = buf.len();
    buf.extend(&event(libc::FAN_MODIFY, b"d")[..30]);

    let (parsed, bad) = parse_records(&buf);
    assert_eq!(bad, Some("fanotify event length out of bounds"));
    let in_place: Vec<(u64, Vec<FidInfo>)> = NamedEvents(RawRecords::new(&buf))
        .map(|e| (e.mask, e.fids().map(FidInfo::from).collect()))
        .collect();
    let owned: Vec<(u64, Vec<FidInfo>)> = parsed.into_iter().map(|r| (r.mask, r.fids)).collect();
    assert_eq!(in_place, owned);
    assert_eq!(in_place.len(), 2);
    assert_eq!(in_place[1].1[0].name.as_deref(), Some(&b"bc"[..]));
    let first = NamedEvents(RawRecords::new(&buf[..whole]))
        .next()
        .expect("an event");
    let fid = first.fid(INFO_DFID_NAME).expect("its fid");
    assert_eq!(
        (fid.handle.handle_type, fid.handle.bytes, fid.name),
        (1, &[1u8, 2, 3, 4][..], Some(&b"a"[..]))
    );
    assert!(first.fid(INFO_FID).is_none());
}

#[test]
fn fdinfo_lines_of_filesystem_marks_parse() {
    let m =
        SbMark::parse("fanotify sdev:700009 mflags:0 mask:100002 ignored_mask:0").expect("parses");
    assert_eq!((m.sdev, m.mask, m.ignored_mask), (0x700009, 0x100002, 0));
    assert!(m.is_of(libc::makedev(7, 9)));
    assert!(!m.is_of(libc::makedev(7, 10)));
    for bad in [
        "fanotify ino:83 sdev:700009 mflags:0 mask:2 ignored_mask:0 fhandle-bytes:8",
        "fanotify sdev:zz mflags:0 mask:2 ignored_mask:0",
        "fanotify sdev:700009 mflags:0 mask:2",
        "pos:\t0",
    ] {
        assert_eq!(SbMark::parse(bad), None, "{bad}");
    }
}

/// An armed filesystem (an ignore-only mark) raises nothing, lists its
/// mark in fdinfo, and a real mark added later covers a file opened while
/// it was only armed. After an unmount the kernel drops the mark: fdinfo no
/// longer lists it.
#[test]
fn arming_then_marking_covers_files_opened_in_between_and_unmount_drops_it() {
    crate::require_root!();
    let (fs, group) = fixture();
    let path = fs.path().join("early");
    std::fs::write(&path, b"early").expect("create");
    group
        .arm_filesystem(fs.path(), FAN_PRE_ACCESS)
        .expect("arm");
    let st_dev = std::fs::metadata(fs.path()).expect("stat").dev();
    let marks = group.filesystem_marks().expect("fdinfo");
    assert!(
        marks
            .iter()
            .any(|m| m.is_of(st_dev) && m.ignored_mask & FAN_PRE_ACCESS != 0),
        "{marks:?}"
    );
    let mut early = std::fs::File::open(&path).expect("opened while armed");
    let mut buf = EventBuffer::default();
    let mut s = String::new();
    early.read_to_string(&mut s).expect("read while armed");
    assert!(next_events(&group, &mut buf, Duration::from_millis(100)).is_empty());
    group
        .mark_filesystem(fs.path(), FAN_PRE_ACCESS)
        .expect("mark");
    group
        .disarm_filesystem(fs.path(), FAN_PRE_ACCESS)
        .expect("disarm");
    early.seek(SeekFrom::Start(0)).expect("seek");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        early.read_to_string(&mut s).map(|_| s)
    });
    let first = next_events(&group, &mut buf, Duration::from_secs(10));
    assert!(
        !first.is_empty(),
        "the early fd raises an event once marked"
    );
    assert_eq!(
        allow_until_done(&group, &mut buf, first, reader).expect("read"),
        "early"
    );

    fs.remount().expect("unmount and mount again");
    assert!(
        !group
            .filesystem_marks()
            .expect("fdinfo")
            .iter()
            .any(|m| m.is_of(st_dev)),
        "the mark of an unmounted filesystem is gone"
    );
}

/// An open with `O_TRUNC` cuts the file after `FAN_OPEN_PERM` and raises no
/// `FAN_PRE_ACCESS` a daemon could hold it on (unlike `truncate(2)`): a fill
/// racing it must not be able to grow the file back (see
/// `sys::file::write_within_size`).
#[test]
fn an_open_with_o_trunc_raises_no_pre_access() {
    crate::require_root!();
    let (fs, group) = fixture();
    let path = fs.path().join("f");
    std::fs::write(&path, vec![1u8; 100_000]).expect("create");
    group
        .mark_filesystem(fs.path(), FAN_PRE_ACCESS | FAN_OPEN_PERM)
        .expect("fs mark");
    let cutter = std::thread::spawn({
        let path = path.clone();
        move || {
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .map(drop)
        }
    });
    let mut buf = EventBuffer::default();
    let mut masks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cutter.is_finished() {
        assert!(Instant::now() < deadline, "the open never finished");
        for event in group.read_events(&mut buf).expect("read") {
            masks.push(event.mask);
            if event.mask & FAN_OPEN_PERM != 0 {
                let len = std::fs::metadata(&path).expect("stat").len();
                assert_eq!(len, 100_000, "not cut yet when its open is asked for");
            }
            group
                .respond(event.id().expect("a permission event"), Response::Allow)
                .expect("allow");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cutter.join().expect("join").expect("open");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 0);
    assert_eq!(masks, vec![FAN_OPEN_PERM], "the only event");
}

/// What a read of a group returns is parsed without trusting it (the
/// in-flight table hands a dead daemon's buffer to its successor):
/// property tests, `PROPTEST_CASES` cases each (256 by default; see
/// SECURITY.md for the long run).
mod untrusted {
    use super::super::{
        parse_records, FidInfo, Record, SbMark, FANOTIFY_METADATA_VERSION,
        FAN_EVENT_INFO_TYPE_RANGE, INFO_DFID, INFO_DFID_NAME, INFO_FID, INFO_NEW_DFID_NAME,
        INFO_OLD_DFID_NAME, METADATA_LEN,
    };
    use crate::sys::handle::FileHandle;
    use proptest::prelude::*;

    /// An info record: kind, a u8 flag, its u16 length, then `body`.
    fn info(kind: u8, body: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + body.len()).expect("small record");
        let mut out = vec![kind, 0];
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    /// `r` laid out as the kernel lays out an event.
    fn event(r: &Record) -> Vec<u8> {
        let mut infos = Vec::new();
        if let Some((offset, count)) = r.range {
            let mut body = vec![0u8; 4];
            body.extend_from_slice(&offset.to_le_bytes());
            body.extend_from_slice(&count.to_le_bytes());
            infos.extend(info(FAN_EVENT_INFO_TYPE_RANGE, &body));
        }
        for f in &r.fids {
            let mut body = Vec::new();
            body.extend_from_slice(&f.fsid[0].to_le_bytes());
            body.extend_from_slice(&f.fsid[1].to_le_bytes());
            body.extend_from_slice(&(f.handle.bytes.len() as u32).to_le_bytes());
            body.extend_from_slice(&f.handle.handle_type.to_le_bytes());
            body.extend_from_slice(&f.handle.bytes);
            if let Some(name) = &f.name {
                body.extend_from_slice(name);
                body.push(0);
            }
            infos.extend(info(f.kind, &body));
        }
        let len = (METADATA_LEN + infos.len()) as u32;
        let mut out = len.to_le_bytes().to_vec();
        out.extend_from_slice(&[FANOTIFY_METADATA_VERSION, 0]);
        out.extend_from_slice(&(METADATA_LEN as u16).to_le_bytes());
        out.extend_from_slice(&r.mask.to_le_bytes());
        out.extend_from_slice(&r.fd.to_le_bytes());
        out.extend_from_slice(&r.pid.to_le_bytes());
        out.extend(infos);
        out
    }

    fn fid() -> impl Strategy<Value = FidInfo> {
        let kinds = prop::sample::select(vec![
            INFO_FID,
            INFO_DFID,
            INFO_DFID_NAME,
            INFO_OLD_DFID_NAME,
            INFO_NEW_DFID_NAME,
        ]);
        let name = prop::collection::vec(1u8..=255, 1..40);
        (
            kinds,
            any::<[i32; 2]>(),
            any::<i32>(),
            prop::collection::vec(any::<u8>(), 0..64),
            name,
        )
            .prop_map(|(kind, fsid, handle_type, bytes, name)| FidInfo {
                kind,
                fsid,
                handle: FileHandle { handle_type, bytes },
                name: matches!(
                    kind,
                    INFO_DFID_NAME | INFO_OLD_DFID_NAME | INFO_NEW_DFID_NAME
                )
                .then_some(name),
            })
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            any::<u64>(),
            any::<i32>(),
            any::<i32>(),
            any::<Option<(u64, u64)>>(),
            prop::collection::vec(fid(), 0..3),
        )
            .prop_map(|(mask, fd, pid, range, fids)| Record {
                mask,
                fd,
                pid,
                range,
                fids,
            })
    }

    proptest! {
        /// Any bytes: no panic, never more events than could fit.
        #[test]
        fn untrusted_event_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            let (records, _) = parse_records(&bytes);
            prop_assert!(records.len() <= bytes.len() / METADATA_LEN);
        }

        /// Well-formed events come back exactly; cut anywhere, the whole
        /// events before the cut come back and the cut one is named bad.
        #[test]
        fn untrusted_events_cut_anywhere_give_the_whole_ones(
            records in prop::collection::vec(record(), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let laid: Vec<Vec<u8>> = records.iter().map(event).collect();
            let all = laid.concat();
            prop_assert_eq!(parse_records(&all), (records.clone(), None));
            let cut = cut.index(all.len());
            let (got, bad) = parse_records(&all[..cut]);
            let whole = laid
                .iter()
                .scan(0, |end, e| { *end += e.len(); Some(*end) })
                .take_while(|&end| end <= cut)
                .count();
            prop_assert_eq!(&got[..], &records[..whole]);
            // Cut inside an event: bad, unless too little of it is left to
            // say its length (a short tail is taken for the buffer's end).
            let start: usize = laid[..whole].iter().map(Vec::len).sum();
            prop_assert_eq!(bad.is_some(), cut > start && cut - start >= METADATA_LEN);
        }

        /// One byte of well-formed events changed: no panic.
        #[test]
        fn untrusted_events_with_a_byte_changed_never_panic(
            records in prop::collection::vec(record(), 1..6),
            at in any::<prop::sample::Index>(),
            to in any::<u8>(),
        ) {
            let mut all: Vec<u8> = records.iter().flat_map(event).collect();
            let at = at.index(all.len());
            all[at] = to;
            let (got, _) = parse_records(&all);
            prop_assert!(got.len() <= records.len().max(all.len() / METADATA_LEN));
        }

        /// A mark line of `/proc/self/fdinfo`: no panic on any text.
        #[test]
        fn untrusted_fdinfo_lines_never_panic(line in ".{0,120}") {
            let _ = SbMark::parse(&line);
            let line = format!("fanotify sdev:{line}");
            let _ = SbMark::parse(&line);
        }
    }
}
