//! The shrink guard: an update that would empty a list or remove most of it is far more
//! often a truncated download or a wrong file than a real change, so it is refused unless
//! forced. Used by `block import --replace` (and later by feeds).

/// Largest share of a list's entries one update may remove without `--force`.
pub const DEFAULT_MAX_SHRINK: f64 = 0.5;

/// An update refused because it would shrink a list too much.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "import would remove {removed} of {current} entries of list {list}{empty} ({share}, limit {limit}): nothing changed; add --force to apply it anyway",
    empty = if *.incoming == 0 { " and leave it empty" } else { "" },
    share = percent(*.removed as f64 / *.current as f64),
    limit = percent(*.max_share),
)]
pub struct ShrinkRefused {
    /// The list's name.
    pub list: String,
    /// Entries it has now.
    pub current: usize,
    /// Entries it would have after the update.
    pub incoming: usize,
    /// Current entries the update would drop.
    pub removed: usize,
    /// The limit applied, as a share of `current` (0.5 is half).
    pub max_share: f64,
}

/// Whether replacing list `list`'s `current` entries by `incoming` ones, which drops
/// `removed` of the current ones, may go ahead. It may not when it would leave a non-empty
/// list empty, or drop more than `max_share` of its entries (exactly `max_share` is fine).
///
/// `removed` counts current entries missing from the new content, not `current - incoming`:
/// a list swapped for as many different entries shrinks by nothing yet loses them all.
/// An empty list can always be filled.
pub fn check_replace(
    list: &str,
    current: usize,
    incoming: usize,
    removed: usize,
    max_share: f64,
) -> Result<(), ShrinkRefused> {
    let removed = removed.min(current);
    // Multiplying rather than dividing keeps "exactly at the limit" exact for whole counts.
    let too_many = removed as f64 > max_share * current as f64;
    let emptied = current > 0 && incoming == 0;
    if too_many || emptied {
        return Err(ShrinkRefused {
            list: list.to_owned(),
            current,
            incoming,
            removed,
            max_share,
        });
    }
    Ok(())
}

/// A share as a percentage: whole numbers plainly, others rounded up to a tenth so that
/// a share just over the limit never reads as equal to it.
fn percent(share: f64) -> String {
    let p = share * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{}%", p.round())
    } else {
        // Up, so that a share just past the limit never reads as the limit; short of 100 %,
        // since 1499990 of 1500000 is not the whole list.
        format!("{:.1}%", ((p * 10.0).ceil() / 10.0).min(99.9))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        name: &'static str,
        current: usize,
        incoming: usize,
        removed: usize,
        max_share: f64,
        expected: Result<(), &'static str>,
    }

    #[test]
    fn check_replace_edges() {
        #[rustfmt::skip]
        let cases = [
            Case { name: "empty list, empty update", current: 0, incoming: 0, removed: 0, max_share: 0.5, expected: Ok(()) },
            Case { name: "empty list filled", current: 0, incoming: 1000, removed: 0, max_share: 0.0, expected: Ok(()) },
            Case { name: "nothing removed", current: 10, incoming: 12, removed: 0, max_share: 0.0, expected: Ok(()) },
            Case { name: "exactly at the limit", current: 10, incoming: 5, removed: 5, max_share: 0.5, expected: Ok(()) },
            Case { name: "exactly at an inexact limit", current: 10, incoming: 7, removed: 3, max_share: 0.3, expected: Ok(()) },
            Case {
                name: "one over the limit", current: 10, incoming: 4, removed: 6, max_share: 0.5,
                expected: Err("import would remove 6 of 10 entries of list sbl (60%, limit 50%): nothing changed; add --force to apply it anyway"),
            },
            Case {
                name: "the example",
                current: 10, incoming: 1, removed: 9, max_share: DEFAULT_MAX_SHRINK,
                expected: Err("import would remove 9 of 10 entries of list sbl (90%, limit 50%): nothing changed; add --force to apply it anyway"),
            },
            Case {
                // Same size, all different: nothing shrinks, yet every entry goes.
                name: "swapped for other entries", current: 4, incoming: 4, removed: 4, max_share: 0.5,
                expected: Err("import would remove 4 of 4 entries of list sbl (100%, limit 50%): nothing changed; add --force to apply it anyway"),
            },
            Case {
                name: "a share just over the limit reads as over it", current: 2001, incoming: 1000, removed: 1001, max_share: 0.5,
                expected: Err("import would remove 1001 of 2001 entries of list sbl (50.1%, limit 50%): nothing changed; add --force to apply it anyway"),
            },
            Case {
                name: "empty update on a non-empty list", current: 1, incoming: 0, removed: 1, max_share: 0.5,
                expected: Err("import would remove 1 of 1 entries of list sbl and leave it empty (100%, limit 50%): nothing changed; add --force to apply it anyway"),
            },
            Case {
                // A limit of 100% still does not let a list be emptied.
                name: "empty update under a 100% limit", current: 3, incoming: 0, removed: 3, max_share: 1.0,
                expected: Err("import would remove 3 of 3 entries of list sbl and leave it empty (100%, limit 100%): nothing changed; add --force to apply it anyway"),
            },
            Case { name: "everything replaced under a 100% limit", current: 3, incoming: 2, removed: 3, max_share: 1.0, expected: Ok(()) },
            Case {
                // Rounded up, yet short of the whole list.
                name: "almost everything", current: 1_500_000, incoming: 10, removed: 1_499_990, max_share: 0.5,
                expected: Err("import would remove 1499990 of 1500000 entries of list sbl (99.9%, limit 50%): nothing changed; add --force to apply it anyway"),
            },
        ];
        for c in cases {
            let got = check_replace("sbl", c.current, c.incoming, c.removed, c.max_share)
                .map_err(|e| e.to_string());
            assert_eq!(got, c.expected.map_err(str::to_owned), "{}", c.name);
        }
    }
}
