use super::*;

fn entry(a: u8) -> Entry {
    Entry {
        action: a,
        reason: None,
        created: 1,
        expires: None,
    }
}

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

#[test]
fn strongest_action_wins_across_lists_and_changes_are_diffs() {
    let mut s = Store::in_memory();
    let (c, _) = s
        .set(
            "a",
            Kind::Block,
            Origin::Cli,
            vec![(p("192.0.2.0/24"), entry(action::OBSERVE))],
        )
        .unwrap();
    assert_eq!(c.len(), 1);
    let ida = s.lists()["a"].id;
    assert_eq!(c[0].verdict, Some(verdict::pack(action::OBSERVE, ida)));
    let (c, _) = s
        .set(
            "b",
            Kind::Block,
            Origin::Import,
            vec![(p("192.0.2.0/24"), entry(action::DROP))],
        )
        .unwrap();
    let idb = s.lists()["b"].id;
    assert_eq!(c[0].verdict, Some(verdict::pack(action::DROP, idb)));
    // Setting the same again changes nothing in the tables.
    let (c, _) = s
        .set(
            "b",
            Kind::Block,
            Origin::Import,
            vec![(p("192.0.2.0/24"), entry(action::DROP))],
        )
        .unwrap();
    assert!(c.is_empty());
    let (c, _, n) = s.remove("b", &[p("192.0.2.0/24")]).unwrap();
    assert_eq!(n, 1);
    assert_eq!(c[0].verdict, Some(verdict::pack(action::OBSERVE, ida)));
}

#[test]
fn rollback_restores_previous_state() {
    let mut s = Store::in_memory();
    s.set(
        "a",
        Kind::Block,
        Origin::Cli,
        vec![(p("192.0.2.1"), entry(action::DROP))],
    )
    .unwrap();
    let (_, undo) = s
        .set(
            "a",
            Kind::Block,
            Origin::Cli,
            vec![
                (p("192.0.2.1"), entry(action::RESET)),
                (p("192.0.2.2"), entry(action::RESET)),
            ],
        )
        .unwrap();
    s.rollback(undo);
    let l = &s.lists()["a"];
    assert_eq!(l.entries.len(), 1);
    assert_eq!(l.entries.get(&p("192.0.2.1")).unwrap().action, action::DROP);
}

#[test]
fn persisted_entries_survive_reopen_with_and_without_compaction() {
    let dir = std::env::temp_dir().join(format!("pf-store-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    {
        let mut s = Store::open(&dir).unwrap();
        let e = Entry {
            reason: Some("spam run".into()),
            expires: Some(now() + 3600),
            ..entry(action::RESET)
        };
        s.set(
            "cli",
            Kind::Block,
            Origin::Cli,
            vec![
                (p("198.51.100.7"), e),
                (p("2001:db8::/48"), entry(action::DROP)),
            ],
        )
        .unwrap();
        s.commit_set("cli", &[p("198.51.100.7"), p("2001:db8::/48")])
            .unwrap();
        let mut big = Entries::default();
        big.insert(p("203.0.113.0/24"), entry(action::DROP));
        s.replace("drop", Kind::Block, Origin::Import, big).unwrap();
        s.commit_list("drop").unwrap();
        s.remove("cli", &[p("2001:db8::/48")]).unwrap();
        s.commit_remove("cli", &[p("2001:db8::/48")]).unwrap();
        // Dropped without compaction: the journal carries the CLI changes.
    }
    let s = Store::open(&dir).unwrap();
    let cli = &s.lists()["cli"];
    assert_eq!(cli.entries.len(), 1);
    let e = cli.entries.get(&p("198.51.100.7")).unwrap();
    assert_eq!(e.action, action::RESET);
    assert_eq!(e.reason.as_deref(), Some("spam run"));
    assert!(e.expires.is_some());
    assert_eq!(s.lists()["drop"].entries.len(), 1);
    drop(s);
    // Reopen after the compaction done by open(): still the same.
    let s = Store::open(&dir).unwrap();
    assert_eq!(s.lists()["cli"].entries.len(), 1);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn expiry_removes_and_reports() {
    let mut s = Store::in_memory();
    let at = now() + 60;
    let e = Entry {
        expires: Some(at),
        ..entry(action::DROP)
    };
    let (c, _) = s
        .set("cli", Kind::Block, Origin::Cli, vec![(p("192.0.2.9"), e)])
        .unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(s.next_expiry(), Some(at));
    assert!(s.expire(at - 1).unwrap().is_empty());
    let c = s.expire(at).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].verdict, None);
    assert!(s.lists()["cli"].entries.is_empty());
}

#[test]
fn a_replaced_list_does_not_come_back_from_the_journal() {
    let dir = std::env::temp_dir().join(format!("pf-store-replace-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    {
        let mut s = Store::open(&dir).unwrap();
        // Journaled first, then the whole list replaced without it.
        s.set(
            "l",
            Kind::Block,
            Origin::Import,
            vec![(p("192.0.2.7"), entry(action::DROP))],
        )
        .unwrap();
        s.commit_set("l", &[p("192.0.2.7")]).unwrap();
        let mut only = Entries::default();
        only.insert(p("192.0.2.8"), entry(action::DROP));
        s.replace("l", Kind::Block, Origin::Import, only).unwrap();
        s.commit_list("l").unwrap();
        // A CLI entry journaled in another list must survive the fold.
        s.set(
            "cli",
            Kind::Block,
            Origin::Cli,
            vec![(p("192.0.2.9"), entry(action::RESET))],
        )
        .unwrap();
        s.commit_set("cli", &[p("192.0.2.9")]).unwrap();
        // Dropped as by kill -9: nothing else written.
    }
    let s = Store::open(&dir).unwrap();
    let l: Vec<_> = s.lists()["l"].entries.keys().collect();
    assert_eq!(l, vec![p("192.0.2.8")]);
    assert!(s.lists()["cli"].entries.contains_key(&p("192.0.2.9")));
    fs::remove_dir_all(&dir).unwrap();
}

/// A fresh state directory under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pf-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A small tmpfs, unmounted and removed on drop (also when the test panics).
struct Tmpfs {
    dir: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test mounts a tmpfs to fill a filesystem and must run as root (euid is {euid})"
        );
        let dir = std::env::temp_dir().join(format!("pf-store-{name}-{}", std::process::id()));
        let _ = std::process::Command::new("umount").arg(&dir).status();
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut t = Self {
            dir,
            mounted: false,
        };
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&t.dir)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mount -t tmpfs at {} failed: {status}",
            t.dir.display()
        );
        t.mounted = true;
        t
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount").arg(&self.dir).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Sets and commits one CLI block entry, rolling back on failure as the daemon does.
fn add(s: &mut Store, prefix: &str, reason: Option<&str>) -> Result<(), StoreError> {
    let e = Entry {
        reason: reason.map(Arc::from),
        ..entry(action::DROP)
    };
    let (_, undo) = s.set("cli", Kind::Block, Origin::Cli, vec![(p(prefix), e)])?;
    let r = s.commit_set("cli", &[p(prefix)]);
    if r.is_err() {
        s.rollback(undo);
    }
    r
}

