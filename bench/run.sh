#!/usr/bin/env bash
# bench/run.sh SYSTEM — measure one TCP tunnel on loopback.
#
# SYSTEM: direct | relay | relay-copy | frp | frp-nomux | frp-notls | chisel | tunnel | tunnel-tls | tunnel-metrics
#
# Starts a local echo server and an iperf3 server, starts SYSTEM so that
# both are reachable on public ports of 127.0.0.1, measures, stops only the
# processes it started (by PID) and prints one row per metric. Nothing here
# builds or fetches a tunnel: give it paths to binaries that already exist
# (see README.md). All traffic stays on 127.0.0.1; every test is bounded in
# time and count.
#
# Results: $BENCH_OUT/SYSTEM.tsv (metric value unit better) and
#          $BENCH_OUT/SYSTEM.cpu.tsv (CPU % of one core per process per test);
#          process logs in $BENCH_OUT/logs/SYSTEM/.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SYSTEM=${1:-}
if [[ -z $SYSTEM || $SYSTEM == -h || $SYSTEM == --help ]]; then
	sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
fi

# ---- settings (environment) --------------------------------------------------
: "${BENCH_OUT:=$(mktemp -d -t tunnel-bench.XXXXXX)}"
: "${BENCH_TESTS:=idle lat rr connrate iperf integrity halfclose}"
: "${BENCH_DURATION:=5}"            # seconds per timed loadgen test
: "${BENCH_RR_CONC:=32}"            # connections for the concurrent request/response test
: "${BENCH_CONNRATE_WORKERS:=16}"   # concurrent workers for the connection-rate test
: "${BENCH_IDLE_COUNTS:=1000 10000}"
: "${BENCH_IDLE_SETTLE:=2}"
: "${BENCH_IDLE_HOLD:=3}"
: "${BENCH_IPERF_TIME:=5}"          # seconds per iperf3 run (plus 1 s omitted warm-up)
: "${BENCH_IPERF_PARALLEL:=4}"
: "${BENCH_INTEGRITY_STREAMS:=8}"
: "${BENCH_INTEGRITY_MB:=32}"
: "${BENCH_READY_TIMEOUT:=20}"
: "${BENCH_TOKEN:=bench-token-not-secret}"
# Fixed high ports on 127.0.0.1.
: "${BENCH_ECHO_PORT:=17001}"      # local echo service
: "${BENCH_IPERF_PORT:=17002}"     # local iperf3 service
: "${BENCH_CTRL_PORT:=17100}"      # tunnel server's session/control port
: "${BENCH_PUB_ECHO_PORT:=17201}"  # public port forwarded to the echo service
: "${BENCH_PUB_IPERF_PORT:=17202}" # public port forwarded to the iperf3 service
: "${BENCH_MID_ECHO_PORT:=17301}"  # middle hop of the relay reference systems
: "${BENCH_MID_IPERF_PORT:=17302}"
# Binaries (already built elsewhere). ANCHOR_BIN is a folder holding them all.
: "${ANCHOR_BIN:=}"
: "${FRPS:=${ANCHOR_BIN:+$ANCHOR_BIN/frps}}"
: "${FRPC:=${ANCHOR_BIN:+$ANCHOR_BIN/frpc}}"
: "${CHISEL:=${ANCHOR_BIN:+$ANCHOR_BIN/chisel}}"
: "${TUNNEL_BIN_DIR:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/bin}" # this repository's bin/ (make build)
: "${IPERF3:=$(command -v iperf3 || true)}"

HOST=127.0.0.1
LOGDIR=$BENCH_OUT/logs/$SYSTEM
RUNDIR=$BENCH_OUT/run/$SYSTEM
RES=$BENCH_OUT/$SYSTEM.tsv
CPURES=$BENCH_OUT/$SYSTEM.cpu.tsv
mkdir -p "$LOGDIR" "$RUNDIR"
: >"$RES"
printf 'test\twall_s\tserver\tclient\techo\tiperf3d\tdriver\n' >"$CPURES"

die() { echo "run.sh $SYSTEM: $*" >&2; exit 1; }

# ---- process bookkeeping: only PIDs we started are ever signalled ----------
SERVICE_PIDS=()   # echo, iperf3 server: live for the whole run
SYS_PIDS=()       # the system under test: restarted per phase
SERVER_PID=""     # tunnel server (empty for direct)
CLIENT_PID=""     # tunnel client (empty for direct)
ECHO_PID=""
IPERFD_PID=""
LAST_PID=""

