# Sourced by the benchmark scripts that talk to nginx: where the server and
# the client run. On a small shared VM a request-answer ping-pong runs at
# very different speeds depending on whether client and server share a CPU
# (by a factor of 3 here), and unpinned, which one a run gets is up to the
# scheduler; so nginx is pinned to one CPU (BENCH_CPU, default the last)
# and each client is started with $pin (the same CPU) or $pin2 (another
# one, CPU 0).
#
#   . bench/placement.sh
#   placement_start URL TMPDIR   # sets pin and pin2 ("" when not possible:
#                                # no taskset or ss, or one CPU for pin2)
#   placement_restore TMPDIR     # nginx's processes get their affinity back
#   clients PIN SUFFIX LUA_SCRIPT PY_SCRIPT ARG...
#                                # one pass of each client (lua5.4, luajit,
#                                # /usr/bin/python3), BENCH_ROUNDS=1, under
#                                # PIN; SUFFIX goes on its names; a failure
#                                # is noted in $tmp/failed
#   take_turns ROUNDS            # ROUNDS times: `pass "$pin" ""`, then
#                                # `pass "$pin2" _2cpu` (pass: the
#                                # caller's); prints the best of each name
#                                # over all passes; 1 when anything failed
#   best_of FILE                 # the best value of each name in FILE's
#                                # "name value unit" lines, first-seen order

placement_start() {
  pin="" pin2=""
  _port=${1##*:}
  _port=${_port%%/*}
  command -v taskset >/dev/null 2>&1 && command -v ss >/dev/null 2>&1 || return 0
  _ncpu=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
  _cpu=${BENCH_CPU:-$((_ncpu - 1))}
  for _p in $(ss -Htlnp "sport = :$_port" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
    _m=$(taskset -p "$_p" 2>/dev/null | awk '{ print $NF }')
    [ -n "$_m" ] && taskset -p -c "$_cpu" "$_p" >/dev/null 2>&1 && echo "$_p $_m" >>"$2/affinity"
  done
  if [ -s "$2/affinity" ]; then
    pin="taskset -c $_cpu"
    _other=0
    [ "$_cpu" -eq 0 ] && _other=1
    [ "$_ncpu" -gt 1 ] && pin2="taskset -c $_other"
  fi
  return 0
}

placement_restore() {
  [ -f "$1/affinity" ] && while read -r _p _m; do
    taskset -p "$_m" "$_p" >/dev/null 2>&1
  done <"$1/affinity"
  rm -f "$1/affinity"
}

best_of() {
  awk '{ if (!($1 in best)) { order[++k] = $1; unit[$1] = $3 }
         if ($2 + 0 > best[$1] + 0) best[$1] = $2 }
       END { for (i = 1; i <= k; i++) print order[i], best[order[i]], unit[order[i]] }' "$1"
}

clients() {
  _pin=$1 _sfx=$2 _ls=$3 _ps=$4
  shift 4
  for _c in lua5.4 luajit /usr/bin/python3; do
    case $_c in
      lua*) _s=$_ls ;;
      *) _s=$_ps ;;
    esac
    _out=$(BENCH_ROUNDS=1 $_pin $_c $_s "$@") || echo "$_s under $_c" >>"$tmp/failed"
    # execute_lua5.4 123 calls/s -> execute_lua5.4_2cpu 123 calls/s
    [ -n "$_out" ] && printf '%s\n' "$_out" | sed "s/^\([^ ]*\) /\1$_sfx /"
  done
  return 0
}

take_turns() {
  _i=0
  while [ $_i -lt "$1" ]; do
    pass "$pin" ""
    [ -n "$pin2" ] && pass "$pin2" _2cpu
    _i=$((_i + 1))
  done >"$tmp/all.txt"
  best_of "$tmp/all.txt"
  if [ -s "$tmp/failed" ]; then
    sed 's/^/failed: /' "$tmp/failed" >&2
    return 1
  fi
  return 0
}
