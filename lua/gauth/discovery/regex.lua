--- The regular expressions of Discovery documents, matched the way
-- googleapiclient matches them: Python's `re.match`, so anchored at the start
-- of the value only (a pattern without `$` accepts any tail), on code points
-- rather than bytes, `$` also before a final newline, `.` not on a newline.
--
-- The syntax is the part of Python's that Discovery documents use: literals,
-- `.`, classes (`[^/]`, `[-a-z0-9]`, `[\w.-]`), `\d \w \s` and their
-- negations, groups `(...)` and `(?:...)`, `|`, `* + ? {m} {m,} {m,n} {,n}`
-- (lazy forms too: whether a match exists does not depend on laziness),
-- `^ $ \A \Z`. Anything else (look-around, back-references, flags) makes
-- `compile` return nil, so the caller can leave that check to the server.
--
-- `\w`, `\d` and `\s` follow Python's Unicode rules for ASCII exactly and
-- approximately beyond it (letters and digits of the common scripts are word
-- characters; punctuation, symbols and emoji are not). Internal.
-- @module gauth.discovery.regex

local byte = string.byte
local sub = string.sub
local type = type
local huge = math.huge
local tonumber = tonumber

local _M = { _VERSION = "0.1.0" }

-- The subject of the running match. Matching never yields or calls out, so
-- these upvalues serve every compiled pattern. ASCII: the subject has no
-- byte above 127, so a byte is a code point (the common case, and fast).
local S, N, ASCII = "", 0, true
local find = string.find

--- Decode the code point at byte `i` of S: cp, next index. A byte that does
-- not start a well-formed UTF-8 sequence stands for itself.
local function step(i)
  local b = byte(S, i)
  if b < 0x80 then return b, i + 1 end
  local n, cp
  if b >= 0xF0 and b < 0xF5 then n, cp = 3, b - 0xF0
  elseif b >= 0xE0 then n, cp = 2, b - 0xE0
  elseif b >= 0xC2 and b < 0xE0 then n, cp = 1, b - 0xC0
  else return b, i + 1 end
  if b >= 0xF5 then return b, i + 1 end
  for j = i + 1, i + n do
    local c = byte(S, j)
    if not c or c < 0x80 or c > 0xBF then return b, i + 1 end
    cp = cp * 64 + (c - 0x80)
  end
  return cp, i + n + 1
end

-- Unicode ranges, sorted, as flat lists {lo1, hi1, lo2, hi2, ...}.
local function in_ranges(r, cp)
  for k = 1, #r, 2 do
    if cp < r[k] then return false end
    if cp <= r[k + 1] then return true end
  end
  return false
end

