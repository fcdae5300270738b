//! The embedded lotus store (docs/config.md `store`): files under one directory, so a node
//! persists lotus without any server. Layout, every name hex-encoded so any project, type,
//! state or channel name is a safe file name:
//!
//! - `DIR/<project>/schema/<type>`: the schema, MessagePack;
//! - `DIR/<project>/state/<name>`: `[type, schema hash, rev, data]`, MessagePack, replaced
//!   whole through a temporary file and a rename, so a reader sees the old or the new state;
//! - `DIR/<project>/channel/<name>`: an append-only log of records (4-byte big-endian length,
//!   then `[epoch, id, msg]`), rewritten with the newest `history` records when it holds twice
//!   that many.
//!
//! Files are not fsynced: a `kill -9` of the node loses nothing written (the kernel has it);
//! a machine crash loses what the kernel had not written back yet.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use rmpv::Value;

use super::store::{Backend, Item, Record, Tail};
use super::value;

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

pub struct Files {
    dir: PathBuf,
    history: usize,
    /// Records in each channel log this thread has seen (for compaction).
    counts: HashMap<PathBuf, usize>,
}

impl Files {
    pub fn new(dir: PathBuf, history: usize) -> Files {
        Files {
            dir,
            history: history.max(1),
            counts: HashMap::new(),
        }
    }

    fn path(&self, project: &str, kind: &str, name: &str) -> PathBuf {
        self.dir.join(hex(project)).join(kind).join(hex(name))
    }

    fn write_whole(&self, path: &PathBuf, bytes: &[u8]) -> Result<(), String> {
        let parent = path.parent().ok_or("no directory")?;
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
        fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn read_log(path: &PathBuf) -> Result<Vec<(u64, u64, Value)>, String> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut out = Vec::new();
        let mut at = 0;
        // A record cut short by a crash mid-append ends the log.
        while at + 4 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            let Some(body) = bytes.get(at + 4..at + 4 + len) else {
                break;
            };
            at += 4 + len;
            if let Ok(Value::Array(r)) = value::decode(body) {
                if let (Some(epoch), Some(id), Some(msg)) = (
                    r.first().and_then(Value::as_u64),
                    r.get(1).and_then(Value::as_u64),
                    r.get(2),
                ) {
                    out.push((epoch, id, msg.clone()));
                }
            }
        }
        Ok(out)
    }

    fn record(epoch: u64, id: u64, msg: Value) -> Vec<u8> {
        let body = value::encode(&Value::Array(vec![
            Value::from(epoch),
            Value::from(id),
            msg,
        ]));
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }
}

impl Backend for Files {
    fn put_schema(&mut self, project: &str, typename: &str, schema: &Value) -> Result<(), String> {
        let path = self.path(project, "schema", typename);
        self.write_whole(&path, &value::encode(schema))
    }

