//! Which core of another member a message for one of its stages goes to. A core that
//! listens on its own subject (`listen`) names it as the NATS reply subject of what it
//! publishes; the receiving member notes it under the sender's name and the stage it sent
//! as (`r` of a request, `f` of a reply), and its next message to that stage of that member
//! goes to the core's subject instead of the member's. So a reply reaches the asking core
//! without the other member's `stage-nats` thread, and once a stage has replied, the next
//! request to it reaches its core the same way.
//!
//! A hint is only ever a shortcut: any core of a member delivers any message for it
//! (`node::peers::deliver_decoded`), so a stale core number costs one hand-over between its
//! cores, never a wrong delivery. What a hint must not outlive is the core's subscription:
//! a message from that stage that names no core (its core stopped listening) removes it.

use std::collections::HashMap;
use std::sync::Mutex;

use super::MEMBER_SUBJECT_PREFIX;

/// The most (member, stage) pairs remembered; past it the table starts over (the next
/// message from each pair teaches it again).
pub const MAX_HINTS: usize = 4096;

#[derive(Default)]
pub(super) struct Hints {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// Member, then stage id: the core subject. Two levels so that a look-up borrows both
    /// names instead of building a key.
    subjects: HashMap<String, HashMap<String, String>>,
    count: usize,
}

/// A core's own subject: its member's subject, then the core's number.
pub fn core_subject(member: &str, core: usize) -> String {
    format!("{MEMBER_SUBJECT_PREFIX}{member}.{core}")
}

/// Whether `reply` is the subject of one of `member`'s cores (and nothing else: a reply
/// subject is the sender's word, taken only in this shape).
fn of_member(member: &str, reply: &str) -> bool {
    reply
        .strip_prefix(MEMBER_SUBJECT_PREFIX)
        .and_then(|rest| rest.strip_prefix(member))
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|core| !core.is_empty() && core.bytes().all(|b| b.is_ascii_digit()))
}

impl Hints {
    /// A message from stage `stage` of `member` arrived, naming the core subject `reply`
    /// (`None`: it named none).
    pub(super) fn heard(&self, member: &str, stage: &str, reply: Option<&str>) {
        let mut table = self.table.lock().unwrap();
        let table = &mut *table;
        match reply.filter(|r| of_member(member, r)) {
            Some(reply) => {
                let known = table.subjects.get(member).and_then(|m| m.get(stage));
                if known.is_some_and(|s| s == reply) {
                    return;
                }
                if known.is_none() && table.count >= MAX_HINTS {
                    table.subjects.clear();
                    table.count = 0;
                }
                let stages = table.subjects.entry(member.to_string()).or_default();
                if stages
                    .insert(stage.to_string(), reply.to_string())
                    .is_none()
                {
                    table.count += 1;
                }
            }
            None if table.count == 0 => {}
            None => {
                if let Some(stages) = table.subjects.get_mut(member) {
                    if stages.remove(stage).is_some() {
                        table.count -= 1;
                    }
                }
            }
        }
    }

    /// Where a message for stage `stage` of `member` goes: its core's subject if one is
    /// known, else the member's.
    pub(super) fn subject(&self, member: &str, stage: &str) -> String {
        let table = self.table.lock().unwrap();
        match table.subjects.get(member).and_then(|m| m.get(stage)) {
            Some(subject) => subject.clone(),
            None => format!("{MEMBER_SUBJECT_PREFIX}{member}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_named_by_a_message_gets_the_next_one_for_its_stage() {
        let h = Hints::default();
        assert_eq!(h.subject("b.1", "game"), "stage.m.b.1");
        h.heard("b.1", "game", Some("stage.m.b.1.3"));
        assert_eq!(h.subject("b.1", "game"), "stage.m.b.1.3");
        assert_eq!(h.subject("b.1", "lobby"), "stage.m.b.1", "another stage");
        assert_eq!(h.subject("b.2", "game"), "stage.m.b.2", "another member");
        // The core stopped listening: its messages name no core any more.
        h.heard("b.1", "game", None);
        assert_eq!(h.subject("b.1", "game"), "stage.m.b.1");
    }

    #[test]
    fn only_the_senders_own_core_subjects_are_taken() {
        let h = Hints::default();
        for bad in [
            "stage.m.c.1.3",
            "stage.m.b.1",
            "stage.m.b.1.",
            "stage.m.b.1.x",
            "stage.m.b.12",
            "elsewhere",
            "stage.m.b.1.3.4",
        ] {
            h.heard("b.1", "game", Some(bad));
            assert_eq!(h.subject("b.1", "game"), "stage.m.b.1", "{bad}");
        }
    }

    #[test]
    fn the_table_is_bounded() {
        let h = Hints::default();
        for i in 0..MAX_HINTS + 1 {
            h.heard("b.1", &format!("s{i}"), Some("stage.m.b.1.0"));
        }
        assert!(h.table.lock().unwrap().count <= MAX_HINTS);
        assert_eq!(h.subject("b.1", &format!("s{MAX_HINTS}")), "stage.m.b.1.0");
    }
}
