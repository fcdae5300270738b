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
-- State of the encode in progress: output pointer, capacity, position, and why it stopped
-- (1 = out of room, retry bigger; 2 = not for this path, use the classic one).

local reservation = ffi.new("stage_output_reservation")
local out, cap, pos, fail

local function put_u8(b)
  if pos >= cap then fail = fail or 1 return end
  out[pos] = b
  pos = pos + 1
end

local function put_i32(v)
  if pos + 4 > cap then fail = fail or 1 return end
  out[pos] = band(v, 255)
  out[pos + 1] = band(rshift(v, 8), 255)
  out[pos + 2] = band(rshift(v, 16), 255)
  out[pos + 3] = band(rshift(v, 24), 255)
  pos = pos + 4
end

-- An integral double in [-2^63, 2^63) as a little-endian two's-complement int64.
local function put_i64(v)
  if pos + 8 > cap then fail = fail or 1 return end
  local hi = floor(v / TWO32)
  local lo = v - hi * TWO32
  out[pos] = band(lo, 255)
  out[pos + 1] = band(rshift(lo, 8), 255)
  out[pos + 2] = band(rshift(lo, 16), 255)
  out[pos + 3] = band(rshift(lo, 24), 255)
  out[pos + 4] = band(hi, 255)
  out[pos + 5] = band(rshift(hi, 8), 255)
  out[pos + 6] = band(rshift(hi, 16), 255)
  out[pos + 7] = band(rshift(hi, 24), 255)
  pos = pos + 8
end

local function put_double(v)
  if pos + 8 > cap then fail = fail or 1 return end
  scratch.d = v
  for i = 0, 7 do out[pos + i] = scratch.b[i] end
  pos = pos + 8
end

local function put_bytes(s, n)
  if pos + n > cap then fail = fail or 1 return end
  ffi_copy(out + pos, s, n)
  pos = pos + n
end