fn cli_prefixes(s: &Store) -> Vec<Prefix> {
    let mut v: Vec<Prefix> = s.lists()["cli"].entries.keys().collect();
    v.sort_by_key(|p| p.to_string());
    v
}

fn sorted(v: &[&str]) -> Vec<Prefix> {
    let mut v: Vec<Prefix> = v.iter().map(|s| p(s)).collect();
    v.sort_by_key(|p| p.to_string());
    v
}

/// Names in `dir` starting with `prefix`.
fn files_starting(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect()
}

#[test]
fn a_full_disk_refuses_the_change_and_loses_nothing_acknowledged() {
    let fs_ = Tmpfs::mount("enospc", "256k");
    let state = fs_.dir.join("state");
    let mut s = Store::open(&state).unwrap();
    for a in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        add(&mut s, a, None).unwrap();
    }
    let jpath = state.join("journal");
    let before = fs::read(&jpath).unwrap();

    // Fill the filesystem.
    let filler = fs_.dir.join("filler");
    let mut f = File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    let err = loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_data()) {
            break e;
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // Larger than the slack of the journal's last page, so the write is torn part-way:
    // one change of 100 entries with long reasons (each cut to MAX_REASON bytes).
    let long: Arc<str> = Arc::from("x".repeat(entries::MAX_REASON));
    let adds: Vec<(Prefix, Entry)> = (0..100u32)
        .map(|i| {
            let e = Entry {
                reason: Some(long.clone()),
                ..entry(action::DROP)
            };
            (p(&std::net::Ipv4Addr::from(0xc633_6400 + i).to_string()), e)
        })
        .collect();
    let keys: Vec<Prefix> = adds.iter().map(|(k, _)| *k).collect();
    let (_, undo) = s.set("cli", Kind::Block, Origin::Cli, adds).unwrap();
    let e = s.commit_set("cli", &keys).unwrap_err();
    s.rollback(undo);
    assert!(e.to_string().contains("journal"), "{e}");
    let after = fs::read(&jpath).unwrap();
    assert!(
        after == before,
        "the failed append left the journal at {} bytes instead of {}",
        after.len(),
        before.len()
    );
    // A list rewrite fails as well and leaves no temp file taking space.
    let mut big = Entries::default();
    for i in 0..2000u32 {
        big.insert(
            p(&std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string()),
            entry(action::DROP),
        );
    }
    let (_, undo) = s.replace("big", Kind::Block, Origin::Import, big).unwrap();
    assert!(s.commit_list("big").is_err());
    s.rollback(undo);
    assert!(files_starting(&state.join("lists"), ".").is_empty());

    drop(f);
    fs::remove_file(&filler).unwrap();
    add(&mut s, "192.0.2.4", None).unwrap();
    drop(s);

    let s = Store::open(&state).unwrap();
    assert_eq!(
        cli_prefixes(&s),
        sorted(&["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"])
    );
    assert!(s.lists().get("big").is_none_or(|l| l.entries.is_empty()));
    assert!(files_starting(&state, "journal.damaged").is_empty());
    drop(s);
    // And again after the compaction done by open().
    let s = Store::open(&state).unwrap();
    assert_eq!(cli_prefixes(&s).len(), 4);
}

#[test]
fn bytes_of_a_failed_append_left_behind_are_cut_before_the_next() {
    let d = TempDir::new("leftover");
    let mut s = Store::open(&d.0).unwrap();
    add(&mut s, "192.0.2.1", None).unwrap();
    // As if a failed append could not be cut off at the time.
    let jpath = d.0.join("journal");
    let mut j = fs::OpenOptions::new().append(true).open(&jpath).unwrap();
    j.write_all(b"0badf00d\t{\"op\":\"set\",\"li").unwrap();
    add(&mut s, "192.0.2.2", None).unwrap();
    drop(s);
    let s = Store::open(&d.0).unwrap();
    assert_eq!(cli_prefixes(&s), sorted(&["192.0.2.1", "192.0.2.2"]));
    assert!(files_starting(&d.0, "journal.damaged").is_empty());
}

