//! C-ABI types shared between the engine and LuaJIT's FFI (filled in by the FFI fast-path work).