-- Non-ASCII code points that are NOT alphanumeric in Python (punctuation,
-- symbols, marks, spaces, emoji); everything else non-ASCII counts as a word
-- character. An approximation of str.isalnum(), exact below U+0100.
local NOT_WORD = {
  0x80, 0xA9, 0xAB, 0xB1, 0xB4, 0xB4, 0xB6, 0xB8, 0xBB, 0xBB, 0xBF, 0xBF,
  0xD7, 0xD7, 0xF7, 0xF7,
  0x2C2, 0x2C5, 0x2D2, 0x2DF, 0x2E5, 0x2EB, 0x2ED, 0x2ED, 0x2EF, 0x36F,
  0x375, 0x375, 0x37E, 0x37E, 0x384, 0x385, 0x387, 0x387,
  0x482, 0x489, 0x55A, 0x55F, 0x589, 0x58A, 0x591, 0x5CF, 0x5F3, 0x61F,
  0x64B, 0x65F, 0x66A, 0x66D, 0x6D4, 0x6D4, 0x6D6, 0x6E4, 0x6E7, 0x6ED,
  0x900, 0x903, 0x93A, 0x94F, 0x951, 0x957, 0x962, 0x965, 0x970, 0x970,
  0x1AB0, 0x1AFF, 0x1DC0, 0x1DFF,
  0x2000, 0x206F, 0x207A, 0x207E, 0x208A, 0x208E, 0x20A0, 0x20FF,
  0x2100, 0x2101, 0x2103, 0x2106, 0x2108, 0x2109, 0x2114, 0x2114,
  0x2116, 0x2118, 0x211E, 0x2123, 0x2125, 0x2125, 0x2127, 0x2127,
  0x2129, 0x2129, 0x212E, 0x212E, 0x213A, 0x213B, 0x2140, 0x2144,
  0x214A, 0x214D, 0x214F, 0x214F, 0x218A, 0x245F, 0x249C, 0x24E9,
  0x2500, 0x2775, 0x2794, 0x2BFF, 0x2CE5, 0x2CEA, 0x2CEF, 0x2CF1,
  0x2CF9, 0x2CFC, 0x2CFE, 0x2CFF, 0x2DE0, 0x2E2E, 0x2E30, 0x2FFF,
  0x3000, 0x3004, 0x3008, 0x3020, 0x302A, 0x3030, 0x3036, 0x3037,
  0x303D, 0x303F, 0x3099, 0x309C, 0x30A0, 0x30A0, 0x30FB, 0x30FB,
  0x3190, 0x3191, 0x3196, 0x319F, 0x31C0, 0x31EF, 0x3200, 0x321F,
  0x322A, 0x3247, 0x3250, 0x3250, 0x3260, 0x327F, 0x328A, 0x32B0,
  0x32C0, 0x33FF, 0x4DC0, 0x4DFF, 0xA490, 0xA4CF,
  0xD800, 0xF8FF, 0xFB29, 0xFB29, 0xFD3E, 0xFD4F, 0xFDFC, 0xFE6F,
  0xFEFF, 0xFEFF, 0xFF01, 0xFF0F, 0xFF1A, 0xFF20, 0xFF3B, 0xFF40,
  0xFF5B, 0xFF65, 0xFFE0, 0xFFFF,
  0x1D000, 0x1D3FF, 0x1F000, 0x1FBEF, 0xE0000, 0x10FFFF,
}

