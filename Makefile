# gauth: build the C core for one Lua ABI per output folder, test on both.
#   make                 build/5.4/gauth/core.so (Lua 5.4)
#   make LUA=luajit      build/5.1/gauth/core.so (LuaJIT 2.1)
#   make test            set-up, both builds, every spec on 5.4 and LuaJIT
#   make demo            set-up and the guide's complete example on the emulator
#   make bench | asan | valgrind | fuzz | docs | install | clean

LUA ?= lua5.4
ifeq ($(LUA),luajit)
LUA_VERSION ?= 5.1
LUA_INCDIR ?= /usr/include/luajit-2.1
else
LUA_VERSION ?= 5.4
LUA_INCDIR ?= /usr/include/lua$(LUA_VERSION)
endif

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
LUADIR ?= $(PREFIX)/share/lua/$(LUA_VERSION)
BINDIR ?= $(PREFIX)/bin
DESTDIR ?=

CC ?= cc
CFLAGS ?= -O2 -g
WARN = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wformat=2
ALL_CFLAGS = -std=c99 -D_POSIX_C_SOURCE=200809L -fPIC -fvisibility=hidden \
             $(WARN) -I$(LUA_INCDIR) $(OPENSSL_CFLAGS) $(CURL_CFLAGS) $(CFLAGS)
LIBFLAG ?= -shared
LIBS = $(OPENSSL_LIBS) $(CURL_LIBS)
OPENSSL_LIBS ?= -lcrypto
CURL_LIBS ?= -lcurl

VARIANT ?=
BUILD = build/$(LUA_VERSION)$(VARIANT)
SRCS = csrc/core.c csrc/encoding.c csrc/digest.c csrc/random.c csrc/system.c \
       csrc/pkey.c csrc/aead.c csrc/json.c \
       csrc/http.c csrc/http_headers.c csrc/http_io.c csrc/http_setup.c
HDRS = csrc/compat.h csrc/gauth.h csrc/http.h
OBJS = $(SRCS:csrc/%.c=$(BUILD)/obj/%.o)
CORE = $(BUILD)/gauth/core.so

# Debian packages everything here needs; `make deps` installs the missing ones.
DEB_PKGS = gcc make pkg-config openssl curl ca-certificates gzip \
  lua5.4 liblua5.4-dev luajit2 libluajit2-5.1-dev \
  libssl-dev libcurl4-openssl-dev lua-cjson lua-busted lua-socket luarocks \
  python3 python3-jwt python3-cryptography python3-googleapi python3-botocore \
  python3-google-auth python3-httplib2 python3-google-auth-httplib2 iproute2 \
  nginx-light libnginx-mod-http-lua lua-resty-core wrk valgrind \
  lua-ldoc lua-markdown lua-check cppcheck clang libclang-rt-14-dev \
  redis-server lua-nginx-redis

.PHONY: all both deps node-judges test check nodeprecated asan valgrind fuzz bench demo docs install clean

all: $(CORE)

$(BUILD)/obj/%.o: csrc/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(CORE): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(LDFLAGS) -o $@ $(OBJS) $(LIBS)

both:
	$(MAKE) LUA=lua5.4 VARIANT=$(VARIANT)
	$(MAKE) LUA=luajit VARIANT=$(VARIANT)

deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root, or: sudo apt-get install$$missing"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	fi

# Google's Node libraries judge what gauth sends and signs (spec/support/node):
# Node and npm from Debian where missing, the pinned packages into the ignored
# spec/support/node/node_modules, installed again only when package.json changes.
NODE_DIR = spec/support/node
$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root, or: sudo apt-get install nodejs npm"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null || exit 1; }
	@cd $(NODE_DIR) && npm install --no-package-lock --no-audit --no-fund --loglevel=error >/dev/null
	@touch $@

node-judges: $(NODE_DIR)/node_modules/.installed

test: deps node-judges
	@$(MAKE) --no-print-directory both >/dev/null
	@sh spec/run.sh

check: test

# The core against an OpenSSL built without its deprecated API: digest.c
# then takes its EVP path (spec 05 runs this, so that path stays compiled).
nodeprecated:
	$(CC) $(ALL_CFLAGS) -DOPENSSL_NO_DEPRECATED_3_0 -fsyntax-only $(SRCS)

SAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

# The specs under ASan+UBSan: an instrumented core.so per ABI, loaded by a
# small `lua` linked with the sanitizer runtime (no LD_PRELOAD, so curl,
# openssl and python started by the specs run as usual).
# liblua5.4, libcrypto and libcurl are not instrumented: a bad write from
# them shows up only later, as an allocator CHECK failure. To find such a
# writer, build Lua's own sources with -fsanitize=address (and
# -DLUA_USE_APICHECK, which also catches a C function pushing past its
# LUA_MINSTACK slots) and link spec/support/asan_lua.c against those objects.
asan: deps node-judges
	@$(MAKE) --no-print-directory both VARIANT=-asan CFLAGS="-O1 -g $(SAN_FLAGS)" >/dev/null
	@# nginx (specs 43, 70-76) loads the plain LuaJIT core: its workers
	@# cannot take the sanitizer runtime.
	@$(MAKE) --no-print-directory both >/dev/null
	@mkdir -p build/asan
	$(CC) -O1 -g $(SAN_FLAGS) -I/usr/include/lua5.4 -o build/asan/lua5.4 spec/support/asan_lua.c -llua5.4
	$(CC) -O1 -g $(SAN_FLAGS) -I/usr/include/luajit-2.1 -o build/asan/luajit spec/support/asan_lua.c -lluajit-5.1
	@GAUTH_SANITIZE=asan sh spec/run.sh

valgrind: deps
	@$(MAKE) --no-print-directory both >/dev/null
	@sh bench/valgrind.sh

fuzz:
	@sh csrc/fuzz/run.sh

bench: deps
	@$(MAKE) --no-print-directory both >/dev/null
	@sh bench/run.sh

demo: deps
	@$(MAKE) --no-print-directory all >/dev/null
	@sh examples/demo.sh

docs:
	ldoc -c config.ld .

install: $(CORE)
	install -d $(DESTDIR)$(LIBDIR)/gauth $(DESTDIR)$(BINDIR)
	install -m 0755 $(CORE) $(DESTDIR)$(LIBDIR)/gauth/core.so
	for d in lua emulator/lua; do (cd $$d && find gauth -name '*.lua' | while read -r f; do \
	  install -D -m 0644 "$$f" "$(DESTDIR)$(LUADIR)/$$f" || exit 1; done) || exit 1; done
	for b in bin/*; do install -m 0755 "$$b" $(DESTDIR)$(BINDIR)/; done

clean:
	rm -rf build