#[test]
fn a_torn_tail_is_dropped_on_open() {
    let d = TempDir::new("torn");
    let jpath = d.0.join("journal");
    for tail in [
        &b"half"[..],
        b"{\"op\":\"set\",\"list\":\"cli\"",
        b"\n\n\x00\x00\x00",
        b"garbage line\nmore garbage",
    ] {
        let _ = fs::remove_dir_all(&d.0);
        let mut s = Store::open(&d.0).unwrap();
        add(&mut s, "192.0.2.1", None).unwrap();
        add(&mut s, "192.0.2.2", None).unwrap();
        drop(s);
        // Half of a real record, then the given tail.
        let good = fs::read(&jpath).unwrap();
        let last = good[..good.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        let half = &good[last..last + (good.len() - last) / 2];
        let mut j = fs::OpenOptions::new().append(true).open(&jpath).unwrap();
        j.write_all(half).unwrap();
        j.write_all(tail).unwrap();
        drop(j);

        let mut s = Store::open(&d.0).unwrap();
        assert_eq!(cli_prefixes(&s), sorted(&["192.0.2.1", "192.0.2.2"]));
        assert!(files_starting(&d.0, "journal.damaged").is_empty());
        add(&mut s, "192.0.2.3", None).unwrap();
        drop(s);
        let s = Store::open(&d.0).unwrap();
        assert_eq!(
            cli_prefixes(&s),
            sorted(&["192.0.2.1", "192.0.2.2", "192.0.2.3"])
        );
    }
}

#[test]
fn a_damaged_middle_record_is_skipped_and_kept() {
    let d = TempDir::new("middle");
    let mut s = Store::open(&d.0).unwrap();
    for a in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        add(&mut s, a, None).unwrap();
    }
    drop(s);
    let jpath = d.0.join("journal");
    let mut text = fs::read(&jpath).unwrap();
    // Flip one byte of the second record's JSON: its checksum no longer matches.
    let second = text.iter().position(|&b| b == b'\n').unwrap() + 1;
    let at = second + 9 + text[second + 9..].iter().position(|&b| b == b'2').unwrap();
    text[at] = b'7';
    fs::write(&jpath, &text).unwrap();

    let s = Store::open(&d.0).unwrap();
    assert_eq!(cli_prefixes(&s), sorted(&["192.0.2.1", "192.0.2.3"]));
    let kept = files_starting(&d.0, "journal.damaged.");
    assert_eq!(kept.len(), 1);
    assert_eq!(fs::read(&kept[0]).unwrap(), text);
    drop(s);
    // Compacted: the next start finds nothing damaged.
    let s = Store::open(&d.0).unwrap();
    assert_eq!(cli_prefixes(&s), sorted(&["192.0.2.1", "192.0.2.3"]));
    assert_eq!(files_starting(&d.0, "journal.damaged.").len(), 1);
}

#[test]
fn old_unframed_journal_lines_still_load() {
    let d = TempDir::new("old");
    fs::create_dir_all(&d.0).unwrap();
    let set = |prefix: &str| Record::Set {
        list: "cli".into(),
        kind: KindName::Block,
        origin: Origin::Cli,
        id: 1,
        prefix: p(prefix),
        action: "reset".into(),
        created: 5,
        expires: None,
        reason: Some("old".into()),
    };
    let mut text = String::new();
    for r in [
        set("192.0.2.1"),
        set("192.0.2.2"),
        Record::Del {
            list: "cli".into(),
            prefix: p("192.0.2.1"),
        },
    ] {
        text += &serde_json::to_string(&r).unwrap();
        text.push('\n');
    }
    fs::write(d.0.join("journal"), &text).unwrap();
    // A framed record after the old ones, as after an upgrade.
    let mut s = Store::open(&d.0).unwrap();
    assert_eq!(cli_prefixes(&s), sorted(&["192.0.2.2"]));
    let e = s.lists()["cli"].entries.get(&p("192.0.2.2")).unwrap();
    assert_eq!(
        (e.action, e.reason.as_deref()),
        (action::RESET, Some("old"))
    );
    add(&mut s, "192.0.2.3", None).unwrap();
    drop(s);
    let s = Store::open(&d.0).unwrap();
    assert_eq!(cli_prefixes(&s), sorted(&["192.0.2.2", "192.0.2.3"]));
}

#[test]
fn old_and_framed_lines_mix_in_one_journal() {
    let d = TempDir::new("mixed");
    fs::create_dir_all(&d.0).unwrap();
    let mut text = serde_json::to_vec(&set("192.0.2.1")).unwrap();
    text.push(b'\n');
    journal::frame(&set("192.0.2.2"), &mut text);
    fs::write(d.0.join("journal"), &text).unwrap();
    let s = Store::open(&d.0).unwrap();
    assert_eq!(cli_prefixes(&s), sorted(&["192.0.2.1", "192.0.2.2"]));
}

#[test]
fn a_damaged_list_file_is_moved_aside_and_the_rest_loads() {
    let d = TempDir::new("badlist");
    let mut s = Store::open(&d.0).unwrap();
    add(&mut s, "192.0.2.1", None).unwrap();
    let mut l = Entries::default();
    l.insert(p("203.0.113.0/24"), entry(action::DROP));
    s.replace("good", Kind::Block, Origin::Import, l).unwrap();
    s.commit_list("good").unwrap();
    drop(s);
    let lists = d.0.join("lists");
    fs::write(
        lists.join("bad.list"),
        "# prefilter list v1 bad nine block import\n203.0.113.9/32\tdrop\t1\t0\t\n",
    )
    .unwrap();

    let s = Store::open(&d.0).unwrap();
    assert!(!s.lists().contains_key("bad"));
    assert_eq!(s.lists()["good"].entries.len(), 1);
    assert_eq!(cli_prefixes(&s), sorted(&["192.0.2.1"]));
    assert!(!lists.join("bad.list").exists());
    assert_eq!(files_starting(&lists, "bad.list.damaged.").len(), 1);
}

#[test]
fn a_record_glued_to_a_torn_one_by_older_versions_is_recovered() {
    let d = TempDir::new("glued");
    fs::create_dir_all(&d.0).unwrap();
    let line = |r: &Record| serde_json::to_string(r).unwrap();
    let torn = line(&set("192.0.2.2"));
    // Issue 6: the failed add left half a record, the next acknowledged one followed it.
    let text = format!(
        "{}\n{}{}\n{}\n",
        line(&set("192.0.2.1")),
        &torn[..torn.len() / 2],
        line(&set("192.0.2.3")),
        line(&set("192.0.2.4")),
    );
    fs::write(d.0.join("journal"), &text).unwrap();
    let s = Store::open(&d.0).unwrap();
    assert_eq!(
        cli_prefixes(&s),
        sorted(&["192.0.2.1", "192.0.2.3", "192.0.2.4"])
    );
    assert_eq!(files_starting(&d.0, "journal.damaged.").len(), 1);

    // The same with framed records.
    let d = TempDir::new("glued-framed");
    fs::create_dir_all(&d.0).unwrap();
    let mut text = Vec::new();
    journal::frame(&set("192.0.2.1"), &mut text);
    let mut torn = Vec::new();
    journal::frame(&set("192.0.2.2"), &mut torn);
    text.extend_from_slice(&torn[..torn.len() / 2]);
    journal::frame(&set("192.0.2.3"), &mut text);
    fs::write(d.0.join("journal"), &text).unwrap();
    let s = Store::open(&d.0).unwrap();
    assert_eq!(cli_prefixes(&s), sorted(&["192.0.2.1", "192.0.2.3"]));
}

