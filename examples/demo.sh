#!/bin/sh
# make demo: run examples/demo.lua with the freshly built gauth (Lua 5.4).
cd "$(dirname "$0")/.." || exit 2
unset LUA_PATH LUA_CPATH LUA_INIT
root=$(pwd)
exec lua5.4 -e "package.path='$root/lua/?.lua;$root/lua/?/init.lua;$root/emulator/lua/?.lua;'..package.path; package.cpath='$root/build/5.4/?.so;'..package.cpath" examples/demo.lua
