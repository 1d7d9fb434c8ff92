package fleet

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/client"
	"github.com/tunnel-dev/tunnel/internal/config"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

func TestMain(m *testing.M) {
	defer tt.RemoveBinaries()
	m.Run()
}

// portBase is the first public port; 2 per client, below the ephemeral
// range so that no client's own connection holds one.
const portBase = 20000

// BenchmarkFleet starts tunneld (the built binary, default settings but
// loopback addresses) and N client sessions with two tunnels each, for N
// = 100 and 1,000 (FLEET_SIZES overrides, e.g. "100,1000,2000"), and
// prints: how fast the sessions came up with TLS on and off, tunneld's
// RSS per idle session (right after the sessions came up, and at the end
// of the idle window, and again an idle window after 4 KiB moved each way
// through every tunnel), its CPU per idle session per minute (heartbeats
// and keepalives at their defaults; FLEET_IDLE sets the window, 150s), and
// how long all N took to come back after tunneld was restarted under
// them, with every public port kept.
func BenchmarkFleet(b *testing.B) {
	sizes := []int{100, 1000}
	if s := os.Getenv("FLEET_SIZES"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 || n > 5000 {
				b.Fatalf("FLEET_SIZES: %q is not a size from 1 to 5000", f)
			}
			sizes = append(sizes, n)
		}
	}
	// Long enough for the runtime's forced collection (every 2 minutes)
	// and the scavenger after it: an idle daemon's RSS, not the garbage
	// of the handshakes that brought the sessions up.
	idle := 150 * time.Second
	if s := os.Getenv("FLEET_IDLE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatalf("FLEET_IDLE: %v", err)
		}
		idle = d
	}
	bin := tt.Binaries(b)
	echo := tt.NewEcho(b)

	var rows []result
	for _, n := range sizes {
		rows = append(rows, run(b, bin, echo.Addr(), n, true, idle))
	}
	for _, n := range sizes {
		rows = append(rows, run(b, bin, echo.Addr(), n, false, 0))
	}
	out := fmt.Sprintf("\nFleet: N client sessions, 2 tunnels each, one tunneld (%s, %d CPUs):\n", time.Now().Format("2006-01-02"), runtime.NumCPU())
	out += fmt.Sprintf("  %6s %4s %14s %12s %14s %19s %14s %16s %12s\n", "N", "TLS", "sessions up in", "sessions/s", "RSS idle", "RSS per session", "idle CPU", "CPU per session", "restart")
	out += fmt.Sprintf("  %6s %4s %14s %12s %14s %19s %14s %16s %12s\n", "", "", "", "", "", "idle (just up)", "% of a core", "per minute", "all back")
	for _, r := range rows {
		tls := "off"
		if r.tls {
			tls = "on"
		}
		line := fmt.Sprintf("  %6d %4s %14s %12.0f", r.n, tls, r.up.Round(time.Millisecond), float64(r.n)/r.up.Seconds())
		if r.idleWindow > 0 {
			line += fmt.Sprintf(" %10.1f MiB %7.1f (%5.1f) KiB %12.2f %% %13.2f ms %12s",
				float64(r.rss)/(1<<20), float64(r.rss-r.rss0)/float64(r.n)/1024, float64(r.rssUp-r.rss0)/float64(r.n)/1024,
				100*r.cpu.Seconds()/r.idleWindow.Seconds(),
				float64(r.cpu.Milliseconds())/float64(r.n)/r.idleWindow.Minutes(),
				r.restart.Round(100*time.Millisecond))
		}
		out += line + "\n"
	}
	for _, r := range rows {
		if r.idleWindow > 0 {
			kib := func(v int64) float64 { return float64(v) / float64(r.n) / 1024 }
			out += fmt.Sprintf("  N=%d: tunneld RSS %.1f MiB with no session; live per idle session %.1f KiB heap + %.1f KiB stacks; data through all %d tunnels checked; idle again after it, RSS %.1f KiB per session, live %.1f + %.1f KiB; during the restart %d tunnels were refused for a while (%s)\n",
				r.n, float64(r.rss0)/(1<<20), kib(r.heap-r.heap0), kib(r.stacks-r.stacks0), 2*r.n, kib(r.rssData-r.rss0), kib(r.heapData-r.heap0), kib(r.stacksData-r.stacks0), r.refused, r.refusedWhy)
		}
	}
	fmt.Fprint(os.Stdout, out)
	b.Log(out)
}