/// A journal record setting `prefix` in the cli list, as a running daemon writes it.
fn set(prefix: &str) -> Record {
    Record::Set {
        list: "cli".into(),
        kind: KindName::Block,
        origin: Origin::Cli,
        id: 1,
        prefix: p(prefix),
        action: "drop".into(),
        created: 5,
        expires: None,
        reason: None,
    }
}

/// `n` distinct /24s inside 240.0.0.0/4, starting at `from`.
fn class_e(from: u32, n: u32) -> Vec<Prefix> {
    (from..from + n)
        .map(|i| Prefix::V4 {
            addr: 0xF000_0000 | (i << 8),
            len: 24,
        })
        .collect()
}

fn entries_of(v: &[Prefix], created: u64) -> Entries {
    let mut e = Entries::default();
    for p in v {
        e.insert_parts(*p, action::DROP, Some("feed"), created, None);
    }
    e
}

/// Plans, persists and installs a replacement as the daemon does.
fn replace_planned(s: &mut Store, name: &str, e: Entries) -> Result<Planned, StoreError> {
    let mut planned = s.plan_replace(name, Kind::Block, Origin::Import, e)?;
    s.write_planned(&mut planned)?;
    let out = Planned {
        name: planned.name.clone(),
        list: planned.list.clone(),
        old_len: planned.old_len,
        removed: planned.removed,
        persist: planned.persist.clone(),
        journaled: planned.journaled,
        changes: planned.changes.clone(),
    };
    s.install(planned)?;
    Ok(out)
}

fn sorted_keys(s: &Store, name: &str) -> Vec<Prefix> {
    let mut v: Vec<Prefix> = s.lists()[name].entries.keys().collect();
    v.sort();
    v
}

#[test]
fn a_small_delta_is_journaled_and_replays_to_exactly_the_new_content() {
    let d = TempDir::new("delta");
    let first = class_e(0, 2000);
    // 1% of the lines change: 20 gone, 20 new.
    let mut second: Vec<Prefix> = first[20..].to_vec();
    second.extend(class_e(5000, 20));
    {
        let mut s = Store::open(&d.0).unwrap();
        let p1 = replace_planned(&mut s, "feed", entries_of(&first, 100)).unwrap();
        assert!(p1.persist == Persist::File, "a new list is written whole");
        assert_eq!(p1.changes.len(), 2000);
        let p2 = replace_planned(&mut s, "feed", entries_of(&second, 200)).unwrap();
        assert_eq!(p2.journal_len(), Some(40));
        assert_eq!(p2.removed, 20);
        assert_eq!(p2.changes.len(), 40);
        // Unchanged lines keep their creation time; new ones get theirs.
        let l = &s.lists()["feed"].entries;
        assert_eq!(l.get(&first[100]).unwrap().created, 100);
        assert_eq!(l.get(&second[1999]).unwrap().created, 200);
        assert_eq!(l.get(&first[100]).unwrap().reason.as_deref(), Some("feed"));
        // The list file was not rewritten: the journal holds the delta.
        let file = fs::read_to_string(d.0.join("lists/feed.list")).unwrap();
        assert_eq!(file.lines().count(), 2001);
        // Dropped as by kill -9.
    }
    let s = Store::open(&d.0).unwrap();
    let mut want = second.clone();
    want.sort();
    assert_eq!(sorted_keys(&s, "feed"), want);
    let l = &s.lists()["feed"].entries;
    assert_eq!(l.get(&first[100]).unwrap().created, 100);
    assert_eq!(l.get(&second[1999]).unwrap().created, 200);
}

#[test]
fn a_large_replacement_after_journaled_deltas_does_not_bring_old_records_back() {
    let d = TempDir::new("delta-then-full");
    let first = class_e(0, 2000);
    let second: Vec<Prefix> = first[10..].to_vec();
    let third = class_e(9000, 10);
    {
        let mut s = Store::open(&d.0).unwrap();
        replace_planned(&mut s, "feed", entries_of(&first, 1)).unwrap();
        let p = replace_planned(&mut s, "feed", entries_of(&second, 2)).unwrap();
        assert!(p.journals_delta());
        // 2000 -> 10 entries: 2000 records, still journaled.
        let p = replace_planned(&mut s, "feed", entries_of(&third, 3)).unwrap();
        assert_eq!(p.removed, 1990);
        assert_eq!(p.journal_len(), Some(2000));
    }
    let s = Store::open(&d.0).unwrap();
    let mut want = third.clone();
    want.sort();
    assert_eq!(sorted_keys(&s, "feed"), want);
}

#[test]
fn a_large_list_replaced_by_a_short_one_is_journaled_as_clear_and_sets() {
    let d = TempDir::new("reset");
    let n = (DELTA_RECORDS as u32) + 100;
    let first = class_e(0, n);
    let small = class_e(100_000, 10);
    {
        let mut s = Store::open(&d.0).unwrap();
        replace_planned(&mut s, "feed", entries_of(&first, 1)).unwrap();
        // A journaled delta first, so older records of the list are in the journal.
        let mut second = first.clone();
        second.pop();
        let p = replace_planned(&mut s, "feed", entries_of(&second, 2)).unwrap();
        assert_eq!(p.journal_len(), Some(1));
        let p = replace_planned(&mut s, "feed", entries_of(&small, 3)).unwrap();
        assert_eq!(p.persist, Persist::Reset);
        assert_eq!(p.journal_len(), Some(11));
        assert!(
            s.compact_due(),
            "the file holds 10k entries read for nothing"
        );
        // Dropped as by kill -9 before the fold.
    }
    let mut want = small.clone();
    want.sort();
    let s = Store::open(&d.0).unwrap();
    assert_eq!(sorted_keys(&s, "feed"), want);
    drop(s);
    // Folded by open(): the file now holds the short list.
    let file = fs::read_to_string(d.0.join("lists/feed.list")).unwrap();
    assert_eq!(file.lines().count(), 11);
    let s = Store::open(&d.0).unwrap();
    assert_eq!(sorted_keys(&s, "feed"), want);
}

