//! `buffer.commit('sync', fn)` on a core: the `msync` that waits for the disk runs on
//! glommio's blocking thread instead of the core, and `fn(true)` — or `fn(false, error)` —
//! runs on the core, as the stage that committed, once the rows are on disk. The same
//! pattern as curl.so's replies: the task that waits never touches the Lua state; it posts
//! `viewof_synced {h, e}` to its own core (never dropped: retried while the inbox is full),
//! and the prelude calls the function it kept under that handle.
//!
//! Where there is no core (a `thread.new` pool thread, or a state without the prelude's
//! keeper), the caller syncs on its own thread and calls `fn` at once.

use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;
use mlua::{Function, Lua};

use super::viewof::Mapping;
use crate::node::post::PostKind;
use crate::node::{retry, CoreMsg};

/// Where the prelude's keeper (`E.viewof_keeper`) lives: `keep(handle, fn)` records `fn`
/// with the running stage.
const KEEPER_KEY: &str = "stage.viewof.keep";

thread_local! {
    static NEXT: Cell<u64> = const { Cell::new(1) };
}

/// `E.viewof_keeper(keep)`: the prelude hands over the function that keeps callbacks.
pub(crate) fn set_keeper(lua: &Lua, keep: Function) -> mlua::Result<()> {
    lua.set_named_registry_value(KEEPER_KEY, keep)
}

/// Starts the sync of `map` off this core and arranges for `done` to run when it is over;
/// `Ok(false)` when this thread is not a core with the prelude (the caller syncs itself).
pub(super) fn start(
    lua: &Lua,
    map: Arc<Mapping>,
    file: &str,
    done: Function,
) -> mlua::Result<bool> {
    let Some(core) = crate::node::runtime::try_current() else {
        return Ok(false);
    };
    let Ok(keep) = lua.named_registry_value::<Function>(KEEPER_KEY) else {
        return Ok(false);
    };
    let handle = NEXT.with(|n| {
        let h = n.get();
        n.set(h + 1);
        h
    });
    keep.call::<()>((handle, done))?;
    let (node, me, file) = (core.node.clone(), core.index, file.to_string());
    glommio::spawn_local(async move {
        let synced = glommio::executor()
            .spawn_blocking(move || map.sync(libc::MS_SYNC))
            .await;
        let error = synced
            .err()
            .map(|e| format!("bundle.viewof: commit of {file:?} failed: {e}"));
        let payload = done_doc(handle, error.as_deref());
        let sent = retry::until_taken_async(me, "a viewof commit", || {
            node.send(
                me,
                CoreMsg::Post {
                    kind: PostKind::ViewofSynced,
                    payload: payload.clone(),
                },
            )
        })
        .await;
        if let Err(err) = sent {
            node.log_dropped(me, &err);
        }
    })
    .detach();
    Ok(true)
}

/// The BSON document `{h = handle (int64) [, e = error]}`, written by hand: no Lua state at
/// hand.
fn done_doc(handle: u64, error: Option<&str>) -> Bytes {
    let mut doc = vec![0u8; 4];
    doc.push(0x12);
    doc.extend_from_slice(b"h\0");
    doc.extend_from_slice(&(handle as i64).to_le_bytes());
    if let Some(e) = error {
        doc.push(0x02);
        doc.extend_from_slice(b"e\0");
        doc.extend_from_slice(&(e.len() as i32 + 1).to_le_bytes());
        doc.extend_from_slice(e.as_bytes());
        doc.push(0);
    }
    doc.push(0);
    let len = doc.len() as i32;
    doc[..4].copy_from_slice(&len.to_le_bytes());
    Bytes::from(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_done_document_is_bson() {
        let ok = done_doc(7, None);
        assert_eq!(ok.len(), 16);
        assert_eq!(&ok[..4], &16i32.to_le_bytes());
        let failed = done_doc(7, Some("no"));
        assert_eq!(&failed[..4], &(failed.len() as i32).to_le_bytes());
        assert_eq!(&failed[failed.len() - 4..], b"no\0\0");
    }
}
