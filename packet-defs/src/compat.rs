//! Compatibility check: which changes from an old schema to a new one break peers still
//! running the old one (old clients talking to a new server). The rule (README.md,
//! "Versions and compatibility"):
//!
//! * always breaking: removing a message, struct, enum, field or enum value; changing a type
//!   (also `u8` -> `u16`), a message's direction or reply; tightening a bound; making an
//!   optional field required or adding a required field; changing or dropping a default;
//!   lowering `version`;
//! * breaking for what clients read (types used by a `from server` message, or by no message):
//!   loosening a bound, adding an enum value, making a required field optional (`?`) — an old
//!   client would refuse what the new server may now send;
//! * compatible: adding an optional field (an old server drops it as an unknown field, an
//!   old client too), adding a message, struct or enum, loosening what only the server reads.

use crate::error::Pos;
use crate::schema::*;

/// One breaking change, with where to look in the new schema (the old one for removals).
#[derive(Debug, Clone, PartialEq)]
pub struct Breaking {
    pub pos: Pos,
    /// `true` when `pos` points into the old schema (the thing is gone from the new one).
    pub in_old: bool,
    pub what: String,
}

/// Every breaking change from `old` to `new`, in the old schema's declaration order.
pub fn check(old: &Schema, new: &Schema) -> Vec<Breaking> {
    let mut c = Cmp {
        old,
        new,
        out: Vec::new(),
    };
    if new.version < old.version {
        c.push(
            Pos { line: 1, col: 1 },
            false,
            format!("version went down from {} to {}", old.version, new.version),
        );
    }
    for item in &old.items {
        let Some(now) = new.item(item.name()) else {
            let kind = match item {
                Item::Enum(_) => "enum",
                Item::Struct(s) if s.is_message() => "message",
                Item::Struct(_) => "struct",
            };
            c.push(
                item.pos(),
                true,
                format!("{kind} {} was removed", item.name()),
            );
            continue;
        };
        match (item, now) {
            (Item::Enum(a), Item::Enum(b)) => c.enumeration(a, b),
            (Item::Struct(a), Item::Struct(b)) => c.structure(a, b),
            _ => c.push(
                now.pos(),
                false,
                format!("{} changed between enum and struct/message", item.name()),
            ),
        }
    }
    c.out
}

struct Cmp<'a> {
    old: &'a Schema,
    new: &'a Schema,
    out: Vec<Breaking>,
}