#[test]
fn a_replacement_too_large_to_journal_rewrites_the_file_and_folds_the_journal() {
    let d = TempDir::new("over-limit");
    let n = (DELTA_RECORDS as u32) + 100;
    let first = class_e(0, n);
    let other = class_e(200_000, n);
    {
        let mut s = Store::open(&d.0).unwrap();
        replace_planned(&mut s, "feed", entries_of(&first, 1)).unwrap();
        let mut second = first.clone();
        second.pop();
        let p = replace_planned(&mut s, "feed", entries_of(&second, 2)).unwrap();
        assert_eq!(p.journal_len(), Some(1));
        let p = replace_planned(&mut s, "feed", entries_of(&other, 3)).unwrap();
        assert_eq!(p.persist, Persist::File);
        assert!(!d.0.join("journal").exists(), "journal folded");
    }
    let s = Store::open(&d.0).unwrap();
    let mut want = other.clone();
    want.sort();
    assert_eq!(sorted_keys(&s, "feed"), want);
}

#[test]
fn a_failed_delta_write_leaves_the_persisted_list_as_it_was() {
    let fs_ = Tmpfs::mount("delta-enospc", "512k");
    let state = fs_.dir.join("state");
    let first = class_e(0, 1000);
    let mut s = Store::open(&state).unwrap();
    replace_planned(&mut s, "feed", entries_of(&first, 1)).unwrap();
    let filler = fs_.dir.join("filler");
    let mut f = File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).and_then(|()| f.sync_data()).is_ok() {}
    // 500 removed, 400 added: a journaled delta, larger than any slack left.
    let mut next: Vec<Prefix> = first[500..].to_vec();
    next.extend(class_e(20_000, 400));
    let mut planned = s
        .plan_replace("feed", Kind::Block, Origin::Import, entries_of(&next, 2))
        .unwrap();
    assert!(planned.journals_delta());
    assert!(s.write_planned(&mut planned).is_err(), "the disk is full");
    drop(planned);
    drop(f);
    fs::remove_file(&filler).unwrap();
    drop(s);
    let s = Store::open(&state).unwrap();
    let mut want = first.clone();
    want.sort();
    assert_eq!(sorted_keys(&s, "feed"), want);
}

#[test]
#[ignore = "measurement: cargo test --release -p prefilter --lib store_scale -- --ignored --nocapture"]
fn store_scale_measure() {
    let n = 1_000_000u32;
    let rss = || -> u64 {
        trim();
        let s = fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = s.split(' ').nth(1).unwrap().parse().unwrap();
        pages * 4096
    };
    let d = TempDir::new("measure");
    let mut s = Store::open(&d.0).unwrap();
    let before = rss();
    let all = class_e(0, n);
    let t = std::time::Instant::now();
    let full = entries_of(&all, 1);
    eprintln!("build 1M: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    replace_planned_quiet(&mut s, "feed", full);
    eprintln!("first import (plan+file+swap): {:?}", t.elapsed());
    drop(all);
    let after = rss();
    eprintln!(
        "store: {} bytes/entry by heap_bytes, {} bytes/entry by RSS",
        s.lists()["feed"].entries.heap_bytes() / n as usize,
        (after - before) / u64::from(n)
    );
    // 1% changed: 10k gone, 10k new.
    let mut delta: Vec<Prefix> = class_e(10_000, n - 10_000);
    delta.extend(class_e(1_000_000, 10_000));
    let e = entries_of(&delta, 2);
    drop(delta);
    for round in 0..2 {
        let t = std::time::Instant::now();
        let mut planned = s
            .plan_replace("feed", Kind::Block, Origin::Import, e.clone())
            .unwrap();
        let plan = t.elapsed();
        let t = std::time::Instant::now();
        s.write_planned(&mut planned).unwrap();
        let persist = t.elapsed();
        let changes = planned.changes.len();
        let t = std::time::Instant::now();
        let undo = s.install(planned).unwrap();
        let swap = t.elapsed();
        let t = std::time::Instant::now();
        drop(undo);
        eprintln!(
            "1% delta round {round}: plan {plan:?} ({changes} changes) persist {persist:?} swap {swap:?} free {:?}",
            t.elapsed()
        );
    }
    let small = entries_of(&class_e(1_040_000, 10), 3);
    let t = std::time::Instant::now();
    let mut planned = s
        .plan_replace("feed", Kind::Block, Origin::Import, small)
        .unwrap();
    let plan = t.elapsed();
    let t = std::time::Instant::now();
    s.write_planned(&mut planned).unwrap();
    let persist = t.elapsed();
    let t = std::time::Instant::now();
    let undo = s.install(planned).unwrap();
    let swap = t.elapsed();
    let t = std::time::Instant::now();
    drop(undo);
    let free = t.elapsed();
    let t = std::time::Instant::now();
    let due = s.compact_due();
    if due {
        s.fold().unwrap();
        s.folded();
    }
    eprintln!(
        "1M -> 10: plan {plan:?} persist {persist:?} swap {swap:?} free {free:?} fold ({due}) {:?}",
        t.elapsed()
    );
}

fn replace_planned_quiet(s: &mut Store, name: &str, e: Entries) {
    let mut planned = s
        .plan_replace(name, Kind::Block, Origin::Import, e)
        .unwrap();
    s.write_planned(&mut planned).unwrap();
    s.install(planned).unwrap();
}

fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[test]
fn a_patch_removes_then_adds_survives_reopen_and_a_tripped_guard_undoes_it() {
    let dir = std::env::temp_dir().join(format!("pf-store-patch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let four = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"];
    {
        let mut s = Store::open(&dir).unwrap();
        let adds = four.iter().map(|a| (p(a), entry(action::DROP))).collect();
        let (c, _, gone, staged) = s
            .patch("feed", Kind::Block, Origin::Import, &[], adds, None)
            .unwrap();
        assert_eq!((c.len(), gone), (4, 0));
        s.commit_patch(staged.frame()).unwrap();
        // .1 goes; .2 is removed and added again with another action; .9 is new; .8 was
        // never listed.
        let removes = [p("192.0.2.1"), p("192.0.2.2"), p("192.0.2.8")];
        let adds = vec![
            (p("192.0.2.2"), entry(action::RESET)),
            (p("192.0.2.9"), entry(action::DROP)),
        ];
        let (c, _, gone, staged) = s
            .patch(
                "feed",
                Kind::Block,
                Origin::Import,
                &removes,
                adds,
                Some(0.5),
            )
            .unwrap();
        assert_eq!(gone, 2);
        let changed: Vec<String> = c.iter().map(|c| c.prefix.to_string()).collect();
        assert_eq!(changed, ["192.0.2.1/32", "192.0.2.2/32", "192.0.2.9/32"]);
        s.commit_patch(staged.frame()).unwrap();
        // Removing three of four trips the guard: nothing changes.
        let before: Vec<Prefix> = s.lists()["feed"].entries.keys().collect();
        let wipe = [p("192.0.2.2"), p("192.0.2.3"), p("192.0.2.4")];
        let err = s
            .patch(
                "feed",
                Kind::Block,
                Origin::Import,
                &wipe,
                Vec::new(),
                Some(0.5),
            )
            .err()
            .expect("the guard trips");
        assert!(err.to_string().contains("would remove 3 of 4"), "{err}");
        let mut after: Vec<Prefix> = s.lists()["feed"].entries.keys().collect();
        let mut before = before;
        before.sort();
        after.sort();
        assert_eq!(after, before);
    }
    let s = Store::open(&dir).unwrap();
    let l = &s.lists()["feed"];
    let mut got: Vec<String> = l.entries.keys().map(|k| k.to_string()).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "192.0.2.2/32",
            "192.0.2.3/32",
            "192.0.2.4/32",
            "192.0.2.9/32"
        ]
    );
    assert_eq!(
        l.entries.get(&p("192.0.2.2")).unwrap().action,
        action::RESET
    );
    drop(s);
    fs::remove_dir_all(&dir).unwrap();
}

