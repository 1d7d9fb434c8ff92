package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hashicorp/yamux"

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
	const heapSlack = 4 << 20
	deadline := time.Now().Add(10 * time.Second)
	for {
		g, h := runtime.NumGoroutine(), liveHeap()
		if g <= g0 && h <= h0+heapSlack {
			t.Logf("%s: goroutines %d -> %d, heap %.1f -> %.1f MB", what, g0, g, float64(h0)/1e6, float64(h)/1e6)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: goroutines %d -> %d, heap %.1f -> %.1f MB ten seconds later", what, g0, g, float64(h0)/1e6, float64(h)/1e6)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// legit starts a server and a client and a transfer that runs while the
// test plays the attacker; wait returns the transfer's error.
func legit(t *testing.T) (srv *tt.Server, wait func() error) {
	t.Helper()
	echo := tt.NewEcho(t)
	srv = tt.StartServer(t, tt.ServerConfig(t, nil))
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{"echo": {Local: echo.Addr()}}, nil))
	pub := cl.WaitUp(t, hangBound)["echo"]
	done := make(chan error, 1)
	go func() { done <- tt.RoundTrip(tt.Dial(t, pub), 32<<20) }()
	return srv, func() error { return <-done }
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
	c := nc.(*net.TCPConn)
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
	srv, wait := legit(t)
	g0, h0 := runtime.NumGoroutine(), liveHeap()
	const n = 1000
	for i := range n {
		hello := &protocol.Hello{Version: protocol.Version, Client: fmt.Sprint("intruder", i), Token: "wrong-token"}
		r, err := dialRaw(srv.Addr().String(), protocol.Control{Type: protocol.TypeHello, Hello: hello})
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
	backToBaseline(t, fmt.Sprintf("after %d refused handshakes", n), g0, h0)
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
	for i := range 100 {
		st, err := r.ys.OpenStream()
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		// Writes may succeed until the reset arrives; then they fail.
		go func(st *yamux.Stream) { _, _ = io.Copy(st, zeros{}) }(st)
	}
	time.Sleep(200 * time.Millisecond) // let them try
	r.ys.Close()
	if err := wait(); err != nil {
		t.Fatalf("the legitimate transfer: %v", err)
	}
	backToBaseline(t, "after 100 client-opened streams", g0, h0)
}

// The control stream must be the client's first stream: a hand-written
// session that opens stream 3 first is refused.
func TestControlStreamMustBeFirst(t *testing.T) {
	srv, wait := legit(t)
	c, err := net.Dial("tcp", srv.Addr().String())
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
