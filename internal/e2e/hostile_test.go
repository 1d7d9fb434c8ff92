package e2e

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/protocol"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// Hostile peers on the session port, each while a legitimate client moves
// hashed data: the transfer completes, and tunneld's goroutines and heap
// return to their baseline within seconds once the peer is gone.

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// backToBaseline waits until goroutines and live heap are back near what
// they were, or fails with the figures.
func backToBaseline(t *testing.T, what string, g0 int, h0 uint64) {
	t.Helper()
	backToBaselineLogs(t, what, g0, h0, nil, 0)
}

// backToBaselineLogs is backToBaseline for a test whose attack fills the
// harness's log sinks (kept in this process's heap): their growth since
// logs0 is not counted against tunneld. It is in the heap twice: the sink
// passes every line to t.Log, and package testing keeps a test's output
// until the test ends (10,000 refused handshakes: 4.2 MB each).
func backToBaselineLogs(t *testing.T, what string, g0 int, h0 uint64, logs []*tt.Logs, logs0 int) {
	t.Helper()
	grown := -logs0
	for _, l := range logs {
		grown += l.Len()
	}
	heapSlack := uint64(4<<20) + 2*uint64(max(grown, 0))
	deadline := time.Now().Add(10 * time.Second)
	for {
		g, h := runtime.NumGoroutine(), liveHeap()
		if g <= g0 && h <= h0+heapSlack {
			t.Logf("%s: goroutines %d -> %d, heap %.1f -> %.1f MB", what, g0, g, float64(h0)/1e6, float64(h)/1e6)
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%s: goroutines %d -> %d, heap %.1f -> %.1f MB ten seconds later; goroutines:\n%s",
				what, g0, g, float64(h0)/1e6, float64(h)/1e6, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// legit starts a server and a client and a transfer that runs while the
// test plays the attacker; wait returns the transfer's error.
func legit(t *testing.T) (srv *tt.Server, wait func() error) {
	t.Helper()
	srv, _, wait = legitWith(t, false)
	return srv, wait
}

// A peer that floods yamux pings before any hello and never reads: each
// ping used to start a goroutine in tunneld (1.4 million, 2.8 GB seen).
func TestPingFloodBeforeHello(t *testing.T) {
	srv, wait := legit(t)
	g0, h0 := runtime.NumGoroutine(), liveHeap()
	// A small receive buffer, so the replies back up at once, as they do
	// for an attacker that never reads over a real link.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	nc, err := d.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(nc, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	ping := make([]byte, 12)
	ping[1], ping[3] = 2, 1 // version 0, type ping, flags SYN
	flood := make([]byte, 0, 12*50_000)
	for i := range 50_000 {
		ping[11] = byte(i)
		flood = append(flood, ping...)
	}
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if g := int64(runtime.NumGoroutine()); g > peak.Load() {
				peak.Store(g)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	sent := 0
	for range 10 {
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(flood); err != nil {
			t.Logf("flood write: %v", err) // the server stopped reading or closed: fine
			break
		}
		sent += len(flood) / 12
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	<-sampled
	t.Logf("%d pings sent, never read: goroutines peaked at %d (baseline %d)", sent, peak.Load(), g0)
	if p := int(peak.Load()); p > g0+50 {
		t.Errorf("a ping flood grew tunneld to %d goroutines (baseline %d)", p, g0)
	}
	c.Close()
	if err := wait(); err != nil {
		t.Fatalf("the legitimate transfer: %v", err)
	}
	backToBaseline(t, "after the ping flood", g0, h0)
}

// Refused handshakes leave nothing behind: each used to keep its session
// reachable for the 5-minute stream close timer (10,000 wrong tokens held
// 106 MB for 5-7 minutes).
func TestRefusedHandshakesLeaveNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		tls  bool
		n    int
	}{
		// The mux layer, where the timers were, at the scale; and
		// fewer over TLS, whose handshakes cost CPU, not memory.
		{"cleartext", false, 10_000},
		{"tls", true, 500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _, wait := legitWith(t, !tc.tls)
			g0, h0, logs0 := runtime.NumGoroutine(), liveHeap(), srv.Logs.Len()
			addr := srv.Addr().String()
			for i := range tc.n {
				hello := &protocol.Hello{Version: protocol.Version, Client: fmt.Sprint("intruder", i), Token: "wrong-token"}
				first := protocol.Control{Type: protocol.TypeHello, Hello: hello}
				var r *raw
				var err error
				if tc.tls {
					r, err = dialRaw(addr, first)
				} else {
					var c net.Conn
					if c, err = net.Dial("tcp", addr); err == nil {
						r, err = rawOver(c, first)
					}
				}
				if err != nil {
					t.Fatalf("attempt %d: %v", i, err)
				}
				r.ys.Close()
				if r.err == nil || r.err.Code != protocol.CodeAuth {
					t.Fatalf("attempt %d: %+v", i, r.err)
				}
			}
			if err := wait(); err != nil {
				t.Fatalf("the legitimate transfer: %v", err)
			}
			t.Logf("the server's log sink grew by %.1f MB", float64(srv.Logs.Len()-logs0)/1e6)
			backToBaselineLogs(t, fmt.Sprintf("after %d refused handshakes", tc.n), g0, h0, []*tt.Logs{srv.Logs}, logs0)
		})
	}
}

// A client may open its control stream and nothing else: a second stream
// is refused (reset) before tunneld allocates anything for it, and what is
// sent on it is not buffered.
func TestClientOpenedStreamsAreRefused(t *testing.T) {
	srv, wait := legit(t)
	g0, h0 := runtime.NumGoroutine(), liveHeap()
	r := rawSession(t, srv.Addr().String(), protocol.Version, tt.Token, "opener", 0)
	if r.welcome == nil {
		t.Fatalf("handshake: %+v", r.err)
	}
	// Each writer sends until its stream is reset or its window (256 KiB:
	// nothing is read) is used up.
	const window = 256 << 10
	var progress [100]atomic.Int64 // bytes written; -1 once the writer ended
	for i := range progress {
		st, err := r.ys.Open()
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		go func() {
			buf := make([]byte, 32<<10)
			for {
				if _, err := st.Write(buf); err != nil {
					progress[i].Store(-1)
					return
				}
				progress[i].Add(int64(len(buf)))
			}
		}()
	}
	tt.Eventually(t, closedBound, "every client-opened stream reset or out of window", func() bool {
		for i := range progress {
			if n := progress[i].Load(); n >= 0 && n < window {
				return false
			}
		}
		return true
	})
	r.ys.Close()
	if err := wait(); err != nil {
		t.Fatalf("the legitimate transfer: %v", err)
	}
	backToBaseline(t, "after 100 client-opened streams", g0, h0)
}

// A client that ends its control stream and keeps the session is closed
// at once, with that said: nothing could reach it any more (a goodbye, a
// tunnel coming up), and its ports are freed for others.
func TestControlStreamEndClosesTheSession(t *testing.T) {
	srv := tt.StartServer(t, tt.ServerConfig(t, nil))
	r := rawSession(t, srv.Addr().String(), protocol.Version, tt.Token, "halfway", 0)
	if r.welcome == nil {
		t.Fatalf("handshake: %+v", r.err)
	}
	if err := r.ctrl.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.ys.Closed():
	case <-time.After(closedBound):
		t.Fatalf("the session is still open %s after the client ended its control stream", closedBound)
	}
	srv.Logs.WaitFor(t, time.Second, "session closed", "client=halfway", "the client closed its control stream")
}

// The control stream must be the client's first stream: a hand-written
// session that opens stream 3 first is refused.
func TestControlStreamMustBeFirst(t *testing.T) {
	srv, wait := legit(t)
	c, err := tt.DialSession(srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	syn := make([]byte, 12)
	syn[1] = 1 // window update
	syn[3] = 1 // SYN
	syn[7] = 3 // stream 3
	if _, err := c.Write(syn); err != nil {
		t.Fatal(err)
	}
	srv.Logs.WaitFor(t, hangBound, "session refused: control stream has the wrong id", "id=3")
	if err := wait(); err != nil {
		t.Fatalf("the legitimate transfer: %v", err)
	}
}

// An address that keeps failing handshakes is turned away at accept once
// past failed_handshakes_per_minute, and its refusals stop being one log
// line each: the allowance is logged in full, the rest in one summary.
func TestFailedHandshakesAreRateLimited(t *testing.T) {
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) { c.FailedHandshakesPerMinute = 5 }))
	hello := &protocol.Hello{Version: protocol.Version, Client: "guesser", Token: "wrong-token-0000000000"}
	refused, closed := 0, 0
	for range 20 {
		r, err := dialRaw(srv.Addr().String(), protocol.Control{Type: protocol.TypeHello, Hello: hello})
		switch {
		case err != nil:
			closed++ // closed at accept: no answer at all
		case r.err != nil && r.err.Code == protocol.CodeAuth:
			refused++
			r.ys.Close()
		default:
			t.Fatalf("a wrong token got %+v", r)
		}
	}
	if refused != 5 || closed != 15 {
		t.Fatalf("20 wrong tokens: %d refused with an answer, %d closed at accept; want 5 and 15", refused, closed)
	}
	srv.Stop(t) // the last sweep writes the summary
	if n := strings.Count(srv.Logs.String(), `msg="session refused"`); n != 5 {
		t.Errorf("%d full refusal lines, want 5 (the allowance)", n)
	}
	srv.Logs.WaitFor(t, time.Second, "handshakes refused from address", "addr=127.0.0.1", "closed_at_accept=15")
}