/// A list file, put together by hand for speed, reads back as written: hosts, prefixes,
/// IPv6, a reason with a tab and a newline, an expiry. A staged file dropped before its
/// commit leaves no file behind.
#[test]
fn a_list_file_reads_back_every_field_and_an_uncommitted_stage_leaves_nothing() {
    let d = TempDir::new("list-file");
    let later = now() + 3600;
    let mut e = Entries::default();
    e.insert_parts(
        p("192.0.2.7"),
        action::RESET,
        Some("a\ttab\nand more"),
        5,
        None,
    );
    e.insert_parts(p("198.51.100.0/24"), action::DROP, None, 6, Some(later));
    e.insert_parts(p("0.0.0.0/8"), action::DROP, Some("x"), 7, None);
    e.insert_parts(p("2001:db8:1::/48"), action::TEMPFAIL, Some("v6"), 8, None);
    e.insert_parts(p("2001:db8::1"), action::DROP, None, 9, None);
    let want: BTreeMap<String, (u8, Option<String>, u64, Option<u64>)> = e
        .parts()
        .map(|(p, (a, r, c, x))| {
            (
                p.to_string(),
                (a, r.map(|r| r.replace(['\t', '\n'], " ")), c, x),
            )
        })
        .collect();
    {
        let mut s = Store::open(&d.0).unwrap();
        s.replace("feed", Kind::Block, Origin::Import, e).unwrap();
        s.commit_list("feed").unwrap();
        // Staged, never committed: removed as it drops.
        let mut other = Entries::default();
        other.insert_parts(p("203.0.113.9"), action::DROP, None, 1, None);
        let planned = s
            .plan_replace("other", Kind::Block, Origin::Import, other)
            .unwrap();
        let staged = s.stage_planned(&planned).expect("a list file").unwrap();
        assert!(d.0.join("lists/.other.list.tmp").exists());
        drop(staged);
    }
    assert!(!d.0.join("lists/.other.list.tmp").exists());
    assert!(!d.0.join("lists/other.list").exists());
    let s = Store::open(&d.0).unwrap();
    let got: BTreeMap<String, (u8, Option<String>, u64, Option<u64>)> = s.lists()["feed"]
        .entries
        .parts()
        .map(|(p, (a, r, c, x))| (p.to_string(), (a, r.map(str::to_owned), c, x)))
        .collect();
    assert_eq!(got, want);
}

/// Many entries set at once (in the table's order) hold what setting them one by one
/// holds: the last of equal prefixes wins, IPv6 beside IPv4, reasons interned.
#[test]
fn insert_many_equals_one_by_one() {
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut items: Vec<(Prefix, Option<String>)> = (0..200_000)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Few distinct addresses: many repeats, with different reasons.
            let addr = 0xf000_0000 | (x as u32 & 0x0001_ffff);
            let reason = (i % 3 != 0).then(|| format!("r{}", i % 7));
            (Prefix::V4 { addr, len: 32 }, reason)
        })
        .collect();
    items.push((p("2001:db8::/32"), Some("v6".into())));
    items.push((p("2001:db8::/32"), None));
    let mut one = Entries::default();
    for (p, r) in &items {
        one.insert_parts(*p, action::DROP, r.as_deref(), 9, None);
    }
    let mut many = Entries::default();
    many.insert_many(
        items.iter().map(|(p, r)| (*p, r.as_deref())),
        action::DROP,
        9,
    );
    let all = |e: &Entries| -> BTreeMap<Prefix, Entry> { e.iter().collect() };
    assert_eq!(many.len(), one.len());
    assert_eq!(all(&many), all(&one));
}

