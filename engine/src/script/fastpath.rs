//! The packet path through LuaJIT's FFI: `extern "C"` functions the prelude calls through
//! `ffi.cast` function pointers (see the `stage-ffi` crate for the ABI). A JIT-compiled call
//! costs a few nanoseconds instead of the ~90 ns of a Lua C API call, and the prelude's
//! LuaJIT BSON codec reads received frames and writes replies in place through them.
//!
//! Every function answers `STAGE_NOT_HERE` when it cannot serve the call on this thread (no
//! core, or a socket owned by another core); the prelude then takes the classic path, which
//! routes and reports errors exactly as before. So the FFI path only ever does the common
//! case, and both paths put the same bytes on the wire.

use std::ffi::c_void;

use mlua::{LightUserData, Lua, Table};
use stage_ffi::{FfiContext, OutputReservation, CDEF, STAGE_NOT_HERE, STAGE_REFUSED};

use crate::codec::bson_limits;
use crate::net::conn::{Conn, OutputError};
use crate::net::id::ConnId;
use crate::net::sockaddr::{self, SockAddr};
use crate::node::runtime::{self, Core};

/// Where a call on socket `id` lands from this thread.
enum Where<R> {
    /// No core here, or another core owns the socket: the classic path must route it.
    NotHere,
    /// This core owns the id but the connection is gone.
    Closed,
    Done(R),
}

/// Runs `f` on connection `id` when this thread's core owns it: straight through `ctx` when
/// `id` is the connection whose callback is running (the reply path), else by lookup.
fn local_conn<R>(ctx: *mut c_void, id: u64, f: impl FnOnce(&Conn) -> R) -> Where<R> {
    // SAFETY: `ctx` is the state's `FfiContext` (or null); its `conn` is set by the host
    // only while that connection's callback runs, and the caller keeps the Rc alive.
    if let Some(ctx) = unsafe { ctx.cast::<FfiContext>().as_ref() } {
        if ctx.id == id && !ctx.conn.is_null() {
            // SAFETY: as above: a live `Conn`, used on its owner's thread.
            return Where::Done(f(unsafe { &*ctx.conn.cast::<Conn>() }));
        }
    }
    let Some(id) = ConnId::from_raw(id) else {
        return Where::NotHere;
    };
    runtime::with_current(|core: &Core| {
        if id.owner() != core.index {
            return Where::NotHere;
        }
        match core.conn(id) {
            Some(conn) => Where::Done(f(&conn)),
            None => Where::Closed,
        }
    })
    .unwrap_or(Where::NotHere)
}

fn status(code: i64) -> i32 {
    code as i32
}

fn counted(id: u64, result: Where<Result<usize, OutputError>>) -> i32 {
    match result {
        Where::NotHere => status(STAGE_NOT_HERE),
        Where::Closed => status(STAGE_REFUSED),
        Where::Done(Ok(n)) => n as i32,
        Where::Done(Err(err)) => {
            crate::net::conn::log_refused_commit(id, &err);
            status(STAGE_REFUSED)
        }
    }
}

/// `socket.commit(string)`: appends the bytes. Returns the count, -1 refused, -2 not here.
unsafe extern "C" fn commit_bytes(ctx: *mut c_void, id: u64, data: *const u8, len: usize) -> i32 {
    // SAFETY: LuaJIT passes a pointer to a live Lua string of `len` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(data, len) };
    counted(id, local_conn(ctx, id, |conn| conn.append(bytes)))
}

/// Room for an in-place encoder at the end of the connection's output buffer. A socket with
/// `crypto` set is "not here": its tables are sealed by the classic path (`E.commit`).
unsafe extern "C" fn reserve(
    ctx: *mut c_void,
    id: u64,
    want: usize,
    out: *mut OutputReservation,
) -> i32 {
    let room = local_conn(ctx, id, |conn| {
        (!conn.encrypts()).then(|| conn.reserve_raw(want))
    });
    match room {
        Where::NotHere | Where::Done(None) => status(STAGE_NOT_HERE),
        Where::Closed | Where::Done(Some(None)) => status(STAGE_REFUSED),
        Where::Done(Some(Some((ptr, cap)))) => {
            // SAFETY: `out` points at a reservation struct the prelude owns.
            unsafe { *out = OutputReservation { ptr, cap } };
            0
        }
    }
}

/// Counts `used` bytes written into the reservation as one message.
unsafe extern "C" fn advance(ctx: *mut c_void, id: u64, used: usize) -> i32 {
    counted(id, local_conn(ctx, id, |conn| conn.advance(used)))
}

/// Copies the peer (`side` 1) or local (`side` -1) binary sockaddr into `buf`.
unsafe extern "C" fn socket_addr(
    ctx: *mut c_void,
    id: u64,
    side: i32,
    buf: *mut u8,
    cap: usize,
) -> i32 {
    let addr = local_conn(ctx, id, |conn| {
        if side < 0 {
            conn.local.get()
        } else {
            conn.peer.get()
        }
    });
    match addr {
        Where::NotHere => status(STAGE_NOT_HERE),
        Where::Closed | Where::Done(None) => status(STAGE_REFUSED),
        Where::Done(Some(addr)) => {
            let bytes = sockaddr::to_binary(&SockAddr::Inet(addr));
            if bytes.len() > cap {
                return status(STAGE_REFUSED);
            }
            // SAFETY: `buf` holds `cap` writable bytes (a prelude-owned array).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
            bytes.len() as i32
        }
    }
}

/// `E.ffi_pointers()`: the cdef text and the function pointers, for the prelude to cast.
pub fn register(lua: &Lua, e: &Table) -> mlua::Result<()> {
    e.set(
        "ffi_enabled",
        lua.create_function(|lua, ()| Ok(super::natives::node(lua)?.plan.ffi))?,
    )?;
    e.set(
        "ffi_pointers",
        lua.create_function(|lua, ()| {
            let t = lua.create_table()?;
            t.set("cdef", CDEF)?;
            let ptr = |f: *const ()| LightUserData(f as *mut c_void);
            t.set("commit_bytes", ptr(commit_bytes as *const ()))?;
            t.set("reserve", ptr(reserve as *const ()))?;
            t.set("advance", ptr(advance as *const ()))?;
            t.set("socket_addr", ptr(socket_addr as *const ()))?;
            // libc's, for the decoder's key scan (one call instead of a byte loop, which
            // would be a second loop inside the decoder's compiled one).
            t.set("memchr", ptr(libc::memchr as *const ()))?;
            t.set("strspn", ptr(libc::strspn as *const ()))?;
            t.set("not_here", STAGE_NOT_HERE)?;
            // The decoder's limits: the same numbers as every other BSON decoder's.
            t.set("max_depth", bson_limits::MAX_DEPTH)?;
            t.set("max_elements", bson_limits::MAX_ELEMENTS)?;
            Ok(t)
        })?,
    )
}
