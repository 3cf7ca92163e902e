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
    assert_eq!(l.entries[&p("192.0.2.1")].action, action::DROP);
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
        let mut big = HashMap::new();
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
    let e = &cli.entries[&p("198.51.100.7")];
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
        let mut only = HashMap::new();
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
    let l: Vec<_> = s.lists()["l"].entries.keys().copied().collect();
    assert_eq!(l, vec![p("192.0.2.8")]);
    assert!(s.lists()["cli"].entries.contains_key(&p("192.0.2.9")));
    fs::remove_dir_all(&dir).unwrap();
}