/// A patch small beside its list is handed over in chunks, with its journal records, and
/// the chunks hold exactly its changes; a patch the shrink guard refuses hands over
/// nothing, even when it is large enough to be chunked.
#[test]
fn a_streamed_patch_hands_over_chunks_and_a_refused_one_nothing() {
    let dir = std::env::temp_dir().join(format!("pf-store-stream-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut s = Store::open(&dir).unwrap();
    let host = |i: u32| Prefix::V4 {
        addr: 0xf000_0000 | i,
        len: 32,
    };
    let adds = (0..50_000)
        .map(|i| (host(i), entry(action::DROP)))
        .collect();
    let (c, _, _, staged) = s
        .patch("feed", Kind::Block, Origin::Import, &[], adds, None)
        .unwrap();
    assert_eq!(c.len(), 50_000);
    s.commit_patch(staged.frame()).unwrap();

    // 1500 out, 1500 in: 3000 changes, chunks of 1024.
    let removes: Vec<Prefix> = (0..1500).map(host).collect();
    let adds = (100_000..101_500)
        .map(|i| (host(i), entry(action::DROP)))
        .collect();
    let (mut chunks, mut framed) = (Vec::new(), Framed::default());
    let (_, gone, rest) = s
        .patch_streamed(
            "feed",
            Kind::Block,
            Origin::Import,
            &removes,
            adds,
            Some(0.5),
            &mut |c, r| {
                chunks.push(c);
                framed.append(r.frame());
            },
        )
        .unwrap();
    framed.append(rest.frame());
    assert_eq!(gone, 1500);
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let mut got: Vec<(Prefix, Option<u16>)> = chunks
        .iter()
        .flatten()
        .map(|c| (c.prefix, c.verdict))
        .collect();
    got.sort();
    let mut want: Vec<(Prefix, Option<u16>)> = removes.iter().map(|p| (*p, None)).collect();
    want.extend((100_000..101_500).map(|i| (host(i), s.effective(&host(i), Kind::Block, now()))));
    want.sort();
    assert_eq!(got, want);
    assert!(want.iter().skip(1500).all(|(_, v)| v.is_some()));
    assert_eq!(framed.records, 3000, "every record handed over once");
    s.commit_patch(framed).unwrap();

    // 1100 removals of 50,000 with a guard of 2 %: large enough to be chunked, refused
    // before a single change is handed over, and the list untouched.
    let before = s.lists()["feed"].entries.len();
    let removes: Vec<Prefix> = (10_000..11_100).map(host).collect();
    let mut handed = 0;
    let err = s
        .patch_streamed(
            "feed",
            Kind::Block,
            Origin::Import,
            &removes,
            Vec::new(),
            Some(0.02),
            &mut |c, _| handed += c.len(),
        )
        .err()
        .expect("the guard trips");
    assert!(
        err.to_string().contains("would remove 1100 of 50000"),
        "{err}"
    );
    assert_eq!(handed, 0);
    assert_eq!(s.lists()["feed"].entries.len(), before);
    assert!(s.lists()["feed"].entries.contains_key(&host(10_500)));
    drop(s);
    let s = Store::open(&dir).unwrap();
    assert_eq!(s.lists()["feed"].entries.len(), 50_000);
    assert!(s.lists()["feed"].entries.contains_key(&host(100_000)));
    assert!(!s.lists()["feed"].entries.contains_key(&host(0)));
    drop(s);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_change_cut_short_at_the_end_of_the_journal_is_dropped_whole() {
    let d = TempDir::new("cut-change");
    let jpath = d.0.join("journal");
    let mut s = Store::open(&d.0).unwrap();
    add(&mut s, "192.0.2.1", None).unwrap();
    let before = fs::metadata(&jpath).unwrap().len() as usize;
    // One change of three entries: one append, opened by its `begin` record.
    let adds: Vec<(Prefix, Entry)> = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        .iter()
        .map(|a| (p(a), entry(action::DROP)))
        .collect();
    let keys: Vec<Prefix> = adds.iter().map(|(k, _)| *k).collect();
    s.set("cli", Kind::Block, Origin::Cli, adds).unwrap();
    s.commit_set("cli", &keys).unwrap();
    drop(s);
    let whole = fs::read(&jpath).unwrap();
    let lines: Vec<usize> = (before..whole.len())
        .filter(|&i| whole[i] == b'\n')
        .collect();
    assert_eq!(lines.len(), 4, "a begin record and three entries");
    // A crash after the begin and two whole records (the third never written), and one
    // inside the third: neither leaves any of the change.
    for cut in [lines[2] + 1, lines[3] - 5] {
        // The journal alone, as the crash left it (a start folds it into the list file).
        let _ = fs::remove_file(d.0.join("lists/cli.list"));
        fs::write(&jpath, &whole[..cut]).unwrap();
        let mut s = Store::open(&d.0).unwrap();
        assert_eq!(cli_prefixes(&s), sorted(&["192.0.2.1"]), "cut at {cut}");
        // What comes after is acknowledged on top of the state without it, and stays.
        add(&mut s, "192.0.2.9", None).unwrap();
        drop(s);
        let s = Store::open(&d.0).unwrap();
        assert_eq!(cli_prefixes(&s), sorted(&["192.0.2.1", "192.0.2.9"]));
        drop(s);
    }
    // The whole change replays.
    let _ = fs::remove_file(d.0.join("lists/cli.list"));
    fs::write(&jpath, &whole).unwrap();
    let s = Store::open(&d.0).unwrap();
    assert_eq!(
        cli_prefixes(&s),
        sorted(&["192.0.2.1", "198.51.100.1", "198.51.100.2", "198.51.100.3"])
    );
}

#[test]
fn damaged_lines_of_a_list_file_cost_those_lines_only() {
    let d = TempDir::new("badlines");
    let mut s = Store::open(&d.0).unwrap();
    let mut l = Entries::default();
    for a in [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
        "198.51.100.5",
    ] {
        l.insert(p(a), entry(action::DROP));
    }
    s.replace("jt", Kind::Block, Origin::Import, l).unwrap();
    s.commit_list("jt").unwrap();
    drop(s);
    let path = d.0.join("lists/jt.list");
    let text = fs::read_to_string(&path).unwrap();
    // The last line cut short (as `truncate -s -10` leaves it), one in the middle garbled.
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[2] = "garbage".into();
    let mut damaged = lines.join("\n");
    damaged.truncate(damaged.len() - 4);
    fs::write(&path, &damaged).unwrap();
    let survivors = lines.len() - 1 - 2;

    let s = Store::open(&d.0).unwrap();
    assert_eq!(s.lists()["jt"].entries.len(), survivors);
    assert_eq!(
        files_starting(&d.0.join("lists"), "jt.list.damaged.").len(),
        1
    );
    drop(s);
    // Written anew from what was read: the next start finds no damage.
    let s = Store::open(&d.0).unwrap();
    assert_eq!(s.lists()["jt"].entries.len(), survivors);
    assert_eq!(
        files_starting(&d.0.join("lists"), "jt.list.damaged.").len(),
        1
    );
}

/// The tables keep an expired entry until the sweep removes it, however late the sweep
/// runs: a sweep seconds late, and a replacement that deletes an entry already expired but
/// not swept (a CrowdSec decision deleted after its duration), must both report the
/// removal, or the tables go on dropping a sender the store no longer lists.
#[test]
fn an_expired_entry_is_removed_from_the_tables_however_late() {
    let mut s = Store::in_memory();
    let past = now() - 30;
    let e = Entry {
        expires: Some(past),
        ..entry(action::DROP)
    };
    s.set("cli", Kind::Block, Origin::Cli, vec![(p("192.0.2.9"), e)])
        .unwrap();
    let c = s.expire(now()).unwrap();
    assert_eq!(c.len(), 1, "swept 30 s late, still a change: {c:?}");
    assert!(c[0].old.is_some() && c[0].verdict.is_none(), "{c:?}");

    let mut feed = Entries::default();
    feed.insert_parts(
        p("192.0.2.10"),
        action::DROP,
        Some("cs"),
        past - 60,
        Some(past),
    );
    feed.insert_parts(p("192.0.2.11"), action::DROP, Some("cs"), past - 60, None);
    s.set(
        "cs",
        Kind::Block,
        Origin::Feed,
        feed.iter().map(|(q, e)| (q, e.clone())).collect(),
    )
    .unwrap();
    // The decision deleted after its expiry, before the sweep: the delta drops it.
    let mut next = Entries::default();
    next.insert_parts(p("192.0.2.11"), action::DROP, Some("cs"), past - 60, None);
    let planned = s
        .plan_replace("cs", Kind::Block, Origin::Feed, next)
        .unwrap();
    let gone: Vec<_> = planned
        .changes
        .iter()
        .filter(|c| c.prefix == p("192.0.2.10"))
        .collect();
    assert_eq!(gone.len(), 1, "the tables are told: {:?}", planned.changes);
    assert!(gone[0].verdict.is_none());
}

/// A feed may not take over a list the CLI or an import filled: its next fetch would
/// replace what the admin put there.
#[test]
fn a_feed_may_not_write_a_cli_or_import_list() {
    let mut s = Store::in_memory();
    s.set(
        "cli",
        Kind::Block,
        Origin::Cli,
        vec![(p("192.0.2.9"), entry(action::DROP))],
    )
    .unwrap();
    s.set(
        "imp",
        Kind::Block,
        Origin::Import,
        vec![(p("192.0.2.8"), entry(action::DROP))],
    )
    .unwrap();
    for name in ["cli", "imp"] {
        let e = s
            .plan_replace(name, Kind::Block, Origin::Feed, Entries::default())
            .err()
            .unwrap_or_else(|| panic!("a feed took list {name} over"));
        assert!(
            e.to_string().contains("a feed may not take it over"),
            "{name}: {e}"
        );
    }
}

/// What still blocks inside prefixes no entry covers whole, for many prefixes in one walk:
/// up to `max_each` per prefix, longer entries only, not observe, not expired, not an
/// allow list's.
#[test]
fn blocked_inside_names_entries_within_each_prefix() {
    let mut s = Store::in_memory();
    let hosts: Vec<(Prefix, Entry)> = (1..=5)
        .map(|i| (p(&format!("203.0.113.{i}")), entry(action::DROP)))
        .chain([
            (p("198.51.100.7"), entry(action::OBSERVE)),
            (
                p("198.51.100.8"),
                Entry {
                    expires: Some(50),
                    ..entry(action::DROP)
                },
            ),
            (p("2001:db8:1::/48"), entry(action::RESET)),
        ])
        .collect();
    s.set("feed", Kind::Block, Origin::Feed, hosts).unwrap();
    s.set(
        "ok",
        Kind::Allow,
        Origin::Cli,
        vec![(p("192.0.2.9"), entry(action::ALLOW))],
    )
    .unwrap();
    let asked = [
        p("203.0.113.0/24"),
        p("203.0.0.0/16"),
        p("198.51.100.0/24"),
        p("192.0.2.0/24"),
        p("2001:db8::/32"),
    ];
    let got = s.blocked_inside(&asked, 100, 3);
    let shown = |q: &str| -> Vec<String> {
        got[&p(q)]
            .iter()
            .map(|(e, list)| format!("{e} {list}"))
            .collect()
    };
    assert_eq!(shown("203.0.113.0/24").len(), 3, "capped at max_each");
    assert_eq!(shown("203.0.0.0/16").len(), 3);
    assert!(shown("203.0.113.0/24").iter().all(|e| e.ends_with(" feed")));
    assert!(shown("198.51.100.0/24").is_empty(), "observe and expired");
    assert!(shown("192.0.2.0/24").is_empty(), "an allow entry");
    assert_eq!(shown("2001:db8::/32"), ["2001:db8:1::/48 feed"]);
}