// Connections that connect and say nothing hold a handshake slot each, up
// to handshake_limit_per_address; the rest are closed at accept, costing
// no goroutine, and a client gets in as soon as the silent ones are gone.
func TestSilentConnectionsAreCapped(t *testing.T) {
	g0 := runtime.NumGoroutine()
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.HandshakeLimitPerAddress = 8
		c.HandshakeTimeout = config.Duration(30 * time.Second) // the admitted ones stay
	}))
	var conns []net.Conn
	var closed atomic.Int64
	for range 200 {
		c, err := net.Dial("tcp", srv.Addr().String())
		if err != nil {
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatal(err)
			}
			closed.Add(1) // closed at accept before connect looked (see tt.DialEnded)
			continue
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// The ones past the cap are closed at accept; the 8 admitted wait for
	// their handshake, far longer than this look.
	g := runtime.NumGoroutine() // before this test's readers below
	var wg sync.WaitGroup
	look := time.Now().Add(5 * time.Second)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(look)
			if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				closed.Add(1)
			}
		}()
	}
	wg.Wait()
	closedNow := int(closed.Load())
	t.Logf("200 silent connections: %d closed at accept, goroutines %d (before the server: %d)", closedNow, g, g0)
	if closedNow != 200-8 {
		t.Errorf("%d of 200 silent connections closed at accept, want 192 (cap 8 per address)", closedNow)
	}
	if g > g0+8*8+40 {
		t.Errorf("%d goroutines for 8 handshakes in progress (before the server: %d)", g, g0)
	}
	// The silent ones leave: their slots are free at once, a client gets in.
	for _, c := range conns {
		c.Close()
	}
	echo := tt.NewEcho(t)
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{"echo": {Local: echo.Addr()}}, nil))
	cl.WaitUp(t, hangBound)
}
