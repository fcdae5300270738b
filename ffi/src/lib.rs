//! The C ABI shared by the engine and LuaJIT's FFI: the `#[repr(C)]` types the prelude's
//! hot path touches (a received packet's bytes, a connection's output-buffer reservation)
//! and the signatures of the engine functions the prelude calls through `ffi.cast` function
//! pointers. [`CDEF`] is the same declarations as C text, loaded with `ffi.cdef`; the layout
//! asserts below and the drift test keep the two from disagreeing.
//!
//! Why function pointers rather than exported symbols: the engine hands each pointer to the
//! prelude as a light userdata and the prelude casts it, so nothing depends on dynamic symbol
//! export, and a JIT-compiled call costs about as much as a C call (DESIGN.md §1.4).

use std::ffi::c_void;
use std::mem::{offset_of, size_of};

/// A view of bytes owned by the engine, valid only during the call that hands it out.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PacketView {
    pub ptr: *const u8,
    pub len: usize,
}

/// Room at the end of a connection's output buffer: `cap` writable bytes at `ptr`, valid
/// until the next call into the engine. Written bytes count once `stage_advance` says so.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct OutputReservation {
    pub ptr: *mut u8,
    pub cap: usize,
}

/// The `ctx` every function below receives, opaque to Lua (the prelude passes the pointer
/// the engine handed it): the connection whose callback is running on the calling Lua
/// state, so a reply to it is written without looking the connection up. `conn` is null
/// (and `id` 0) outside such a callback; any other id is looked up as usual.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FfiContext {
    /// The engine's connection object (a `*const Conn`), valid while `id`'s callback runs.
    pub conn: *const c_void,
    pub id: u64,
}

/// `ctx` is the calling state's [`FfiContext`]. Every function returns a negative value when
/// it cannot serve the call here (no core, a socket of another core, a closed socket), and
/// the prelude then takes the classic path through the Lua C API.
pub type CommitBytesFn =
    unsafe extern "C" fn(ctx: *mut c_void, id: u64, data: *const u8, len: usize) -> i32;
pub type ReserveFn = unsafe extern "C" fn(
    ctx: *mut c_void,
    id: u64,
    want: usize,
    out: *mut OutputReservation,
) -> i32;
pub type AdvanceFn = unsafe extern "C" fn(ctx: *mut c_void, id: u64, used: usize) -> i32;
pub type SocketAddrFn =
    unsafe extern "C" fn(ctx: *mut c_void, id: u64, side: i32, buf: *mut u8, cap: usize) -> i32;

/// Status codes shared by the functions above. Results are `int32_t` on purpose: LuaJIT
/// hands 64-bit integers back as boxed cdata, 32-bit ones as plain numbers.
pub const STAGE_NOT_HERE: i64 = -2;
pub const STAGE_REFUSED: i64 = -1;

/// The declarations LuaJIT loads (`ffi.cdef`). Names are prefixed so they cannot clash
/// with anything else a state declares.
pub const CDEF: &str = r#"
typedef struct { const uint8_t *ptr; size_t len; } stage_packet_view;
typedef struct { uint8_t *ptr; size_t cap; } stage_output_reservation;
typedef int32_t (*stage_commit_bytes_fn)(void *ctx, uint64_t id, const char *data, size_t len);
typedef int32_t (*stage_reserve_fn)(void *ctx, uint64_t id, size_t want, stage_output_reservation *out);
typedef int32_t (*stage_advance_fn)(void *ctx, uint64_t id, size_t used);
typedef int32_t (*stage_socket_addr_fn)(void *ctx, uint64_t id, int32_t side, uint8_t *buf, size_t cap);
"#;

/// One struct of [`CDEF`]: its C name, size, and (field, offset) pairs.
pub type StructLayout = (&'static str, usize, &'static [(&'static str, usize)]);

/// Sizes and field offsets of the structs in [`CDEF`], as Rust lays them out: the drift
/// test asks LuaJIT for the same numbers.
pub const LAYOUT: &[StructLayout] = &[
    (
        "stage_packet_view",
        size_of::<PacketView>(),
        &[
            ("ptr", offset_of!(PacketView, ptr)),
            ("len", offset_of!(PacketView, len)),
        ],
    ),
    (
        "stage_output_reservation",
        size_of::<OutputReservation>(),
        &[
            ("ptr", offset_of!(OutputReservation, ptr)),
            ("cap", offset_of!(OutputReservation, cap)),
        ],
    ),
];

// The C side assumes 64-bit pointers and size_t (LuaJIT on x86_64 / aarch64).
const _: () = assert!(size_of::<PacketView>() == 16);
const _: () = assert!(size_of::<OutputReservation>() == 16);
const _: () = assert!(offset_of!(PacketView, len) == 8);
const _: () = assert!(offset_of!(OutputReservation, cap) == 8);
const _: () = assert!(size_of::<usize>() == 8);

#[cfg(test)]
mod tests {
    use super::*;

    /// The cdef text and the Rust types must describe the same memory.
    #[test]
    fn cdef_matches_the_rust_layout() {
        // SAFETY: the ffi library is needed to ask LuaJIT about the C declarations.
        let lua =
            unsafe { mlua::Lua::unsafe_new_with(mlua::StdLib::ALL, mlua::LuaOptions::default()) };
        let cdef: mlua::Function = lua
            .load("local ffi = require('ffi'); return function (s) ffi.cdef(s) end")
            .eval()
            .unwrap();
        cdef.call::<()>(CDEF).unwrap();
        let sizeof: mlua::Function = lua
            .load("local ffi = require('ffi'); return function (t) return ffi.sizeof(t) end")
            .eval()
            .unwrap();
        let offsetof: mlua::Function = lua
            .load(
                "local ffi = require('ffi'); return function (t, f) return ffi.offsetof(t, f) end",
            )
            .eval()
            .unwrap();
        for (name, size, fields) in LAYOUT {
            assert_eq!(sizeof.call::<usize>(*name).unwrap(), *size, "sizeof {name}");
            for (field, offset) in *fields {
                assert_eq!(
                    offsetof.call::<usize>((*name, *field)).unwrap(),
                    *offset,
                    "offsetof {name}.{field}"
                );
            }
        }
        // The function-pointer types parse and are pointer-sized.
        for ty in [
            "stage_commit_bytes_fn",
            "stage_reserve_fn",
            "stage_advance_fn",
            "stage_socket_addr_fn",
        ] {
            assert_eq!(sizeof.call::<usize>(ty).unwrap(), 8, "sizeof {ty}");
        }
        let _: (CommitBytesFn, ReserveFn, AdvanceFn, SocketAddrFn) =
            (dummy_commit, dummy_reserve, dummy_advance, dummy_addr);
    }

    unsafe extern "C" fn dummy_commit(_: *mut c_void, _: u64, _: *const u8, _: usize) -> i32 {
        0
    }
    unsafe extern "C" fn dummy_reserve(
        _: *mut c_void,
        _: u64,
        _: usize,
        _: *mut OutputReservation,
    ) -> i32 {
        0
    }
    unsafe extern "C" fn dummy_advance(_: *mut c_void, _: u64, _: usize) -> i32 {
        0
    }
    unsafe extern "C" fn dummy_addr(_: *mut c_void, _: u64, _: i32, _: *mut u8, _: usize) -> i32 {
        0
    }
}