type result struct {
	n         int
	tls       bool
	up        time.Duration // from the first client's start to all tunnels up
	rss0, rss int64         // tunneld's RSS with no session, and with n idle
	rssUp     int64         // with n, 5 s after they came up
	rssData   int64         // with n, an idle window after data moved through all
	// tunneld's live heap and goroutine stacks with no session, at the
	// end of the idle window, and after data moved
	heap0, stacks0, heap, stacks, heapData, stacksData int64
	idleWindow                                         time.Duration
	cpu                                                time.Duration // tunneld's CPU time over idleWindow
	restart                                            time.Duration // from tunneld's new start to all tunnels up again
	refused                                            int           // tunnels seen pending during the restart
	refusedWhy                                         string
}

// serverTOML is tunneld's defaults on loopback, but for the limits per
// source address: every client here comes from 127.0.0.1, where a real
// fleet comes from as many addresses as it has clients, so they are as
// wide as the global ones.
const serverTOML = `listen = "127.0.0.1:%d"
token = "fleet-bench-token-0123456789"
bind_addr = "127.0.0.1"
allow_ports = ["%d-%d"]
state_dir = "%s"
handshake_limit_per_address = 1024
failed_handshakes_per_minute = 100000
%s
`

const clientTOML = `server = "127.0.0.1:%d"
token = "fleet-bench-token-0123456789"
name = "fleet-%05d"
%s

[log]
level = "warn"

[tunnels.a]
local = "%s"
remote_port = %d

[tunnels.b]
local = "%s"
remote_port = %d
`

// run measures one fleet of n sessions; idle 0 measures only how fast
// the sessions come up.
func run(b *testing.B, bin, echo string, n int, tls bool, idle time.Duration) result {
	r := result{n: n, tls: tls, idleWindow: idle}
	dir := b.TempDir()
	port := tt.FreePort(b)
	srvTLS, cliTLS := "", ""
	if !tls {
		srvTLS, cliTLS = `tls = "off"`, `tls = "off"`
	}
	conf := filepath.Join(dir, "tunneld.toml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, serverTOML, port, portBase, portBase+2*n-1, filepath.Join(dir, "state"), srvTLS), 0o600); err != nil {
		b.Fatal(err)
	}
	if tls {
		out, err := exec.Command(filepath.Join(bin, "tunneld"), "fingerprint", "-c", conf).Output()
		if err != nil {
			b.Fatalf("tunneld fingerprint: %v", err)
		}
		cliTLS = fmt.Sprintf("[tls]\nfingerprint = %q", strings.TrimSpace(string(out)))
	}
	srv := startServer(b, bin, conf)
	time.Sleep(2 * time.Second)
	r.rss0 = srv.Mem(b, "VmRSS")
	r.heap0, r.stacks0 = liveMem(b, srv)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	clients := make([]*client.Client, n)
	for i := range clients {
		text := fmt.Sprintf(clientTOML, port, i, cliTLS, echo, portBase+2*i, echo, portBase+2*i+1)
		cfg, err := config.ParseClient(fmt.Sprintf("fleet-%d.toml", i), []byte(text))
		if err != nil {
			b.Fatal(err)
		}
		c, err := client.New(cfg, log)
		if err != nil {
			b.Fatal(err)
		}
		clients[i] = c
	}
	start := time.Now()
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Run(ctx); err != nil {
				b.Errorf("client stopped: %v", err)
			}
		}()
	}
	allUp(b, clients, 1, 2*time.Minute, nil)
	r.up = time.Since(start)
	if idle == 0 {
		return r
	}

	// Settled: every session past its handshake, heartbeats running.
	// RSS is taken at the end of the idle window: what an idle fleet
	// costs, once the handshakes' garbage has gone back to the system.
	time.Sleep(5 * time.Second)
	r.rssUp = srv.Mem(b, "VmRSS")
	cpu0 := srv.CPUTime(b)
	time.Sleep(idle)
	r.cpu = srv.CPUTime(b) - cpu0
	r.rss = srv.Mem(b, "VmRSS")
	// What of it is live (the status line collects first): after the RSS
	// reading, since the collection changes what follows.
	r.heap, r.stacks = liveMem(b, srv)

	// Idle sessions that have carried data: what their connections left
	// behind (buffers a session keeps once it has used them) stays.
	through(b, n)
	time.Sleep(idle)
	r.rssData = srv.Mem(b, "VmRSS")
	r.heapData, r.stacksData = liveMem(b, srv)

	if code := srv.Signal(b, syscall.SIGTERM, 30*time.Second); code != 0 {
		b.Fatalf("tunneld exited with %d on SIGTERM", code)
	}
	restarted := time.Now()
	startServer(b, bin, conf)
	why := map[string]int{}
	r.refused = allUp(b, clients, 2, 2*time.Minute, why)
	r.restart = time.Since(restarted)
	for k, v := range why {
		r.refusedWhy += fmt.Sprintf("%dx %q ", v, k)
	}
	r.refusedWhy = strings.TrimSpace(r.refusedWhy)
	if r.refusedWhy == "" {
		r.refusedWhy = "none"
	}
	through(b, n)
	return r
}

