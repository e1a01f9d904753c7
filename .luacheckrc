-- luacheck: lua/ loads on LuaJIT (5.1) and 5.4; specs run under busted.
std = "max"
globals = { "ngx" }
max_line_length = 120
files["spec/"] = { std = "+busted" }
files["bin/"] = { std = "max" }
exclude_files = { "build/", "doc/" }
