//! The changes an applier batch holds, and the per-key collapse of repeated changes (the
//! last write wins, combined by [`Op::then`]).

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Val {
    Null,
    Text(String),
    Unchanged,
}

impl Val {
    pub(super) fn bind(&self) -> Option<String> {
        match self {
            Val::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// A key as text, one value per key column (`None`: NULL).
pub type Key = Vec<Option<String>>;

/// One change to apply to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    /// Full row (every replicated column), text values.
    Upsert(Vec<Option<String>>),
    /// Delete the key.
    Delete,
    /// Copy the key's current row from the original (its event's transaction is `xid`).
    ReRead,
    /// Set the sent columns (`Unchanged` = not sent); if the key is absent, re-read it.
    Partial(Vec<Val>),
}

impl Op {
    /// `self` followed by `later` on the same key, as one op (last write wins; a partial
    /// update is merged into what it updates).
    pub(super) fn then(self, later: Op) -> Op {
        match (self, later) {
            (Op::Upsert(mut row), Op::Partial(sent)) => {
                for (slot, v) in row.iter_mut().zip(sent) {
                    if v != Val::Unchanged {
                        *slot = v.bind();
                    }
                }
                Op::Upsert(row)
            }
            (Op::Partial(mut row), Op::Partial(sent)) => {
                for (slot, v) in row.iter_mut().zip(sent) {
                    if v != Val::Unchanged {
                        *slot = v;
                    }
                }
                Op::Partial(row)
            }
            (_, later) => later,
        }
    }
}

/// Changes buffered for the current shadow transaction: in source order, or collapsed to the
/// last write per key when nothing but the primary key constrains the shadow (then the order
/// of writes to different keys cannot matter).
pub(super) struct Pending {
    pub(super) ordered: Vec<(Key, Op)>,
    pub(super) collapsed: HashMap<Key, Op>,
    pub(super) xids: Vec<u32>,
}

impl Pending {
    pub(super) fn new() -> Pending {
        Pending {
            ordered: Vec::new(),
            collapsed: HashMap::new(),
            xids: Vec::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ordered.len() + self.collapsed.len()
    }

    pub(super) fn push(&mut self, collapse: bool, key: Key, op: Op, xid: u32) {
        if matches!(op, Op::ReRead | Op::Partial(_)) && self.xids.last() != Some(&xid) {
            self.xids.push(xid);
        }
        if collapse {
            let merged = match self.collapsed.remove(&key) {
                Some(prev) => prev.then(op),
                None => op,
            };
            self.collapsed.insert(key, merged);
        } else {
            self.ordered.push((key, op));
        }
    }
}