// liveMem is tunneld's live heap and goroutine stack bytes, from its
// status line (SIGUSR1; it collects garbage first).
func liveMem(b *testing.B, srv *tt.Proc) (heap, stacks int64) {
	st := srv.Status(b)
	heap, err1 := strconv.ParseInt(st["heap_bytes"], 10, 64)
	stacks, err2 := strconv.ParseInt(st["stack_bytes"], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		b.Fatalf("tunneld's status line: %v (%v)", err, st)
	}
	return heap, stacks
}

func startServer(b *testing.B, bin, conf string) *tt.Proc {
	srv := tt.Start(b, exec.Command(filepath.Join(bin, "tunneld"), "serve", "-c", conf))
	srv.WaitOutput(b, 10*time.Second, `listening for sessions`)
	return srv
}

// allUp waits until every client has both tunnels up in its sessions-th
// session or later, and returns how many tunnels it saw pending (refused
// for now by the server) meanwhile, with their reasons counted in why.
func allUp(b *testing.B, clients []*client.Client, sessions int, limit time.Duration, why map[string]int) int {
	deadline := time.Now().Add(limit)
	seen := map[string]bool{}
	for {
		up := 0
		var last client.Status
		for i, c := range clients {
			st := c.Status()
			if st.Sessions >= sessions && len(st.Public) == 2 {
				up++
				continue
			}
			last = st
			for name, reason := range st.Pending {
				key := fmt.Sprintf("%d/%s/%d", i, name, st.Sessions)
				if !seen[key] {
					seen[key] = true
					if why != nil {
						why[reason]++
					}
				}
			}
		}
		if up == len(clients) {
			return len(seen)
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d clients up after %s; one that is not: %+v", up, len(clients), limit, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// through moves 4 KiB each way through every public port, 32 at a time,
// and checks it byte for byte.
func through(b *testing.B, n int) {
	var failed atomic.Int64
	var first atomic.Pointer[string]
	ports := make(chan int)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range ports {
				if err := echoOnce(p); err != nil {
					failed.Add(1)
					msg := fmt.Sprintf("port %d: %v", p, err)
					first.CompareAndSwap(nil, &msg)
				}
			}
		}()
	}
	for p := portBase; p < portBase+2*n; p++ {
		ports <- p
	}
	close(ports)
	wg.Wait()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d tunnels did not carry data; first: %s", f, 2*n, *first.Load())
	}
}

func echoOnce(port int) error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := make([]byte, 4<<10)
	_, _ = rand.Read(msg)
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if a, b := sha256.Sum256(msg), sha256.Sum256(got); !bytes.Equal(a[:], b[:]) {
		return fmt.Errorf("the echo differs from what was sent")
	}
	return nil
}
