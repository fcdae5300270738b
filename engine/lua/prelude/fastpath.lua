-- Prelude, part 7: the packet path through LuaJIT's FFI. Received frames are decoded from
-- the engine's buffer by a LuaJIT BSON decoder reading through a pointer, and replies are
-- BSON-encoded by LuaJIT straight into the connection's output buffer (reserve, write,
-- advance) — no Lua C API call on the way, so the JIT compiles through it.
--
-- This path only does the common case. Anything unusual — a malformed or exotic frame, a
-- key with an `@type` suffix, a function value, -0.0, a socket of another core, a socket
-- with `crypto` set (its replies are sealed by the engine) — makes it
-- step aside, and the classic path (Rust codec over the C API) handles it: the same bytes
-- reach the wire either way, and errors are reported by one implementation only.
local E, P = ...

if not E.ffi_enabled() then return end

local ffi = P.ffi
local ptrs = E.ffi_pointers()
ffi.cdef(ptrs.cdef)

local commit_bytes = ffi.cast("stage_commit_bytes_fn", ptrs.commit_bytes)
local reserve = ffi.cast("stage_reserve_fn", ptrs.reserve)
local advance = ffi.cast("stage_advance_fn", ptrs.advance)
local socket_addr = ffi.cast("stage_socket_addr_fn", ptrs.socket_addr)
local NOT_HERE = ptrs.not_here
-- The engine's context for every call: during a socket's callback it names that socket, so
-- a reply to it is written without a lookup (stage-ffi `FfiContext`).
local ctx = ffi.cast("void *", E.ffi_ctx)

local type, rawget, next, floor, format, byte, find =
  type, rawget, next, math.floor, string.format, string.byte, string.find
local ffi_string, ffi_copy, ffi_cast = ffi.string, ffi.copy, ffi.cast
local table_new = require("table.new")

local band, rshift = bit.band, bit.rshift

-- Numbers go through bytes and one persistent union: a cast pointer would be a new cdata
-- object per field whenever the code runs in the interpreter (garbage on every packet).
local scratch = ffi.new("union { double d; uint8_t b[8]; }")

-- The BSON limits of every decoder of the engine (codec/bson_limits.rs). A frame over one
-- steps aside here; the Rust decoder then refuses it, counts it and closes the connection.
local MAX_DEPTH, MAX_ELEMENTS = ptrs.max_depth, ptrs.max_elements
local TWO63 = 2 ^ 63
local TWO32 = 4294967296

-- Encoder ------------------------------------------------------------------------------------
-- State of the encode in progress: capacity, position, and why it stopped (1 = out of room,
-- retry bigger; 2 = not for this path, use the classic one). The output pointer is read from
-- the reservation at each write, never kept in a variable: a pointer kept in an upvalue is a
-- boxed cdata, allocated per reply.

local reservation = ffi.new("stage_output_reservation")
local cap, pos, fail

local function put_u8(b)
  if pos >= cap then fail = fail or 1 return end
  reservation.ptr[pos] = b
  pos = pos + 1
end

local function set_i32(at, v)
  local out = reservation.ptr
  out[at] = band(v, 255)
  out[at + 1] = band(rshift(v, 8), 255)
  out[at + 2] = band(rshift(v, 16), 255)
  out[at + 3] = band(rshift(v, 24), 255)
end

local function put_i32(v)
  if pos + 4 > cap then fail = fail or 1 return end
  set_i32(pos, v)
  pos = pos + 4
end

-- An integral double in [-2^63, 2^63) as a little-endian two's-complement int64.
local function put_i64(v)
  if pos + 8 > cap then fail = fail or 1 return end
  local hi = floor(v / TWO32)
  set_i32(pos, v - hi * TWO32)
  set_i32(pos + 4, hi)
  pos = pos + 8
end

local function put_double(v)
  if pos + 8 > cap then fail = fail or 1 return end
  scratch.d = v
  ffi_copy(reservation.ptr + pos, scratch, 8)
  pos = pos + 8
end

local function put_bytes(s, n)
  if pos + n > cap then fail = fail or 1 return end
  ffi_copy(reservation.ptr + pos, s, n)
  pos = pos + n