-- Non-ASCII decimal digits (Python's \d is Unicode Nd); the common blocks.
local DIGIT = {
  0x660, 0x669, 0x6F0, 0x6F9, 0x7C0, 0x7C9, 0x966, 0x96F, 0x9E6, 0x9EF,
  0xA66, 0xA6F, 0xAE6, 0xAEF, 0xB66, 0xB6F, 0xBE6, 0xBEF, 0xC66, 0xC6F,
  0xCE6, 0xCEF, 0xD66, 0xD6F, 0xE50, 0xE59, 0xED0, 0xED9, 0xF20, 0xF29,
  0x1040, 0x1049, 0x17E0, 0x17E9, 0x1810, 0x1819, 0xFF10, 0xFF19,
}

local SPACE = {
  0x85, 0x85, 0xA0, 0xA0, 0x1680, 0x1680, 0x2000, 0x200A, 0x2028, 0x2029,
  0x202F, 0x202F, 0x205F, 0x205F, 0x3000, 0x3000,
}

local function is_digit(cp)
  if cp < 0x80 then return cp >= 48 and cp <= 57 end
  return in_ranges(DIGIT, cp)
end

local function is_word(cp)
  if cp < 0x80 then
    return (cp >= 48 and cp <= 57) or (cp >= 65 and cp <= 90)
        or (cp >= 97 and cp <= 122) or cp == 95
  end
  return not in_ranges(NOT_WORD, cp)
end

local function is_space(cp)
  if cp < 0x80 then
    return cp == 32 or (cp >= 9 and cp <= 13) or (cp >= 28 and cp <= 31)
  end
  return in_ranges(SPACE, cp)
end

local CLASS = {
  d = is_digit, w = is_word, s = is_space,
  D = function(cp) return not is_digit(cp) end,
  W = function(cp) return not is_word(cp) end,
  S = function(cp) return not is_space(cp) end,
}

local CONTROL = { n = 10, t = 9, r = 13, f = 12, v = 11, a = 7 }

-- ------------------------------------------------------------------------
-- Parser: pattern text -> tree. Nodes:
--   { "set", pred }   one code point satisfying pred
--   { "lit", str }    a literal string (consecutive literal characters)
--   { "seq", n1, n2, ... }   { "alt", n1, n2, ... }
--   { "rep", node, min, max }   { "bol" }   { "eol" }   { "end" }

local P, PI  -- pattern text and position while parsing

local function perr(msg)
  error({ regex_error = msg }, 0)
end

local function pchar()
  -- the pattern's code point at PI (patterns may hold non-ASCII literals)
  local s0, n0 = S, N
  S, N = P, #P
  local cp, ni = step(PI)
  S, N = s0, n0
  return cp, ni
end

local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then
    return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
  end
  if cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 4096),
                       0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return string.char(0xF0 + math.floor(cp / 262144),
                     0x80 + math.floor(cp / 4096) % 64,
                     0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

-- An escape after "\" at PI: returns ("class", pred) or ("char", cp) or
-- ("anchor", node).
local function parse_escape(in_class)
  local c = sub(P, PI, PI)
  if c == "" then perr("trailing backslash") end
  PI = PI + 1
  if CLASS[c] then return "class", CLASS[c] end
  if CONTROL[c] then return "char", CONTROL[c] end
  if c == "x" then
    local h = sub(P, PI, PI + 1)
    if not h:match("^%x%x$") then perr("bad \\x escape") end
    PI = PI + 2
    return "char", tonumber(h, 16)
  end
  if c == "u" then
    local h = sub(P, PI, PI + 3)
    if not h:match("^%x%x%x%x$") then perr("bad \\u escape") end
    PI = PI + 4
    return "char", tonumber(h, 16)
  end
  if not in_class then
    if c == "A" then return "anchor", { "bol" } end
    if c == "Z" then return "anchor", { "end" } end
  end
  if c:match("^[%w]$") then perr("unsupported escape \\" .. c) end
  PI = PI - 1
  local cp, ni = pchar()
  PI = ni
  return "char", cp
end

local function parse_class()
  -- PI is just after "["
  local negate = false
  if sub(P, PI, PI) == "^" then negate = true; PI = PI + 1 end
  local ranges, preds = {}, {}
  local first = true
  while true do
    local c = sub(P, PI, PI)
    if c == "" then perr("unterminated class") end
    if c == "]" and not first then PI = PI + 1; break end
    first = false
    local lo
    if c == "\\" then
      PI = PI + 1
      local kind, v = parse_escape(true)
      if kind == "class" then preds[#preds + 1] = v else lo = v end
    else
      local cp, ni = pchar()
      lo, PI = cp, ni
    end
    if lo then
      local hi = lo
      if sub(P, PI, PI) == "-" and sub(P, PI + 1, PI + 1) ~= "]"
          and sub(P, PI + 1, PI + 1) ~= "" then
        PI = PI + 1
        if sub(P, PI, PI) == "\\" then
          PI = PI + 1
          local kind, v = parse_escape(true)
          if kind ~= "char" then perr("bad range") end
          hi = v
        else
          local cp, ni = pchar()
          hi, PI = cp, ni
        end
        if hi < lo then perr("bad range") end
      end
      ranges[#ranges + 1] = lo
      ranges[#ranges + 1] = hi
    end
  end
  local nr, np = #ranges, #preds
  local function inside(cp)
    for k = 1, nr, 2 do
      if cp >= ranges[k] and cp <= ranges[k + 1] then return true end
    end
    for k = 1, np do
      if preds[k](cp) then return true end
    end
    return false
  end
  if negate then
    return function(cp) return not inside(cp) end
  end
  return inside
end

local parse_alt

-- A quantifier at PI, if any: min, max (max may be huge) or nil.
local function parse_quant()
  local c = sub(P, PI, PI)
  if c == "*" then PI = PI + 1; return 0, huge end
  if c == "+" then PI = PI + 1; return 1, huge end
  if c == "?" then PI = PI + 1; return 0, 1 end
  if c == "{" then
    local a, b, close = P:match("^{(%d*)(,?%d*)}()", PI)
    if not a or (a == "" and b == "") then return nil end  -- a literal "{"
    local lo = a == "" and 0 or tonumber(a)
    local hi
    if b == "" then hi = lo
    elseif b == "," then hi = huge
    else hi = tonumber(b:sub(2)) end
    if hi < lo then perr("bad repeat range") end
    PI = close
    return lo, hi
  end
  return nil
end

local function parse_atom()
  local c = sub(P, PI, PI)
  if c == "(" then
    PI = PI + 1
    if sub(P, PI, PI) == "?" then
      if sub(P, PI + 1, PI + 1) ~= ":" then perr("unsupported group") end
      PI = PI + 2
    end
    local node = parse_alt()
    if sub(P, PI, PI) ~= ")" then perr("missing )") end
    PI = PI + 1
    return node
  elseif c == "[" then
    PI = PI + 1
    return { "set", parse_class() }
  elseif c == "." then
    PI = PI + 1
    return { "set", function(cp) return cp ~= 10 end }
  elseif c == "^" then
    PI = PI + 1
    return { "bol" }
  elseif c == "$" then
    PI = PI + 1
    return { "eol" }
  elseif c == "\\" then
    PI = PI + 1
    local kind, v = parse_escape(false)
    if kind == "class" then return { "set", v } end
    if kind == "anchor" then return v end
    return { "lit", utf8_char(v) }
  elseif c == "*" or c == "+" or c == "?" then
    perr("nothing to repeat")
  end
  if c == "{" and parse_quant() then perr("nothing to repeat") end
  local cp, ni = pchar()
  PI = ni
  return { "lit", utf8_char(cp) }
end

local function parse_seq()
  local seq = { "seq" }
  while true do
    local c = sub(P, PI, PI)
    if c == "" or c == "|" or c == ")" then break end
    local atom = parse_atom()
    local lo, hi = parse_quant()
    if lo then
      local nc = sub(P, PI, PI)
      if nc == "?" then PI = PI + 1             -- lazy: same language
      elseif nc == "+" then perr("possessive repeat") end
      if sub(P, PI, PI):match("^[%*%+%?]$") then perr("multiple repeat") end
      atom = { "rep", atom, lo, hi }
    end
    -- join adjacent literals so that matching compares substrings; a
    -- quantifier has already taken its one character as a "rep" above
    local last = seq[#seq]
    if atom[1] == "lit" and last ~= "seq" and last[1] == "lit" then
      last[2] = last[2] .. atom[2]
    else
      seq[#seq + 1] = atom
    end
  end
  return seq
end

function parse_alt()
  local alts = { "alt", parse_seq() }
  while sub(P, PI, PI) == "|" do
    PI = PI + 1
    alts[#alts + 1] = parse_seq()
  end
  if #alts == 2 then return alts[2] end
  return alts
end

-- ------------------------------------------------------------------------
-- Tail trimming. `re.match` asks only whether some prefix of the value
-- matches, so what the end of a pattern may leave out never decides it:
-- "[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?" matches exactly the values whose
-- first character is in [a-z]. Dropping that tail (and cutting "x{lo,hi}"
-- at the end to "x{lo}") leaves the answer the same for every value and
-- the work a fraction: the patterns of Google's documents mostly end so.

-- Whether a node matches the empty string wherever it is tried.
local function nullable(node)
  local t = node[1]
  if t == "rep" then return node[3] == 0 or nullable(node[2]) end
  if t == "seq" then
    for i = 2, #node do
      if not nullable(node[i]) then return false end
    end
    return true
  end
  if t == "alt" then
    for i = 2, #node do
      if nullable(node[i]) then return true end
    end
    return false
  end
  return false  -- lit (never empty), set, and the anchors (conditional)
end

-- A node matched by some prefix of a string exactly when `node` is, as the
-- tail of the whole pattern.
local function trim_tail(node)
  local t = node[1]
  if nullable(node) then return { "seq" } end
  if t == "seq" then
    local out = { "seq" }
    for i = 2, #node do out[i] = node[i] end
    local n = #out
    while n > 1 and nullable(out[n]) do
      out[n] = nil
      n = n - 1
    end
    if n > 1 then out[n] = trim_tail(out[n]) end
    return out
  end
  if t == "alt" then
    local out = { "alt" }
    for i = 2, #node do out[i] = trim_tail(node[i]) end
    return out
  end
  if t == "rep" then
    -- lo >= 1 here (else nullable): the first lo rounds, the last of them
    -- trimmed in turn
    local x, lo = node[2], node[3]
    if lo == 1 then return trim_tail(x) end
    return { "seq", { "rep", x, lo - 1, lo - 1 }, trim_tail(x) }
  end
  return node
end

-- ------------------------------------------------------------------------
-- Compiler: tree -> function(i, k) that returns true when the node matches
-- at byte i of S and the continuation k accepts the index after it.

local compile

-- A character class as a table for the ASCII bytes, beside its predicate.
local function ascii_table(pred)
  local t = {}
  for b = 0, 127 do t[b] = pred(b) and true or false end
  return t
end

local function compile_set(pred)
  local T = ascii_table(pred)
  return function(i, k)
    if i > N then return false end
    if ASCII then
      if not T[byte(S, i)] then return false end
      return k(i + 1)
    end
    local cp, j = step(i)
    if not pred(cp) then return false end
    return k(j)
  end
end

-- The literal bytes every match of a node contains (a set), for pruning:
-- an optional group whose bytes are not all ahead cannot match there.
local function required_bytes(node)
  local t = node[1]
  local r = {}
  if t == "lit" then
    for i = 1, #node[2] do r[sub(node[2], i, i)] = true end
  elseif t == "seq" then
    for i = 2, #node do
      for c in pairs(required_bytes(node[i])) do r[c] = true end
    end
  elseif t == "alt" then
    local first = true
    for i = 2, #node do
      local ri = required_bytes(node[i])
      if first then
        r, first = ri, false
      else
        for c in pairs(r) do if not ri[c] then r[c] = nil end end
      end
    end
  elseif t == "rep" and node[3] >= 1 then
    r = required_bytes(node[2])
  end
  return r
end

-- The bytes of `want` (true or false) in T, for a Lua character class:
-- letters and digits as ranges, every other byte escaped with "%" (NUL
-- too: Lua 5.2 and later take it in a pattern).
local function class_body(T, want)
  local out, b = {}, 0
  while b <= 127 do
    if T[b] == want then
      local c = string.char(b)
      if c:find("%w") then
        local e = b
        while e < 127 and T[e + 1] == want and string.char(e + 1):find("%w") do e = e + 1 end
        out[#out + 1] = e > b and (c .. "-" .. string.char(e)) or c
        b = e
      else
        out[#out + 1] = "%" .. c
      end
    end
    b = b + 1
  end
  return table.concat(out), #out
end

-- A Lua pattern "^[...]*" matching a run of the ASCII bytes `T` holds, so
-- that string.find scans the run in C: the class as it is or as its
-- complement ("[^/]"), the shorter. Only for ASCII subjects (no byte above
-- 127 to tell apart). Not under LuaJIT: its compiler leaves pattern
-- searches to the interpreter, and compiles the byte loop instead.
local function run_pattern(T)
  if jit then return nil end  -- luacheck: ignore jit
  local yes, ny = class_body(T, true)
  local no, nn = class_body(T, false)
  if ny == 0 then return nil end
  if nn == 0 then return "^.*" end
  if nn < ny then return "^[^" .. no .. "]*" end
  return "^[" .. yes .. "]*"
end

local function compile_rep(node, lo, hi)
  if node[1] == "set" then
    -- the common case ("[^/]+", "[-a-z0-9]{0,61}"): scan greedily, then
    -- offer every length from the longest down to lo
    local pred = node[2]
    local T = ascii_table(pred)
    local run = run_pattern(T)
    return function(i, k)
      if ASCII then
        local c
        if run then
          local _, e = find(S, run, i)
          c = e - i + 1
          if c > hi then c = hi end
        else
          local j = i
          c = 0
          while c < hi and j <= N and T[byte(S, j)] do
            c = c + 1
            j = j + 1
          end
        end
        if c < lo then return false end
        for t = c, lo, -1 do
          if k(i + t) then return true end
        end
        return false
      end
      local c, j, pos = 0, i, nil
      while c < hi and j <= N do
        local cp, nj = step(j)
        if not pred(cp) then break end
        c = c + 1
        if nj ~= j + 1 and not pos then
          pos = {}
          for t = 0, c - 1 do pos[t] = i + t end
        end
        j = nj
        if pos then pos[c] = j end
      end
      if c < lo then return false end
      for t = c, lo, -1 do
        if k(pos and pos[t] or i + t) then return true end
      end
      return false
    end
  end
  local m = compile(node)
  local req = {}
  for c in pairs(required_bytes(node)) do req[#req + 1] = c end
  local nreq = #req
  return function(i, k)
    for r = 1, nreq do
      if not find(S, req[r], i, true) then
        -- the group cannot match here, nor any number of times
        if lo == 0 then return k(i) end
        return false
      end
    end
    local function try(j, c)
      if c < hi then
        local ok = m(j, function(j2)
          -- an empty iteration can repeat as often as needed
          if j2 == j then return k(j2) end
          return try(j2, c + 1)
        end)
        if ok then return true end
      end
      if c >= lo then return k(j) end
      return false
    end
    return try(i, 0)
  end
end

local function compile_seq(node, from)
  from = from or 2
  local n = #node
  if from > n then
    return function(i, k) return k(i) end
  end
  local head = node[from]
  if from == n then return compile(head) end
  local rest = compile_seq(node, from + 1)
  if head[1] == "lit" then
    local lit = head[2]
    local len = #lit
    return function(i, k)
      if sub(S, i, i + len - 1) ~= lit then return false end
      return rest(i + len, k)
    end
  elseif head[1] == "set" then
    local pred = head[2]
    local T = ascii_table(pred)
    return function(i, k)
      if i > N then return false end
      if ASCII then
        if not T[byte(S, i)] then return false end
        return rest(i + 1, k)
      end
      local cp, j = step(i)
      if not pred(cp) then return false end
      return rest(j, k)
    end
  end
  local m = compile(head)
  return function(i, k)
    return m(i, function(j) return rest(j, k) end)
  end
end

function compile(node)
  local t = node[1]
  if t == "set" then return compile_set(node[2]) end
  if t == "lit" then
    local lit = node[2]
    local len = #lit
    return function(i, k)
      if sub(S, i, i + len - 1) ~= lit then return false end
      return k(i + len)
    end
  end
  if t == "seq" then return compile_seq(node) end
  if t == "alt" then
    local ms = {}
    for a = 2, #node do ms[#ms + 1] = compile(node[a]) end
    local n = #ms
    return function(i, k)
      for a = 1, n do
        if ms[a](i, k) then return true end
      end
      return false
    end
  end
  if t == "rep" then return compile_rep(node[2], node[3], node[4]) end
  if t == "bol" then
    return function(i, k) if i == 1 then return k(i) end return false end
  end
  if t == "eol" then
    return function(i, k)
      if i == N + 1 or (i == N and byte(S, N) == 10) then return k(i) end
      return false
    end
  end
  if t == "end" then
    return function(i, k) if i == N + 1 then return k(i) end return false end
  end
  error("gauth.discovery.regex: unknown node " .. tostring(t))
end

local function accept() return true end

--- Compile a pattern.
-- @tparam string pattern Python regular expression
-- @return a function(value) -> boolean (true when `re.match` would match),
--   or nil and a message when the pattern uses syntax this module lacks
function _M.compile(pattern)
  if type(pattern) ~= "string" then
    return nil, "pattern is not a string"
  end
  P, PI = pattern, 1
  local ok, tree = pcall(parse_alt)
  if ok and PI <= #pattern then
    ok, tree = false, { regex_error = "unbalanced )" }
  end
  P = nil
  if not ok then
    if type(tree) == "table" and tree.regex_error then
      return nil, tree.regex_error
    end
    error(tree, 0)
  end
  local m = compile(trim_tail(tree))
  return function(value)
    local s0, n0, a0 = S, N, ASCII
    S, N, ASCII = value, #value, not find(value, "[\128-\255]")
    local r = m(1, accept)
    S, N, ASCII = s0, n0, a0
    return r
  end
end

return _M