# spawn NAME CMD... : start CMD in the background, its output in LOGDIR/NAME.log.
spawn() {
	local name=$1; shift
	"$@" >>"$LOGDIR/$name.log" 2>&1 </dev/null &
	LAST_PID=$!
}

stop_pids() {
	local pid i
	for pid in "$@"; do
		[[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null
	done
	for pid in "$@"; do
		[[ -n $pid ]] || continue
		for ((i = 0; i < 30; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
}

sys_stop() {
	((${#SYS_PIDS[@]})) && stop_pids "${SYS_PIDS[@]}"
	SYS_PIDS=(); SERVER_PID=""; CLIENT_PID=""
}

cleanup() {
	sys_stop
	((${#SERVICE_PIDS[@]})) && stop_pids "${SERVICE_PIDS[@]}"
	SERVICE_PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- measuring helpers ----------------------------------------------------------
TCK=$(getconf CLK_TCK)

# cpu_ticks PID : user+system ticks of a live process (0 if none).
cpu_ticks() {
	local pid=${1:-}
	[[ -n $pid && -r /proc/$pid/stat ]] || { echo 0; return; }
	sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}'
}

# children_ticks FILE : user+system ticks of this shell's reaped children (the
# load driver: loadgen or the iperf3 client), read from a `times` dump taken
# in this shell (a subshell would see its own, empty, children times).
children_ticks() {
	awk -v tck="$TCK" 'NR == 2 {
		split($1, u, /[ms]/); split($2, s, /[ms]/)
		printf "%d\n", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * tck }' "$1"
}

rss_mb() {
	local pid=${1:-}
	[[ -n $pid && -r /proc/$pid/status ]] || { echo ""; return; }
	awk '/^VmRSS:/ {printf "%.1f\n", $2 / 1024}' "/proc/$pid/status"
}

# emit METRIC VALUE UNIT BETTER
emit() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$RES"; }

result_value() { awk -F'\t' -v m="$1" '$1 == m {v = $2} END {print v}' "$RES"; }

CPU0=() T0=0
cpu_begin() {
	T0=$(date +%s.%N)
	times >"$RUNDIR/.times"
	CPU0=("$(cpu_ticks "$SERVER_PID")" "$(cpu_ticks "$CLIENT_PID")" "$(cpu_ticks "$ECHO_PID")" "$(cpu_ticks "$IPERFD_PID")" "$(children_ticks "$RUNDIR/.times")")
}
# cpu_end TEST : log CPU % of one core per process; leaves server+client
# seconds of CPU in TUNNEL_CPU_S.
cpu_end() {
	local t1 c1
	t1=$(date +%s.%N)
	times >"$RUNDIR/.times"
	c1=("$(cpu_ticks "$SERVER_PID")" "$(cpu_ticks "$CLIENT_PID")" "$(cpu_ticks "$ECHO_PID")" "$(cpu_ticks "$IPERFD_PID")" "$(children_ticks "$RUNDIR/.times")")
	awk -v t="$1" -v w="$(awk -v a="$T0" -v b="$t1" 'BEGIN{print b - a}')" -v tck="$TCK" \
		-v a="${CPU0[*]}" -v b="${c1[*]}" 'BEGIN {
			split(a, x, " "); split(b, y, " "); line = sprintf("%s\t%.1f", t, w)
			for (i = 1; i <= 5; i++) line = line sprintf("\t%.0f", 100 * (y[i] - x[i]) / tck / w)
			print line }' >>"$CPURES"
	TUNNEL_CPU_S=$(awk -v tck="$TCK" -v a="${CPU0[*]}" -v b="${c1[*]}" \
		'BEGIN {split(a, x, " "); split(b, y, " "); print ((y[1] - x[1]) + (y[2] - x[2])) / tck}')
}

# lg TEST LOADGEN-ARGS... : run one bounded loadgen measurement.
lg() {
	local t=$1; shift
	local out=$RUNDIR/$t.out rc
	cpu_begin
	timeout 600 "$LOADGEN" "$@" >"$out" 2>>"$LOGDIR/loadgen.log"
	rc=$?
	cpu_end "$t"
	grep '^RESULT' "$out" | cut -f2- >>"$RES"
	((rc == 0)) || echo "run.sh $SYSTEM: $t: loadgen exit $rc (see $LOGDIR/loadgen.log)" >&2
	return $rc
}

# iperf NAME ARGS... : one iperf3 client run through the public port.
iperf() {
	local name=$1; shift
	local json=$RUNDIR/$name.json rc try
	for try in 1 2; do
		cpu_begin
		timeout $((BENCH_IPERF_TIME + 30)) "$IPERF3" -c $HOST -p "$PUB_IPERF" -t "$BENCH_IPERF_TIME" -O 1 -J "$@" >"$json" 2>>"$LOGDIR/iperf3-client.log"
		rc=$?
		cpu_end "$name"
		((rc == 0)) && break
		echo "run.sh $SYSTEM: $name: iperf3 exit $rc, retrying" >&2
		sleep 1
	done
	"$LOADGEN" iperfsum -name "$name" <"$json" 2>>"$LOGDIR/loadgen.log" | grep '^RESULT' | cut -f2- >>"$RES"
}

# ---- the local services -------------------------------------------------------------
check_ports_free() {
	local p busy=""
	for p in "$@"; do
		if ss -Htln "sport = :$p" | grep -q .; then busy="$busy $p"; fi
	done
	[[ -z $busy ]] || die "ports already in use on this machine:$busy (set BENCH_*_PORT to move them)"
}

start_services() {
	spawn echo "$LOADGEN" echo -addr "$HOST:$BENCH_ECHO_PORT"
	ECHO_PID=$LAST_PID; SERVICE_PIDS+=("$LAST_PID")
	spawn iperf3d "$IPERF3" -s -B $HOST -p "$BENCH_IPERF_PORT"
	IPERFD_PID=$LAST_PID; SERVICE_PIDS+=("$LAST_PID")
	"$LOADGEN" wait -addr "$HOST:$BENCH_ECHO_PORT" -timeout 10s || die "echo server did not start"
}

# =============================================================================
# Systems. Each sys_start_X starts the system so that
#   $HOST:$PUB_ECHO  reaches $HOST:$BENCH_ECHO_PORT  and
#   $HOST:$PUB_IPERF reaches $HOST:$BENCH_IPERF_PORT,
# and sets SERVER_PID / CLIENT_PID (appending both to SYS_PIDS).
# =============================================================================

# need_bin WHAT PATH HOW : fail unless PATH is an executable.
need_bin() { [[ -n ${2:-} && -x $2 ]] || die "$1 not found at '${2:-}': $3"; }

# preflight : check the system name and its binaries before starting anything.
preflight() {
	declare -F "sys_start_$SYSTEM" >/dev/null ||
		die "unknown system '$SYSTEM' (direct relay relay-copy frp frp-nomux frp-notls chisel tunnel tunnel-tls tunnel-metrics)"
	case $SYSTEM in
	frp*)
		need_bin frps "$FRPS" "set FRPS or ANCHOR_BIN"
		need_bin frpc "$FRPC" "set FRPC or ANCHOR_BIN" ;;
	chisel) need_bin chisel "$CHISEL" "set CHISEL or ANCHOR_BIN" ;;
	tunnel | tunnel-tls | tunnel-metrics)
		need_bin tunneld "${TUNNEL_BIN_DIR:+$TUNNEL_BIN_DIR/tunneld}" "set TUNNEL_BIN_DIR to the folder holding tunneld and tunnelc"
		need_bin tunnelc "${TUNNEL_BIN_DIR:+$TUNNEL_BIN_DIR/tunnelc}" "set TUNNEL_BIN_DIR to the folder holding tunneld and tunnelc" ;;
	esac
}

sys_start_direct() {
	PUB_ECHO=$BENCH_ECHO_PORT
	PUB_IPERF=$BENCH_IPERF_PORT
}

# frp: one tcp proxy per service. $1 = tcpMux (true|false), $2 = TLS (true|false).
# Everything else is frp's default.
frp_start() {
	local mux=$1 tls=$2
	PUB_ECHO=$BENCH_PUB_ECHO_PORT
	PUB_IPERF=$BENCH_PUB_IPERF_PORT
	cat >"$RUNDIR/frps.toml" <<-EOF
		bindAddr = "$HOST"
		bindPort = $BENCH_CTRL_PORT
		proxyBindAddr = "$HOST"
		auth.token = "$BENCH_TOKEN"
		transport.tcpMux = $mux
		log.level = "warn"
	EOF
	cat >"$RUNDIR/frpc.toml" <<-EOF
		serverAddr = "$HOST"
		serverPort = $BENCH_CTRL_PORT
		auth.token = "$BENCH_TOKEN"
		transport.tcpMux = $mux
		transport.tls.enable = $tls
		log.level = "warn"

		[[proxies]]
		name = "bench-echo"
		type = "tcp"
		localIP = "$HOST"
		localPort = $BENCH_ECHO_PORT
		remotePort = $PUB_ECHO

		[[proxies]]
		name = "bench-iperf"
		type = "tcp"
		localIP = "$HOST"
		localPort = $BENCH_IPERF_PORT
		remotePort = $PUB_IPERF
	EOF
	spawn frps "$FRPS" -c "$RUNDIR/frps.toml"
	SERVER_PID=$LAST_PID; SYS_PIDS+=("$LAST_PID")
	sleep 0.3
	spawn frpc "$FRPC" -c "$RUNDIR/frpc.toml"
	CLIENT_PID=$LAST_PID; SYS_PIDS+=("$LAST_PID")
}
sys_start_frp()       { frp_start true true; }   # frp defaults: tcpMux on, TLS on
sys_start_frp-nomux() { frp_start false true; }  # one TCP connection per public connection
sys_start_frp-notls() { frp_start true false; }  # yamux over plain TCP: the closest to tunnel's plain mode

# chisel: SSH over WebSocket; one reverse remote per service.
sys_start_chisel() {
	PUB_ECHO=$BENCH_PUB_ECHO_PORT
	PUB_IPERF=$BENCH_PUB_IPERF_PORT
	spawn chisel-server "$CHISEL" server --host $HOST --port "$BENCH_CTRL_PORT" --reverse
	SERVER_PID=$LAST_PID; SYS_PIDS+=("$LAST_PID")
	sleep 0.3
	spawn chisel-client "$CHISEL" client "http://$HOST:$BENCH_CTRL_PORT" \
		"R:$HOST:$PUB_ECHO:$HOST:$BENCH_ECHO_PORT" "R:$HOST:$PUB_IPERF:$HOST:$BENCH_IPERF_PORT"
	CLIENT_PID=$LAST_PID; SYS_PIDS+=("$LAST_PID")
}

# relay, relay-copy: reference paths, NOT tunnels. Two plain TCP relays in
# series (loadgen relay): the shape of a tunnel (two processes, three TCP legs
# per public connection) with no multiplexing, framing or encryption. relay
# lets the kernel splice; relay-copy copies through a 32 KiB user-space
# buffer, as any framing tunnel must. They bound what a tunnel can reach here.
relay_start() {
	local splice=$1
	PUB_ECHO=$BENCH_PUB_ECHO_PORT
	PUB_IPERF=$BENCH_PUB_IPERF_PORT
	spawn relay-client "$LOADGEN" relay -splice="$splice" \
		-map "$HOST:$BENCH_MID_ECHO_PORT=$HOST:$BENCH_ECHO_PORT,$HOST:$BENCH_MID_IPERF_PORT=$HOST:$BENCH_IPERF_PORT"
	CLIENT_PID=$LAST_PID; SYS_PIDS+=("$LAST_PID")
	spawn relay-server "$LOADGEN" relay -splice="$splice" \
		-map "$HOST:$PUB_ECHO=$HOST:$BENCH_MID_ECHO_PORT,$HOST:$PUB_IPERF=$HOST:$BENCH_MID_IPERF_PORT"
	SERVER_PID=$LAST_PID; SYS_PIDS+=("$LAST_PID")
}
sys_start_relay()      { relay_start true; }
sys_start_relay-copy() { relay_start false; }

# -----------------------------------------------------------------------------
# tunnel — this project (tunneld / tunnelc from $TUNNEL_BIN_DIR, default the
# repository's bin/). Configs come from templates (default bench/templates):
# the words @HOST@ @CTRL_PORT@ @TOKEN@ @ECHO_PORT@ @IPERF_PORT@
# @PUB_ECHO_PORT@ @PUB_IPERF_PORT@ in them are replaced.
# -----------------------------------------------------------------------------
tunnel_conf() { # template-name: print the config with the words replaced
	sed -e "s/@HOST@/$HOST/g" -e "s/@CTRL_PORT@/$BENCH_CTRL_PORT/g" -e "s/@TOKEN@/$BENCH_TOKEN/g" \
		-e "s/@ECHO_PORT@/$BENCH_ECHO_PORT/g" -e "s/@IPERF_PORT@/$BENCH_IPERF_PORT/g" \
		-e "s/@PUB_ECHO_PORT@/$BENCH_PUB_ECHO_PORT/g" -e "s/@PUB_IPERF_PORT@/$BENCH_PUB_IPERF_PORT/g" \
		"$1"
}
sys_start_tunnel() {
	local d=$TUNNEL_BIN_DIR
	local tpl=${TUNNEL_CONF_TEMPLATES:-$HERE/templates}
	[[ -x $d/tunneld && -x $d/tunnelc ]] || die "tunnel: no tunneld/tunnelc in $d (make build)"
	PUB_ECHO=$BENCH_PUB_ECHO_PORT
	PUB_IPERF=$BENCH_PUB_IPERF_PORT
	tunnel_conf "$tpl/tunneld.toml" >"$RUNDIR/tunneld.toml"
	tunnel_conf "$tpl/tunnel.toml" >"$RUNDIR/tunnel.toml"
	if [[ -n ${TUNNEL_TLS:-} ]]; then
		# Appended tables: the templates end with tables of their own.
		printf '\n[tls]\ncert_file = "%s"\nkey_file = "%s"\n' "$RUNDIR/cert.pem" "$RUNDIR/key.pem" >>"$RUNDIR/tunneld.toml"
		printf '\n[tls]\nca_file = "%s"\n' "$RUNDIR/cert.pem" >>"$RUNDIR/tunnel.toml"
	else
		# Plain TCP, to compare with frp-notls: TLS is tunnel's default,
		# so say so before the templates' tables.
		local f
		for f in "$RUNDIR/tunneld.toml" "$RUNDIR/tunnel.toml"; do
			{ printf 'tls = "off"\n'; cat "$f"; } >"$f.tmp" && mv "$f.tmp" "$f"
		done
	fi
	if [[ -n ${TUNNEL_ADMIN:-} ]]; then
		printf '\n[admin]\nsocket = "%s"\n' "$RUNDIR/tunneld.sock" >>"$RUNDIR/tunneld.toml"
		printf '\n[admin]\nsocket = "%s"\n' "$RUNDIR/tunnelc.sock" >>"$RUNDIR/tunnel.toml"
	fi
	spawn tunneld "$d/tunneld" serve -c "$RUNDIR/tunneld.toml"
	SERVER_PID=$LAST_PID; SYS_PIDS+=("$LAST_PID")
	sleep 0.3
	spawn tunnelc "$d/tunnelc" up -c "$RUNDIR/tunnel.toml"
	CLIENT_PID=$LAST_PID; SYS_PIDS+=("$LAST_PID")
}

# tunnel-tls — the same with a TLS session, to compare with frp's TLS
# figures: a throwaway self-signed certificate for $HOST from `loadgen
# cert`, which the client trusts as its only CA.
sys_start_tunnel-tls() {
	"$LOADGEN" cert -host "$HOST" -dir "$RUNDIR" || die "tunnel-tls: cannot make a certificate"
	TUNNEL_TLS=1 sys_start_tunnel
}

# tunnel-metrics — the same with both admin endpoints on and /metrics of
# both scraped every second (Prometheus usually scrapes every 15 s): what
# metrics cost, against tunnel in the same run.
sys_start_tunnel-metrics() {
	TUNNEL_ADMIN=1 sys_start_tunnel
	spawn scrape "$LOADGEN" scrape -every 1s -socks "$RUNDIR/tunneld.sock,$RUNDIR/tunnelc.sock"
	SYS_PIDS+=("$LAST_PID")
}

sys_start() {
	"sys_start_$SYSTEM"
	if ! "$LOADGEN" wait -addr "$HOST:$PUB_ECHO" -timeout "${BENCH_READY_TIMEOUT}s" 2>>"$LOGDIR/loadgen.log"; then
		echo "run.sh $SYSTEM: not ready after ${BENCH_READY_TIMEOUT}s; log tails:" >&2
		tail -n 20 "$LOGDIR"/*.log >&2
		exit 1
	fi
	local pid
	for pid in "${SYS_PIDS[@]}"; do
		kill -0 "$pid" 2>/dev/null || die "process $pid exited at start; see $LOGDIR"
	done
	sleep 0.5 # let the second forward (iperf) settle too
}

pids_arg() {
	local a="echo:$ECHO_PID"
	[[ -n $SERVER_PID ]] && a="server:$SERVER_PID,client:$CLIENT_PID,$a"
	echo "$a"
}

want() { [[ " $BENCH_TESTS " == *" $1 "* ]]; }

# ---- main ------------------------------------------------------------------
preflight
[[ -n $IPERF3 && -x $IPERF3 ]] || die "iperf3 not found (apt-get install iperf3, or set IPERF3)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null
LOADGEN=$BENCH_OUT/.bin/loadgen
mkdir -p "$(dirname "$LOADGEN")"
go build -C "$HERE/loadgen" -o "$LOADGEN" . || die "cannot build loadgen"

check_ports_free "$BENCH_ECHO_PORT" "$BENCH_IPERF_PORT" "$BENCH_CTRL_PORT" "$BENCH_PUB_ECHO_PORT" "$BENCH_PUB_IPERF_PORT" \
	"$BENCH_MID_ECHO_PORT" "$BENCH_MID_IPERF_PORT"
start_services
echo "run.sh $SYSTEM: results in $RES" >&2

# Phase 1: memory. A fresh system for each count, so that one test's heap
# does not hide the next one's growth.
if want idle; then
	first=1
	for n in $BENCH_IDLE_COUNTS; do
		sys_start
		if ((first)) && [[ -n $SERVER_PID ]]; then
			emit rss_start_server_mb "$(rss_mb "$SERVER_PID")" MiB lo
			emit rss_start_client_mb "$(rss_mb "$CLIENT_PID")" MiB lo
		fi
		first=0
		lg "idle$n" idle -addr "$HOST:$PUB_ECHO" -n "$n" -settle "${BENCH_IDLE_SETTLE}s" \
			-hold "${BENCH_IDLE_HOLD}s" -pids "$(pids_arg)"
		sys_stop
	done
fi

# Phase 2: speed, on one fresh system.
sys_start
if want lat; then
	lg lat latency -addr "$HOST:$PUB_ECHO" -c 1 -d "${BENCH_DURATION}s" -name lat
fi
if want rr; then
	n=$BENCH_RR_CONC
	if lg "rr$n" latency -addr "$HOST:$PUB_ECHO" -c "$n" -d "${BENCH_DURATION}s" -name "rr$n" && [[ -n $SERVER_PID ]]; then
		emit "rr${n}_cpu_us_per_req" "$(awk -v c="$TUNNEL_CPU_S" -v n="$(result_value "rr${n}_count")" 'BEGIN {printf "%.1f", c * 1e6 / n}')" "us/req" lo
	fi
fi
if want connrate; then
	if lg connrate connrate -addr "$HOST:$PUB_ECHO" -c "$BENCH_CONNRATE_WORKERS" -d "${BENCH_DURATION}s" && [[ -n $SERVER_PID ]]; then
		emit connrate_cpu_ms_per_1k "$(awk -v c="$TUNNEL_CPU_S" -v n="$(result_value connrate_count)" 'BEGIN {printf "%.1f", c * 1e6 / n}')" "ms/1k conn" lo
	fi
fi
if want iperf; then
	iperf iperf_up
	if [[ -n $SERVER_PID ]]; then
		emit iperf_up_cpu_s_per_gb "$(awk -v c="$TUNNEL_CPU_S" -v b="$(result_value iperf_up_bytes_all)" 'BEGIN {if (b > 0) printf "%.2f", c / (b / 1e9)}')" "cpu-s/GB" lo
	fi
	iperf iperf_down -R
	iperf "iperf_up_p$BENCH_IPERF_PARALLEL" -P "$BENCH_IPERF_PARALLEL"
fi
if want integrity; then
	lg integrity integrity -addr "$HOST:$PUB_ECHO" -k "$BENCH_INTEGRITY_STREAMS" -mb "$BENCH_INTEGRITY_MB"
fi
if want halfclose; then
	lg halfclose halfclose -addr "$HOST:$PUB_ECHO"
fi
if [[ -n $SERVER_PID ]]; then
	emit rss_end_server_mb "$(rss_mb "$SERVER_PID")" MiB lo
	emit rss_end_client_mb "$(rss_mb "$CLIENT_PID")" MiB lo
fi
for pid in "${SYS_PIDS[@]}"; do
	kill -0 "$pid" 2>/dev/null || echo "run.sh $SYSTEM: WARNING: process $pid died during the run; see $LOGDIR" >&2
done
sys_stop
cleanup

# ---- report ----------------------------------------------------------------------
{
	printf 'metric\t%s\tunit\tbetter\n' "$SYSTEM"
	awk -F'\t' '$1 !~ /_(count|bytes|bytes_all)$/' "$RES"
} | column -t -s $'\t'
echo
echo "CPU, % of one core, per test ($SYSTEM; driver = loadgen or iperf3 client):"
column -t -s $'\t' "$CPURES"