impl Cmp<'_> {
    fn push(&mut self, pos: Pos, in_old: bool, what: String) {
        self.out.push(Breaking { pos, in_old, what });
    }

    /// Whether clients read values of the type `name`: it is used (directly or nested) by a
    /// `from server` message in either schema, or by no message at all.
    fn clients_read(&self, name: &str) -> bool {
        let mut any_use = false;
        for schema in [self.old, self.new] {
            for s in schema.structs() {
                let Some(from) = s.direction() else { continue };
                if s.name == name || uses(schema, s, name, &mut Vec::new()) {
                    any_use = true;
                    if from == Direction::Server {
                        return true;
                    }
                }
            }
        }
        !any_use
    }

    fn enumeration(&mut self, a: &EnumDef, b: &EnumDef) {
        for v in &a.values {
            if !b.values.contains(v) {
                self.push(
                    b.pos,
                    false,
                    format!("enum {}: value `{v}` was removed", a.name),
                );
            }
        }
        if self.clients_read(&a.name) {
            for v in &b.values {
                if !a.values.contains(v) {
                    self.push(b.pos, false, format!("enum {}: value `{v}` was added, and clients read {} (old clients refuse it)", a.name, a.name));
                }
            }
        }
    }

    fn structure(&mut self, a: &StructDef, b: &StructDef) {
        match (&a.kind, &b.kind) {
            (StructKind::Struct, StructKind::Struct) => {}
            (
                StructKind::Message {
                    from: fa,
                    reply: ra,
                },
                StructKind::Message {
                    from: fb,
                    reply: rb,
                },
            ) => {
                if fa != fb {
                    self.push(
                        b.pos,
                        false,
                        format!(
                            "message {}: direction changed from {} to {}",
                            a.name,
                            fa.word(),
                            fb.word()
                        ),
                    );
                }
                if ra != rb {
                    let show = |r: &Option<String>| r.clone().unwrap_or_else(|| "none".into());
                    self.push(
                        b.pos,
                        false,
                        format!(
                            "message {}: reply changed from {} to {}",
                            a.name,
                            show(ra),
                            show(rb)
                        ),
                    );
                }
            }
            _ => {
                self.push(
                    b.pos,
                    false,
                    format!("{} changed between struct and message", a.name),
                );
                return;
            }
        }
        let clients = self.clients_read(&a.name);
        for fa in &a.fields {
            let path = format!("{}.{}", a.name, fa.name);
            let Some(fb) = b.fields.iter().find(|f| f.name == fa.name) else {
                self.push(fa.pos, true, format!("{path}: field was removed"));
                continue;
            };
            self.ty(&path, &fa.ty, &fb.ty, fb.pos, clients);
            match (&fa.presence, &fb.presence) {
                (Presence::Optional | Presence::Default(_), Presence::Required) => {
                    self.push(fb.pos, false, format!("{path}: optional field became required (old clients may omit it)"))
                }
                (Presence::Default(x), Presence::Default(y)) if x != y => {
                    self.push(fb.pos, false, format!("{path}: default changed"))
                }
                (Presence::Default(_), Presence::Optional) => {
                    self.push(fb.pos, false, format!("{path}: default was dropped (absent now means nil, not the old default)"))
                }
                (Presence::Required, Presence::Optional) if clients => self.push(
                    fb.pos,
                    false,
                    format!("{path}: required field became optional, and clients read {} (old clients refuse a packet without it)", a.name),
                ),
                _ => {}
            }
        }
        for fb in &b.fields {
            if fb.presence == Presence::Required && !a.fields.iter().any(|f| f.name == fb.name) {
                self.push(fb.pos, false, format!("{}.{}: a required field was added (old peers do not send it); make it optional or give it a default", b.name, fb.name));
            }
        }
    }

    fn ty(&mut self, path: &str, a: &Type, b: &Type, pos: Pos, clients: bool) {
        let (sa, sb) = (a.spelling(), b.spelling());
        // (tightened, loosened) for the bound pair (old min, old max) -> (new min, new max).
        let bounds = |lo_a: f64, hi_a: f64, lo_b: f64, hi_b: f64| {
            (lo_b > lo_a || hi_b < hi_a, lo_b < lo_a || hi_b > hi_a)
        };
        let (tight, loose) = match (a, b) {
            (Type::Bool, Type::Bool) => (false, false),
            (
                Type::Int {
                    kind: ka,
                    min: la,
                    max: ha,
                },
                Type::Int {
                    kind: kb,
                    min: lb,
                    max: hb,
                },
            ) if ka == kb => (lb > la || hb < ha, lb < la || hb > ha),
            (
                Type::Float {
                    kind: ka,
                    min: la,
                    max: ha,
                },
                Type::Float {
                    kind: kb,
                    min: lb,
                    max: hb,
                },
            ) if ka == kb => bounds(*la, *ha, *lb, *hb),
            (Type::Str { min: la, max: ha }, Type::Str { min: lb, max: hb })
            | (Type::Bytes { min: la, max: ha }, Type::Bytes { min: lb, max: hb }) => bounds(
                f64::from(*la),
                f64::from(*ha),
                f64::from(*lb),
                f64::from(*hb),
            ),
            (
                Type::Array {
                    elem: ea,
                    min: la,
                    max: ha,
                },
                Type::Array {
                    elem: eb,
                    min: lb,
                    max: hb,
                },
            ) => {
                self.ty(&format!("{path}[]"), ea, eb, pos, clients);
                bounds(
                    f64::from(*la),
                    f64::from(*ha),
                    f64::from(*lb),
                    f64::from(*hb),
                )
            }
            (Type::Enum(x), Type::Enum(y)) | (Type::Struct(x), Type::Struct(y)) if x == y => {
                (false, false)
            }
            _ => {
                self.push(
                    pos,
                    false,
                    format!("{path}: type changed from {sa} to {sb}"),
                );
                return;
            }
        };
        if tight {
            self.push(pos, false, format!("{path}: bound tightened from {sa} to {sb} (old clients may send values now refused)"));
        } else if loose && clients {
            self.push(pos, false, format!("{path}: bound loosened from {sa} to {sb}, and clients read it (old clients refuse the new values)"));
        }
    }
}

/// Whether struct `s` uses the type `name` anywhere below it.
fn uses(schema: &Schema, s: &StructDef, name: &str, seen: &mut Vec<String>) -> bool {
    fn names(ty: &Type, out: &mut Vec<String>) {
        match ty {
            Type::Enum(n) | Type::Struct(n) => out.push(n.clone()),
            Type::Array { elem, .. } => names(elem, out),
            _ => {}
        }
    }
    if seen.contains(&s.name) {
        return false;
    }
    seen.push(s.name.clone());
    for f in &s.fields {
        let mut out = Vec::new();
        names(&f.ty, &mut out);
        for n in out {
            if n == name {
                return true;
            }
            if let Some(inner) = schema.struct_def(&n) {
                if uses(schema, inner, name, seen) {
                    return true;
                }
            }
        }
    }
    false
}