    fn schemas(&mut self) -> Result<Vec<(String, String, Value)>, String> {
        let mut out = Vec::new();
        let projects = match fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(format!("{}: {e}", self.dir.display())),
        };
        for p in projects.flatten() {
            let Some(project) = p.file_name().to_str().and_then(unhex) else {
                continue;
            };
            let Ok(types) = fs::read_dir(p.path().join("schema")) else {
                continue;
            };
            for t in types.flatten() {
                let Some(typename) = t.file_name().to_str().and_then(unhex) else {
                    continue;
                };
                let bytes =
                    fs::read(t.path()).map_err(|e| format!("{}: {e}", t.path().display()))?;
                out.push((project.clone(), typename, value::decode(&bytes)?));
            }
        }
        Ok(out)
    }

    fn flush(&mut self, items: &[Item]) -> Vec<(String, String, String)> {
        let mut failed = Vec::new();
        for item in items {
            let path = self.path(&item.project, "state", &item.name);
            let result = match &item.write {
                Some(r) => self.write_whole(
                    &path,
                    &value::encode(&Value::Array(vec![
                        Value::from(r.typename.as_str()),
                        Value::from(r.schema_hash),
                        Value::from(r.rev),
                        Value::Binary(r.data.clone()),
                    ])),
                ),
                None => match fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(format!("{}: {e}", path.display()))
                    }
                    _ => Ok(()),
                },
            };
            if let Err(e) = result {
                failed.push((item.project.clone(), item.name.clone(), e));
            }
        }
        failed
    }

    fn load_state(&mut self, project: &str, name: &str) -> Result<Option<(Record, Value)>, String> {
        let path = self.path(project, "state", name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let Value::Array(a) = value::decode(&bytes)? else {
            return Err(format!("{}: not a stored state", path.display()));
        };
        let bad = || format!("{}: not a stored state", path.display());
        let record = Record {
            typename: a
                .first()
                .and_then(Value::as_str)
                .ok_or_else(bad)?
                .to_string(),
            schema_hash: a.get(1).and_then(Value::as_u64).ok_or_else(bad)?,
            rev: a.get(2).and_then(Value::as_u64).ok_or_else(bad)?,
            data: match a.get(3) {
                Some(Value::Binary(b)) => b.clone(),
                _ => return Err(bad()),
            },
        };
        let spath = self.path(project, "schema", &record.typename);
        let schema = fs::read(&spath).map_err(|e| format!("{}: {e}", spath.display()))?;
        Ok(Some((record, value::decode(&schema)?)))
    }

    fn load_channel(&mut self, project: &str, channel: &str) -> Result<Option<Tail>, String> {
        let path = self.path(project, "channel", channel);
        let records = Self::read_log(&path)?;
        self.counts.insert(path, records.len());
        let Some((epoch, last_id, _)) = records.last().cloned() else {
            return Ok(None);
        };
        let skip = records.len().saturating_sub(self.history);
        let items = records
            .into_iter()
            .skip(skip)
            .filter(|(e, _, _)| *e == epoch)
            .map(|(_, id, m)| (id, m))
            .collect();
        Ok(Some((epoch, last_id, items)))
    }

    fn append(
        &mut self,
        project: &str,
        channel: &str,
        epoch: u64,
        id: u64,
        msg: &[u8],
    ) -> Result<(), String> {
        let path = self.path(project, "channel", channel);
        let msg = value::decode(msg)?;
        let count = match self.counts.get(&path) {
            Some(c) => *c,
            None => Self::read_log(&path)?.len(),
        };
        if count + 1 >= 2 * self.history {
            // Compaction: the newest `history` records, written whole.
            let mut records = Self::read_log(&path)?;
            records.push((epoch, id, msg));
            let skip = records.len().saturating_sub(self.history);
            let mut bytes = Vec::new();
            for (e, i, m) in records.into_iter().skip(skip) {
                bytes.extend(Self::record(e, i, m));
            }
            self.write_whole(&path, &bytes)?;
            self.counts.insert(path, self.history);
            return Ok(());
        }
        let parent = path.parent().ok_or("no directory")?;
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(&Self::record(epoch, id, msg))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.counts.insert(path, count + 1);
        Ok(())
    }

    fn delete_channel(&mut self, project: &str, channel: &str) -> Result<(), String> {
        let path = self.path(project, "channel", channel);
        self.counts.remove(&path);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("{}: {e}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_schemas_and_channel_logs_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Files::new(dir.path().to_path_buf(), 3);
        f.put_schema("p/x", "t", &Value::from("schema")).unwrap();
        assert_eq!(
            f.schemas().unwrap(),
            [("p/x".into(), "t".into(), Value::from("schema"))]
        );
        let rec = Record {
            typename: "t".into(),
            schema_hash: 7,
            rev: 2,
            data: value::encode(&Value::from(5)),
        };
        let item = |write| Item {
            project: "p/x".into(),
            name: "../s".into(),
            write,
        };
        assert!(f.flush(&[item(Some(rec.clone()))]).is_empty());
        assert_eq!(
            f.load_state("p/x", "../s").unwrap(),
            Some((rec, Value::from("schema")))
        );
        assert!(f.flush(&[item(None)]).is_empty());
        assert_eq!(f.load_state("p/x", "../s").unwrap(), None);
        for id in 1..=10 {
            f.append("p/x", "c", 9, id, &value::encode(&Value::from(id)))
                .unwrap();
        }
        let (epoch, last, items) = f.load_channel("p/x", "c").unwrap().unwrap();
        assert_eq!((epoch, last), (9, 10));
        assert_eq!(
            items,
            [
                (8, Value::from(8)),
                (9, Value::from(9)),
                (10, Value::from(10))
            ]
        );
        f.delete_channel("p/x", "c").unwrap();
        assert_eq!(f.load_channel("p/x", "c").unwrap(), None);
    }
}
