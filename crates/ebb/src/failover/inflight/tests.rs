use super::*;
use crate::sys::fanotify::{EventId, InitOptions, Response, FAN_PRE_ACCESS};
use crate::sys::handle::handle_of;
use crate::testing::LoopFs;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

fn read_until_some(table: &mut InflightTable, group: &Group) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = table.read(group).expect("read").expect("a free slot");
        if !events.is_empty() || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The heart of failover: a daemon reads an event and dies (its fd closes
/// with it); from the table alone, another holder of the group answers the
/// event by its number and the blocked reader goes on.
#[test]
fn an_event_read_by_a_dead_reader_is_answered_from_the_table() {
    crate::require_root!();
    let fs = LoopFs::xfs(300).expect("loop xfs");
    let path = fs.path().join("stub");
    std::fs::write(&path, vec![7u8; 65536]).expect("create");
    let group = Group::new(InitOptions::pre_content()).expect("group");
    group
        .mark_filesystem(fs.path(), FAN_PRE_ACCESS)
        .expect("mark");
    let reader_path = path.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        std::fs::File::open(reader_path)
            .expect("open")
            .read_exact_at(&mut buf, 8192)
            .map(|_| buf[0])
    });

    let mut table = InflightTable::create().expect("table");
    let events = read_until_some(&mut table, &group);
    let ev = &events[0];
    let id = ev.id().expect("permission event");
    let (handle, _) = handle_of(ev.file.as_ref().expect("fd").as_fd()).expect("handle");
    table.record_handle(id.0, &handle);
    assert_eq!(table.unanswered(), 1);

    // The daemon "dies": its event fds close, its mapping goes.
    let kept = table.fd().try_clone_to_owned().expect("keeper's copy");
    drop(events);
    drop(table);

    let (mut table, pending) =
        InflightTable::open(SharedMemory::map(kept).expect("map")).expect("open");
    assert_eq!(pending.len(), 1, "{pending:?}");
    let p = &pending[0];
    assert_eq!(p.fd, id.0);
    assert_eq!(p.handle.as_ref(), Some(&handle));
    let (off, count) = p.range.expect("range");
    assert!(off <= 8192 && off + count >= 8192 + 4096);
    assert!(!reader.is_finished(), "still waiting for an answer");
    group
        .respond(EventId(p.fd), Response::Allow)
        .expect("answer by number");
    table.answered(p.fd);
    assert_eq!(reader.join().expect("join").expect("read"), 7);
    assert_eq!(table.unanswered(), 0);

    // Nothing is pending any more, and the slot is free for reuse.
    let kept = table.fd().try_clone_to_owned().expect("dup");
    let (_, pending) = InflightTable::open(SharedMemory::map(kept).expect("map")).expect("reopen");
    assert!(pending.is_empty(), "{pending:?}");
}

#[test]
fn a_table_of_another_layout_is_refused_clearly() {
    let table = InflightTable::create().expect("table");
    let mut mem = SharedMemory::map(table.fd().try_clone_to_owned().expect("dup")).expect("map");
    put_u32(mem.bytes_mut(), 8, 99);
    let err = InflightTable::open(mem).err().expect("refused");
    assert!(format!("{err:#}").contains("version 99"), "{err:#}");

    let junk = SharedMemory::create("junk", 4096).expect("junk");
    let err = InflightTable::open(junk).err().expect("refused");
    assert!(format!("{err:#}").contains("not one ebb wrote"), "{err:#}");
}

#[test]
fn a_read_cut_short_by_a_crash_is_recovered_from_the_buffer() {
    // A slot left "being read into" with events in its buffer: what a
    // daemon killed inside read(2) leaves.
    let table = InflightTable::create().expect("table");
    let mut mem = SharedMemory::map(table.fd().try_clone_to_owned().expect("dup")).expect("map");
    let base = slot_base(3);
    let b = mem.bytes_mut();
    put_u32(b, base, READING);
    let ev = base + BUF_AT;
    put_u32(b, ev, 24 + 24); // event_len
    b[ev + 4] = 3; // metadata version
    b[ev + 6..ev + 8].copy_from_slice(&24u16.to_ne_bytes());
    b[ev + 8..ev + 16].copy_from_slice(&FAN_PRE_ACCESS.to_ne_bytes());
    put_u32(b, ev + 16, 42); // fd
    put_u32(b, ev + 20, 1234); // pid
    b[ev + 24] = 6; // range record
    b[ev + 26..ev + 28].copy_from_slice(&24u16.to_ne_bytes());
    b[ev + 32..ev + 40].copy_from_slice(&4096u64.to_ne_bytes());
    b[ev + 40..ev + 48].copy_from_slice(&8192u64.to_ne_bytes());
    drop(table);
    let (mut table, pending) = InflightTable::open(mem).expect("open");
    assert_eq!(
        pending,
        vec![Pending {
            fd: 42,
            pid: 1234,
            mask: FAN_PRE_ACCESS,
            range: Some((4096, 8192)),
            handle: None
        }]
    );
    table.answered(42);
    let (_, again) = InflightTable::open(
        SharedMemory::map(table.fd().try_clone_to_owned().expect("dup")).expect("map"),
    )
    .expect("reopen");
    assert!(again.is_empty());
}
