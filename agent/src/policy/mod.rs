//! The policy layer: what a rule is (its kind and action), the prefixes rules apply to, the
//! store that holds every entry with its journal, and the guards that protect lists from
//! bad input. Everything above it (sources, the data plane, the daemon, the CLI) speaks
//! these types; only the packed codes the XDP maps hold live in `prefilter-common`.

pub mod guard;
pub mod prefix;
pub mod store;

use std::{fmt, str::FromStr};

use prefilter_common::action;
use serde::{Deserialize, Serialize};

pub use self::{prefix::Prefix, store::Origin};

/// A rule kind; an allow beats every block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Block,
    Allow,
}

impl Kind {
    /// The name shown to users.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Block => "block",
            Kind::Allow => "allow",
        }
    }
}

/// What a block entry does to a matching SYN: one type for the config, the CLI, the API, the
/// store's journal and `check`. [`Action::code`] is the packed form the maps hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// XDP_DROP: the sender times out and retries later.
    Drop,
    /// TCP RST from XDP: the sender sees a refused connection.
    Reset,
    /// Passed; the proxy answers `421 4.7.0`.
    Tempfail,
    /// Passed; the proxy answers `554 5.7.1`.
    Reject,
    /// Passed, counted as would-drop: shadow mode for a new list.
    Observe,
}

/// Why a text is not an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?}: use drop, reset, tempfail, reject or observe")]
pub struct UnknownAction(pub String);

impl Action {
    /// Every action, strongest first.
    pub const ALL: [Action; 5] = [
        Action::Drop,
        Action::Reset,
        Action::Reject,
        Action::Tempfail,
        Action::Observe,
    ];

    /// The `prefilter_common::action` code stored in the maps.
    pub fn code(self) -> u8 {
        match self {
            Action::Drop => action::DROP,
            Action::Reset => action::RESET,
            Action::Tempfail => action::TEMPFAIL,
            Action::Reject => action::REJECT,
            Action::Observe => action::OBSERVE,
        }
    }

    /// The action of a map code, if it is a block action.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.code() == code)
    }

    /// The name as the config, the CLI and the journal spell it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::Reset => "reset",
            Action::Tempfail => "tempfail",
            Action::Reject => "reject",
            Action::Observe => "observe",
        }
    }

    /// How strongly it refuses: when lists hold the same prefix, the strongest wins.
    pub fn severity(self) -> u8 {
        match self {
            Action::Drop => 5,
            Action::Reset => 4,
            Action::Reject => 3,
            Action::Tempfail => 2,
            Action::Observe => 1,
        }
    }

    /// What the XDP program returns for a SYN it matches.
    pub fn xdp_action(self) -> &'static str {
        match self {
            Action::Drop => "XDP_DROP",
            Action::Reset => "XDP_TX (TCP RST)",
            Action::Tempfail | Action::Reject | Action::Observe => "XDP_PASS",
        }
    }
}

impl FromStr for Action {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownAction(s.to_owned()))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_round_trips_through_every_representation() {
        for a in Action::ALL {
            assert_eq!(a.name().parse::<Action>(), Ok(a));
            assert_eq!(Action::from_code(a.code()), Some(a));
            assert_eq!(action::NAMES[a.code() as usize], a.name());
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{}\"", a.name()));
        }
        assert!("allow".parse::<Action>().is_err());
        assert_eq!(Action::from_code(action::ALLOW), None);
    }

    #[test]
    fn strongest_first() {
        let sev: Vec<u8> = Action::ALL.iter().map(|a| a.severity()).collect();
        assert!(sev.windows(2).all(|w| w[0] > w[1]));
    }
}
