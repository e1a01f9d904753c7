-- Every assert.has_error(fn, expected) in the specs names the error it
-- expects: a bare has_error(fn) passes on any error at all, a typo in the
-- code under test included. This finds the bare ones: the calls whose
-- arguments, read at their own nesting level (strings, long strings and
-- comments skipped), have nothing after the function's `end`.
local _M = {}

local find, sub, match = string.find, string.sub, string.match

-- If a string literal or a comment starts at i, the index of its last
-- character; else nil.
local function skip(text, i)
  local c = sub(text, i, i)
  if c == '"' or c == "'" then
    local j, n = i + 1, #text
    while j <= n and sub(text, j, j) ~= c do
      if sub(text, j, j) == "\\" then j = j + 1 end
      j = j + 1
    end
    return j, "string"
  end
  if c == "[" then
    local eq = match(text, "^%[(=*)%[", i)
    if eq then
      local _, e = find(text, "]" .. eq .. "]", i, true)
      return e or #text, "string"
    end
  end
  if c == "-" and sub(text, i, i + 1) == "--" then
    local eq = match(text, "^%-%-%[(=*)%[", i)
    if eq then
      local _, e = find(text, "]" .. eq .. "]", i, true)
      return e or #text, "comment"
    end
    return (find(text, "\n", i, true) or #text + 1) - 1, "comment"
  end
  return nil
end

-- The arguments of the call whose "(" is at i, as the characters at the
-- call's own level (strings as S, tables as T), and the index of its ")".
local function args_at(text, i)
  local depth, n, top = 1, #text, {}
  i = i + 1
  while i <= n and depth > 0 do
    local e, kind = skip(text, i)
    if e then
      if kind == "string" and depth == 1 then top[#top + 1] = "S" end
      i = e
    else
      local c = sub(text, i, i)
      if c == "(" or c == "{" then
        if depth == 1 and c == "{" then top[#top + 1] = "T" end
        depth = depth + 1
      elseif c == ")" or c == "}" then
        depth = depth - 1
      elseif depth == 1 then
        top[#top + 1] = c
      end
    end
    i = i + 1
  end
  return table.concat(top), i - 1
end

--- Line numbers of the bare assert.has_error calls in a Lua source text
-- (calls written inside strings or comments are not calls).
function _M.scan(text)
  local found, i, n, line = {}, 1, #text, 1
  while i <= n do
    local e = skip(text, i)
    if e then
      local _, nl = sub(text, i, e):gsub("\n", "")
      line = line + nl
      i = e + 1
    else
      local s2, e2 = find(text, "^assert%.has_error%s*%(", i)
      if s2 then
        local args, close = args_at(text, e2)
        if not find(args, "end%s*,%s*%S") then found[#found + 1] = line end
        local _, nl = sub(text, i, close):gsub("\n", "")
        line = line + nl
        i = close + 1
      else
        if sub(text, i, i) == "\n" then line = line + 1 end
        i = i + 1
      end
    end
  end
  return found
end

return _M