end

local function put_key(ty, key)
  put_u8(ty)
  put_bytes(key, #key)
  put_u8(0)
end

-- "#1".."#n", the keys of a sequence's elements, made once (up to a bound).
local SEQ_KEYS = {}
local function seq_key(i)
  local key = SEQ_KEYS[i]
  if key == nil then
    key = "#" .. i
    if i <= 4096 then SEQ_KEYS[i] = key end
  end
  return key
end

-- Whether a string key can be written here: one with `@` (a type suffix) or a NUL is the
-- classic path's. Answers are kept per key (plain finds are still a call each), and the
-- cache is emptied when it passes MAX_CHECKED_KEYS, so keys a client makes up cannot grow
-- it without bound.
local MAX_CHECKED_KEYS = 4096
local checked_keys, nchecked = {}, 0
local function plain_key(k)
  local ok = checked_keys[k]
  if ok == nil then
    ok = not (find(k, "@", 1, true) or find(k, "\0", 1, true))
    if nchecked >= MAX_CHECKED_KEYS then checked_keys, nchecked = {}, 0 end
    checked_keys[k] = ok
    nchecked = nchecked + 1
  end
  return ok
end

-- One scalar element; a table is the caller's (it opens a level).
local function put_scalar(key, v)
  local tv = type(v)
  if tv == "string" then
    put_key(0x02, key)
    put_i32(#v + 1)
    put_bytes(v, #v)
    put_u8(0)
  elseif tv == "number" then
    if v == floor(v) and v >= -TWO63 and v < TWO63 then
      if v == 0 and 1 / v < 0 then fail = 2 return end
      put_key(0x12, key)
      put_i64(v)
    else
      put_key(0x01, key)
      put_double(v)
    end
  elseif tv == "boolean" then
    put_key(0x08, key)
    put_u8(v and 1 or 0)
  else
    fail = 2
  end
end

-- Per level of nesting, what the loop saves when it enters a child table: the table, its
-- next() cursor, the length of its sequence part so far, whether it is still in that part,
-- and where its document starts.
local en_t, en_k, en_n, en_seq, en_start = {}, {}, {}, {}, {}

-- socket.commit(table): {"v": t} written in place; nil when the classic path must do it.
-- Keys go in the Rust encoder's order: the sequence 1..n first as "#1".."#n", then the
-- other keys in next() order, raw access. Like the decoder, one loop with an explicit stack
-- (levels 2.. are tables, as the Rust encoder counts depth), so LuaJIT compiles all of it,
-- the reservation and the final advance included.
local function commit_table(id, root)
  local want, tries = 512, 0
  local depth = 0 -- 0: reserve and open the wrapper document
  local t, k, n, seq, start = nil, nil, 0, true, 0
  while true do
    if depth == 0 then
      if reserve(ctx, id, want, reservation) ~= 0 then return nil end
      cap, pos, fail = tonumber(reservation.cap), 0, nil
      put_i32(0)
      put_key(0x03, "v")
      depth, t, k, n, seq, start = 2, root, nil, 0, true, pos
      put_i32(0)
    else
      -- The next element of `t`: its sequence part, then every other key.
      local key, v
      if seq then
        v = rawget(t, n + 1)
        if v == nil then
          seq = false
        else
          n = n + 1
          key = seq_key(n)
        end
      else
        k, v = next(t, k)
        if k == nil then
          -- The end of `t`: close its document, then its parent's level.
          put_u8(0)
          if not fail then set_i32(start, pos - start) end
          depth = depth - 1
          if depth == 1 then
            put_u8(0)
            if fail == nil then
              set_i32(0, pos)
              -- Not a tail call: LuaJIT cannot compile a return past this frame right
              -- after a C call in tail position ("NYI: return to lower frame").
              local r = advance(ctx, id, pos)
              return r
            end
          else
            t, k, n, seq, start = en_t[depth], en_k[depth], en_n[depth], en_seq[depth], en_start[depth]
            en_t[depth] = nil -- not kept alive by the encoder once written
          end
        else
          local tk = type(k)
          if tk == "string" then
            if plain_key(k) then key = k else fail = 2 end
          elseif tk == "number" and k == floor(k) and k > -2 ^ 53 and k < 2 ^ 53 then
            if k > n then
              key = format("#%d", k)
            elseif k < 1 then
              key = format("%d", k)
            end -- 1..n were written as the sequence
          else
            fail = 2
          end
        end
      end
      if key ~= nil and fail == nil then
        if type(v) == "table" then
          if depth >= MAX_DEPTH then
            fail = 2
          else
            put_key(0x03, key)
            en_t[depth], en_k[depth], en_n[depth], en_seq[depth], en_start[depth] = t, k, n, seq, start
            depth, t, k, n, seq, start = depth + 1, v, nil, 0, true, pos
            put_i32(0)
          end
        else
          put_scalar(key, v)
        end
      end
    end
    if fail == 2 then return nil end
    if fail == 1 then
      -- Out of room: again from the start with four times the room.
      tries = tries + 1
      if tries >= 12 then return nil end
      want, depth = want * 4, 0
    end
  end
end

function P.commit_id(id, v)
  local tv = type(v)
  if tv == "string" then
    local r = commit_bytes(ctx, id, v, #v)
    if r ~= NOT_HERE then return r end
  elseif tv == "table" then
    local r = commit_table(id, v)
    if r ~= nil then return r end
  end
  return E.commit(id, v)
end

local addr_buf = ffi.new("uint8_t[128]")
function P.local_addr(id)
  local n = socket_addr(ctx, id, -1, addr_buf, 128)
  if n == NOT_HERE then return E.conn_get(id, "local") end
  if n < 0 then return nil end
  return ffi_string(addr_buf, n)
end

-- Decoder ------------------------------------------------------------------------------------
-- Reads the frame in place; returns nil at the first thing it does not handle exactly like
-- the Rust decoder, which then decodes the frame itself (and closes the connection if the
-- frame is bad).
--
-- The whole frame is read by one loop: a nested document is a level of an explicit stack,
-- and the sizing scan of a document (below) runs in the same loop before its elements are
-- decoded. Why one loop: LuaJIT compiles loops, not the code around them. The engine calls
-- this hook from C, so the code before the loop runs in the interpreter, where every FFI read
-- is a metamethod call that boxes a cdata; a recursive decoder had a loop per level and its
-- entries and prologues were interpreted on every frame (BENCHMARKS.md "Where the
-- one-connection gap is"). Here the only code before the loop is a few plain bytecodes, and
-- the frame pointer is read inside the loop.

local memchr = ffi_cast("void *(*)(const void *, int, size_t)", ptrs.memchr)
local strspn = ffi_cast("size_t (*)(const char *, const char *)", ptrs.strspn)
local rd_type = ffi.typeof("const uint8_t *")

local function u32at(rd, p)
  return rd[p] + rd[p + 1] * 256 + rd[p + 2] * 65536 + rd[p + 3] * 16777216
end

local function i32at(rd, p)
  local v = u32at(rd, p)
  if v >= 2147483648 then v = v - TWO32 end
  return v
end

local function i64at(rd, p)
  -- Two 32-bit halves: no boxed int64, and one rounding, like Rust's `i64 as f64`.
  return i32at(rd, p + 4) * TWO32 + u32at(rd, p)
end

-- A double read through FFI is not canonicalized by LuaJIT, and with NaN-tagging a NaN whose
-- payload bits look like a type tag would become a forged Lua value (a "string" or "table"
-- at an address the client chose). So the bytes are checked first: every NaN becomes the
-- one NaN Lua makes itself. (Testing `x ~= x` after the read would be too late: a forged
-- value equals itself.)
local NAN = 0 / 0
local function double_at(rd, p)
  -- Exponent all ones (bits 52..62) and a mantissa that is not zero: a NaN.
  if band(rd[p + 7], 0x7F) == 0x7F and rd[p + 6] >= 0xF0
    and (band(rd[p + 6], 0x0F) ~= 0 or rd[p] ~= 0 or rd[p + 1] ~= 0 or rd[p + 2] ~= 0
      or rd[p + 3] ~= 0 or rd[p + 4] ~= 0 or rd[p + 5] ~= 0) then
    return NAN
  end
  ffi_copy(scratch, rd + p, 8)
  return scratch.d
end

-- Bytes taken by a value of type `ty` at `q`, or nil: the sizing scan the Rust decoder does
-- before it creates a table, mirrored so both create tables of the same shape (and so
-- iterate them in the same order when they are sent on).
local FIXED = { [0x0A] = 0, [0x06] = 0, [0x08] = 1, [0x10] = 4, [0x01] = 8, [0x09] = 8,
  [0x11] = 8, [0x12] = 8, [0x07] = 12 }
local function value_size(rd, ty, q, limit)
  local size = FIXED[ty]
  if size == nil then
    if q + 4 > limit then return nil end
    local n = i32at(rd, q)
    if n < 0 then return nil end
    if ty == 0x02 or ty == 0x0D or ty == 0x0E then size = 4 + n
    elseif ty == 0x03 or ty == 0x04 then size = n
    elseif ty == 0x05 then size = 5 + n
    else return nil end
  end
  if size > limit - q then return nil end
  return size
end

-- The table key of a document's element whose key is the `n` bytes at `at`: "#1".."#n"
-- (digits only, no leading zero) become integer keys, as the encoder writes sequences; nil
-- for an index too long to be exact, left to the Rust decoder.
local DIGITS = "0123456789"
local function element_key(rd, at, n)
  if n > 1 and rd[at] == 35 and rd[at + 1] ~= 48 and strspn(rd + at + 1, DIGITS) == n - 1 then
    if n > 16 then return nil end
    return tonumber(ffi_string(rd + at + 1, n - 1))
  end
  return ffi_string(rd + at, n)
end

-- Per level of nesting (1 is the frame), what the loop saves when it enters a child
-- document: the level's table, whether it is an array, its array index, the key the child
-- goes under, where the level's document ends, and where its next element starts.
-- The frame being delivered: the engine writes its address and length here before each
-- call (a fixed struct, so handing a frame over allocates nothing).
local view = ffi_cast("stage_packet_view *", E.packet_view)

local lv_t, lv_arr, lv_idx, lv_key, lv_stop, lv_next = {}, {}, {}, {}, {}, {}

-- The value of the frame's first element, and true (every element is still checked); nil
-- when the Rust decoder must decide.
local function decode_frame(len)
  local depth = 0 -- 0 until the frame's header is checked
  local q, stop = 4, len - 1 -- the next element; the current document's closing 0
  local t, arr, idx = nil, false, 0 -- the current document's table (none at level 1)
  local sizing, start, narr, nrec = false, 0, 0, 0
  local nelem = 0 -- elements decoded, over every level (MAX_ELEMENTS)
  local first, seen = nil, false
  while true do
    -- Read here, not before the loop, so it is compiled (and not kept across iterations,
    -- so it is never boxed).
    local rd = view.ptr
    if depth == 0 then
      if i32at(rd, 0) ~= len or rd[stop] ~= 0 then return nil end
      depth = 1
    elseif q < stop then
      -- One element at q: its type, its key up to the next 0, then its value.
      local ty = rd[q]
      local kp = memchr(rd + q + 1, 0, stop - q - 1)
      if kp == nil then
        if not sizing then return nil end
        q = stop -- a bad element ends the sizing scan, as in the Rust decoder
      elseif sizing then
        local v_at = tonumber(ffi_cast(rd_type, kp) - rd) + 1
        local size = value_size(rd, ty, v_at, stop)
        if size == nil then
          q = stop
        else
          if arr or rd[q + 1] == 35 then narr = narr + 1 else nrec = nrec + 1 end
          q = v_at + size
        end
      else
        nelem = nelem + 1
        if nelem > MAX_ELEMENTS then return nil end
        local v_at = tonumber(ffi_cast(rd_type, kp) - rd) + 1
        local key_len = v_at - q - 2
        if ty == 0x03 or ty == 0x04 then
          -- A child document: save this level, size the child, then decode it.
          if depth >= MAX_DEPTH or v_at + 5 > stop then return nil end
          local n = i32at(rd, v_at)
          if n < 5 or v_at + n > stop or rd[v_at + n - 1] ~= 0 then return nil end
          local key = false
          if depth > 1 then
            if arr then
              idx = idx + 1
              key = idx
            else
              key = element_key(rd, q + 1, key_len)
              if key == nil then return nil end
            end
          end
          lv_t[depth], lv_arr[depth], lv_idx[depth] = t, arr, idx
          lv_key[depth], lv_stop[depth], lv_next[depth] = key, stop, v_at + n
          depth = depth + 1
          arr, idx = ty == 0x04, 0
          start, stop = v_at + 4, v_at + n - 1
          q, sizing, narr, nrec = start, true, 0, 0
        else
          local v, next_q
          if ty == 0x02 or ty == 0x0D or ty == 0x0E then
            if v_at + 4 > stop then return nil end
            local n = i32at(rd, v_at)
            if n < 1 or v_at + 4 + n > stop or rd[v_at + 3 + n] ~= 0 then return nil end
            v, next_q = ffi_string(rd + v_at + 4, n - 1), v_at + 4 + n
          elseif ty == 0x10 then
            if v_at + 4 > stop then return nil end
            v, next_q = i32at(rd, v_at), v_at + 4
          elseif ty == 0x12 or ty == 0x09 then
            if v_at + 8 > stop then return nil end
            v, next_q = i64at(rd, v_at), v_at + 8
          elseif ty == 0x01 then
            if v_at + 8 > stop then return nil end
            v, next_q = double_at(rd, v_at), v_at + 8
          elseif ty == 0x08 then
            if v_at + 1 > stop then return nil end
            local b = rd[v_at]
            if b > 1 then return nil end
            v, next_q = b == 1, v_at + 1
          elseif ty == 0x0A or ty == 0x06 then
            next_q = v_at
          elseif ty == 0x05 then
            if v_at + 5 > stop then return nil end
            local n = i32at(rd, v_at)
            if n < 0 or v_at + 5 + n > stop or rd[v_at + 4] == 0x02 then return nil end
            v, next_q = ffi_string(rd + v_at + 5, n), v_at + 5 + n
          elseif ty == 0x07 then
            if v_at + 12 > stop then return nil end
            v, next_q = ffi_string(rd + v_at, 12), v_at + 12
          elseif ty == 0x11 then
            if v_at + 8 > stop or u32at(rd, v_at + 4) >= 2147483648 then return nil end
            v, next_q = i64at(rd, v_at), v_at + 8
          else
            return nil
          end
          if depth == 1 then
            if not seen then first, seen = v, true end
          elseif arr then
            idx = idx + 1
            if v ~= nil then t[idx] = v end
          elseif v ~= nil then
            local key = element_key(rd, q + 1, key_len)
            if key == nil then return nil end
            t[key] = v
          end
          q = next_q
        end
      end
    elseif sizing then
      -- Sized: make the table (refused before it is made if it would pass the limit), then
      -- decode the same elements from the start.
      if nelem + narr + nrec > MAX_ELEMENTS then return nil end
      t = table_new(narr, nrec)
      q, sizing = start, false
    elseif depth == 1 then
      return first, true
    else
      -- The end of a child document: back to its parent, where it goes under its key.
      local child = t
      depth = depth - 1
      t, arr, idx = lv_t[depth], lv_arr[depth], lv_idx[depth]
      lv_t[depth] = nil
      stop, q = lv_stop[depth], lv_next[depth]
      if depth == 1 then
        if not seen then first, seen = child, true end
      else
        t[lv_key[depth]] = child
      end
    end
  end
end

-- A received frame of `len` bytes: deliver it and return true, or false to let the engine
-- decode it.
function P.hooks.receive_view(id, packet, len)
  if not packet then
    P.deliver(id, ffi_string(view.ptr, len))
    return true
  end
  if len < 5 then return false end
  local value, ok = decode_frame(len)
  if not ok then return false end
  P.deliver(id, value)
  return true
end

P.fast = true