local function put_key(ty, key)
  put_u8(ty)
  put_bytes(key, #key)
  put_u8(0)
end

local encode_table

local function encode_value(key, v, depth)
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
  elseif tv == "table" then
    put_key(0x03, key)
    encode_table(v, depth + 1)
  else
    fail = 2
  end
end

-- The sequence 1..n first as "#1".."#n", then the other keys in next() order, raw access:
-- the same order and keys as the Rust encoder.
encode_table = function(t, depth)
  if depth > MAX_DEPTH then fail = 2 return end
  local start = pos
  put_i32(0)
  local n = 0
  while true do
    local v = rawget(t, n + 1)
    if v == nil then break end
    n = n + 1
    encode_value("#" .. n, v, depth)
    if fail then return end
  end
  for k, v in next, t do
    local tk = type(k)
    if tk == "string" then
      -- Plain finds: pattern matching would stop the JIT from compiling this loop.
      if find(k, "@", 1, true) or find(k, "\0", 1, true) then fail = 2 return end
      encode_value(k, v, depth)
    elseif tk == "number" and k == floor(k) and k > -2 ^ 53 and k < 2 ^ 53 then
      if k > n then
        encode_value(format("#%d", k), v, depth)
      elseif k < 1 then
        encode_value(format("%d", k), v, depth)
      end
    else
      fail = 2
    end
    if fail then return end
  end
  put_u8(0)
  if fail then return end
  local len = pos - start
  out[start] = band(len, 255)
  out[start + 1] = band(rshift(len, 8), 255)
  out[start + 2] = band(rshift(len, 16), 255)
  out[start + 3] = band(rshift(len, 24), 255)
end

-- socket.commit(table): {"v": t} written in place; nil when the classic path must do it.
local function commit_table(id, t)
  local want = 512
  for _ = 1, 12 do
    if reserve(ctx, id, want, reservation) ~= 0 then return nil end
    out, cap, pos, fail = reservation.ptr, tonumber(reservation.cap), 0, nil
    put_i32(0)
    encode_value("v", t, 1)
    put_u8(0)
    if not fail then
      out[0], out[1] = band(pos, 255), band(rshift(pos, 8), 255)
      out[2], out[3] = band(rshift(pos, 16), 255), band(rshift(pos, 24), 255)
      return advance(ctx, id, pos)
    end
    if fail == 2 then return nil end
    want = want * 4
  end
  return nil
end

function P.make_commit(id)
  return function(v)
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

local rd
-- Elements read so far from the frame being decoded, over every level (MAX_ELEMENTS).
local nelem = 0

local function u32at(p)
  return rd[p] + rd[p + 1] * 256 + rd[p + 2] * 65536 + rd[p + 3] * 16777216
end

local function i32at(p)
  local v = u32at(p)
  if v >= 2147483648 then v = v - TWO32 end
  return v
end

local function i64at(p)
  -- Two 32-bit halves: no boxed int64, and one rounding, like Rust's `i64 as f64`.
  return i32at(p + 4) * TWO32 + u32at(p)
end

-- A double read through FFI is not canonicalized by LuaJIT, and with NaN-tagging a NaN whose
-- payload bits look like a type tag would become a forged Lua value (a "string" or "table"
-- at an address the client chose). So the bytes are checked first: every NaN becomes the
-- one NaN Lua makes itself. (Testing `x ~= x` after the read would be too late: a forged
-- value equals itself.)
local NAN = 0 / 0
local function double_at(p)
  -- Exponent all ones (bits 52..62) and a mantissa that is not zero: a NaN.
  if band(rd[p + 7], 0x7F) == 0x7F and rd[p + 6] >= 0xF0
    and (band(rd[p + 6], 0x0F) ~= 0 or rd[p] ~= 0 or rd[p + 1] ~= 0 or rd[p + 2] ~= 0
      or rd[p + 3] ~= 0 or rd[p + 4] ~= 0 or rd[p + 5] ~= 0) then
    return NAN
  end
  for i = 0, 7 do scratch.b[i] = rd[p + i] end
  return scratch.d
end

local decode_doc

-- Bytes taken by a value of type `ty` at `q`, or nil: the sizing scan the Rust decoder does
-- before it creates a table, mirrored so both create tables of the same shape (and so
-- iterate them in the same order when they are sent on).
local FIXED = { [0x0A] = 0, [0x06] = 0, [0x08] = 1, [0x10] = 4, [0x01] = 8, [0x09] = 8,
  [0x11] = 8, [0x12] = 8, [0x07] = 12 }
local function value_size(ty, q, limit)
  local size = FIXED[ty]
  if size == nil then
    if q + 4 > limit then return nil end
    local n = i32at(q)
    if n < 0 then return nil end
    if ty == 0x02 or ty == 0x0D or ty == 0x0E then size = 4 + n
    elseif ty == 0x03 or ty == 0x04 then size = n
    elseif ty == 0x05 then size = 5 + n
    else return nil end
  end
  if size > limit - q then return nil end
  return size
end

-- How many array-part and hash-part slots a document's table gets (as `count` in bson.rs).
local function shape(q, stop, is_array)
  local narr, nrec = 0, 0
  while q < stop do
    local ty = rd[q]
    local k = q + 1
    while k < stop and rd[k] ~= 0 do k = k + 1 end
    if k >= stop then break end
    local size = value_size(ty, k + 1, stop)
    if size == nil then break end
    if is_array or rd[q + 1] == 35 then narr = narr + 1 else nrec = nrec + 1 end
    q = k + 1 + size
  end
  return narr, nrec
end

-- One element's value starting at `q` (after its key); returns ok, value, next position.
local function decode_value(ty, q, stop, depth)
  if ty == 0x02 or ty == 0x0D or ty == 0x0E then
    if q + 4 > stop then return false end
    local n = i32at(q)
    if n < 1 or q + 4 + n > stop or rd[q + 3 + n] ~= 0 then return false end
    return true, ffi_string(rd + q + 4, n - 1), q + 4 + n
  elseif ty == 0x10 then
    if q + 4 > stop then return false end
    return true, i32at(q), q + 4
  elseif ty == 0x12 or ty == 0x09 then
    if q + 8 > stop then return false end
    return true, i64at(q), q + 8
  elseif ty == 0x01 then
    if q + 8 > stop then return false end
    return true, double_at(q), q + 8
  elseif ty == 0x03 or ty == 0x04 then
    local t, next_q = decode_doc(q, stop, depth + 1, ty == 0x04)
    if t == nil then return false end
    return true, t, next_q
  elseif ty == 0x08 then
    if q + 1 > stop then return false end
    local b = rd[q]
    if b > 1 then return false end
    return true, b == 1, q + 1
  elseif ty == 0x0A or ty == 0x06 then
    return true, nil, q
  elseif ty == 0x05 then
    if q + 5 > stop then return false end
    local n = i32at(q)
    local sub = rd[q + 4]
    if n < 0 or q + 5 + n > stop or sub == 0x02 then return false end
    return true, ffi_string(rd + q + 5, n), q + 5 + n
  elseif ty == 0x07 then
    if q + 12 > stop then return false end
    return true, ffi_string(rd + q, 12), q + 12
  elseif ty == 0x11 then
    if q + 8 > stop or u32at(q + 4) >= 2147483648 then return false end
    return true, i64at(q), q + 8
  end
  return false
end

-- A document at `p` that must end by `limit`: its table and the position after it, or nil.
-- With `first`, the value of its first element instead of the table (all elements are
-- still checked).
decode_doc = function(p, limit, depth, is_array, first)
  if depth > MAX_DEPTH or p + 5 > limit then return nil end
  local len = i32at(p)
  if len < 5 or p + len > limit then return nil end
  local stop = p + len - 1
  if rd[stop] ~= 0 then return nil end
  local t
  if not first then
    local narr, nrec = shape(p + 4, stop, is_array)
    -- Refused before the table is sized for them.
    if nelem + narr + nrec > MAX_ELEMENTS then return nil end
    t = table_new(narr, nrec)
  end
  local value, seen = nil, false
  local q, index = p + 4, 0
  while q < stop do
    local ty = rd[q]
    local k = q + 1
    while k < stop and rd[k] ~= 0 do k = k + 1 end
    if k >= stop then return nil end
    nelem = nelem + 1
    if nelem > MAX_ELEMENTS then return nil end
    local key_at, key_len = q + 1, k - q - 1
    local ok, v, next_q = decode_value(ty, k + 1, stop, depth)
    if not ok then return nil end
    if first then
      if not seen then value, seen = v, true end
    elseif is_array then
      index = index + 1
      if v ~= nil then t[index] = v end
    elseif v ~= nil then
      if key_len > 1 and rd[key_at] == 35 then -- "#n" keys become integer keys
        local key = ffi_string(rd + key_at, key_len)
        local digits = key:match("^#([1-9]%d*)$")
        if digits == nil then
          t[key] = v
        elseif #digits <= 15 then
          t[tonumber(digits)] = v
        else
          return nil -- very large index: leave exact rounding to the Rust decoder
        end
      else
        t[ffi_string(rd + key_at, key_len)] = v
      end
    end
    q = next_q
  end
  if first then return value, stop + 1, true end
  return t, stop + 1
end

-- The frame being delivered: the engine writes its address and length here before each
-- call (a fixed struct, so handing a frame over allocates nothing).
local view = ffi_cast("stage_packet_view *", E.packet_view)

-- A received frame: deliver it and return true, or false to let the engine decode it.
function P.hooks.receive_view(id, packet)
  rd = view.ptr
  local len = tonumber(view.len)
  if not packet then
    P.deliver(id, ffi_string(rd, len))
    return true
  end
  if len < 5 or i32at(0) ~= len then return false end
  nelem = 0
  local value, _, ok = decode_doc(0, len, 1, false, true)
  if not ok then return false end
  P.deliver(id, value)
  return true
end

P.fast = true
