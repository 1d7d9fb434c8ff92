package mux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/sockopt"
)

func testOptions() Options {
	return Options{
		KeepAlive:         sockopt.KeepAlive{Idle: 7 * time.Second, Interval: 3 * time.Second, Count: 4},
		UserTimeout:       19 * time.Second,
		HeartbeatInterval: time.Second,
		HeartbeatTimeout:  time.Second,
		HandshakeTimeout:  5 * time.Second,
		StreamWindow:      256 << 10, // small, so TestBlockedStreamsEndOnSessionClose can fill it
		Logger:            slog.New(slog.DiscardHandler),
	}
}

// connPair returns the two ends of a session conn over loopback TCP: the
// client's from Dial with co, the server's from Listen and Handshake with
// so. Both are closed when the test ends.
func connPair(t testing.TB, so, co Options) (cc, sc net.Conn) {
	t.Helper()
	cc, sc, err := dialPair(so, co)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close(); sc.Close() })
	return cc, sc
}

// dialPair is connPair for callers without a test (nettest's MakePipe);
// the caller closes both.
func dialPair(so, co Options) (cc, sc net.Conn, err error) {
	ln, err := Listen(context.Background(), "127.0.0.1:0", so)
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		defer close(accepted)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if hc, err := Handshake(c, so); err == nil {
			accepted <- hc
		}
	}()
	cc, err = Dial(context.Background(), ln.Addr().String(), co)
	if err != nil {
		return nil, nil, err
	}
	sc, ok := <-accepted
	if !ok {
		cc.Close()
		return nil, nil, errors.New("server side: accept or handshake failed")
	}
	return cc, sc, nil
}

// pair returns a connected client and server session over real TCP.
func pair(t testing.TB, o Options) (cli, srv *Session, cc, sc net.Conn) {
	t.Helper()
	cc, sc = connPair(t, o, o)
	var err error
	if cli, err = Client(cc, o); err != nil {
		t.Fatal(err)
	}
	if srv, err = Server(sc, o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close(); srv.Close() })
	return cli, srv, cc, sc
}

func TestSessionSocketOptions(t *testing.T) {
	o := testOptions()
	_, _, cc, sc := pair(t, o)
	for name, c := range map[string]net.Conn{"dialed": cc, "accepted": sc} {
		got, err := sockopt.Read(c.(syscall.Conn))
		if err != nil {
			t.Fatal(err)
		}
		if !got.KeepAlive || got.Idle != 7*time.Second || got.Interval != 3*time.Second || got.Count != 4 || got.UserTimeout != 19*time.Second {
			t.Errorf("%s session socket: %+v", name, got)
		}
	}
}

// The patched yamux: blocked reads and writes end at once when the session
// dies, instead of spinning until Close reaches their stream.
func TestBlockedStreamsEndOnSessionClose(t *testing.T) {
	const n = 1000
	o := testOptions()
	cli, srv, _, _ := pair(t, o)
	// Read nothing: the client's writes fill the window and block.
	acceptAll(srv, func(*Stream) {})
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		st, err := cli.Open()
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				_, err := st.Read(make([]byte, 10))
				errs <- err
				return
			}
			_, err := st.Write(make([]byte, 512<<10))
			errs <- err
		}()
	}
	waitStacks(t, n, "yamux.(*Stream).Read", "yamux.(*Stream).write")
	closed := make(chan struct{})
	go func() { cli.Close(); close(closed) }()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second): // hang detection, not a speed bound
		t.Fatal("blocked stream calls did not return after the session closed")
	}
	<-closed
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrSessionLost) {
			t.Fatalf("blocked call returned %v, not ErrSessionLost", err)
		}
	}
}

// waitStacks waits until n goroutines have one of fns in their stack (a
// function, or a state such as "[IO wait"): blocked there, for a test
// about blocked calls.
func waitStacks(t *testing.T, n int, fns ...string) {
	t.Helper()
	buf := make([]byte, 8<<20)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st := string(buf[:runtime.Stack(buf, true)])
		got := 0
		for _, g := range strings.Split(st, "\n\n") {
			for _, fn := range fns {
				if strings.Contains(g, fn) {
					got++
					break
				}
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines in %v, want %d", got, fns, n)
		}
	}
}

// waitGoroutine waits until a goroutine has all of parts in its stack.
func waitGoroutine(t *testing.T, parts ...string) {
	t.Helper()
	buf := make([]byte, 8<<20)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
	next:
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			for _, p := range parts {
				if !strings.Contains(g, p) {
					continue next
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no goroutine with %q in its stack", parts)
		}
	}
}

// acceptAll hands every stream s accepts to serve, until s closes.
func acceptAll(s *Session, serve func(*Stream)) {
	go func() {
		for {
			st, err := s.Accept()
			if err != nil {
				return
			}
			serve(st)
		}
	}()
}

// A session whose socket fails under writers (here: closed under them)
// fails every write with ErrSessionLost, whichever path the write took:
// its own direct write of the frame, the send loop, or the queue.
func TestWritesTellSessionLossWhenSocketFails(t *testing.T) {
	o := testOptions()
	cli, srv, cc, _ := pair(t, o)
	acceptAll(srv, func(st *Stream) { go io.Copy(io.Discard, st) })
	const n = 64
	var wg, started sync.WaitGroup
	errs := make(chan error, n)
	started.Add(n)
	for range n {
		st, err := cli.Open()
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			first := true
			for {
				_, err := st.Write(buf)
				if first {
					first = false
					started.Done()
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	started.Wait()
	cc.Close()
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrSessionLost) {
			t.Fatalf("write on a session whose socket closed returned %v, not ErrSessionLost", err)
		}
	}
}

func TestStreamReadTellsSessionLossFromEOF(t *testing.T) {
	o := testOptions()
	cli, srv, _, _ := pair(t, o)
	accepted := make(chan *Stream, 2)
	acceptAll(srv, func(st *Stream) { accepted <- st })
	// Clean remote close: io.EOF.
	a, _ := cli.Open()
	a.Write([]byte("x"))
	sa := <-accepted
	sa.CloseWrite()
	if _, err := io.ReadAll(a); err != nil {
		t.Fatalf("clean close: %v", err)
	}
	// Session death: ErrSessionLost.
	b, _ := cli.Open()
	b.Write([]byte("y"))
	<-accepted
	go srv.Close()
	if _, err := io.ReadAll(b); !errors.Is(err, ErrSessionLost) {
		t.Fatalf("session death: %v, want ErrSessionLost", err)
	}
}

func TestCause(t *testing.T) {
	for err, want := range map[error][2]string{
		nil:                                {"closed", KindClosed},
		io.EOF:                             {"closed by peer", KindPeerClosed},
		ErrSessionLost:                     {"session lost", KindSessionLost},
		fmt.Errorf("a: %w", syscall.EPIPE): {"reset by peer", KindReset},
		errStreamReset:                     {"reset by peer", KindReset},
		errDeadline:                        {"timed out", KindTimeout},
		net.ErrClosed:                      {"closed locally", KindClosedLocally},
		&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ETIMEDOUT)}: {"tcp timeout: the peer stopped answering (keepalive or user_timeout)", KindTCPTimeout},
		errors.New("something else"): {"error", KindError},
	} {
		if got, kind := Cause(err), CauseKind(err); got != want[0] || kind != want[1] {
			t.Errorf("Cause(%v) = %q, %q; want %q, %q", err, got, kind, want[0], want[1])
		}
		if !slices.Contains(Kinds, want[1]) {
			t.Errorf("Kinds lacks %q", want[1])
		}
	}
}

// WaitReadableFor blocks on an idle stream until its time is up (false),
// returns once data is buffered (true, leaving it to Read), and returns at
// once on a closed stream.
func TestStreamWaitReadableFor(t *testing.T) {
	o := testOptions()
	cli, srv, _, _ := pair(t, o)
	a, sa := openPair(t, cli, srv, "s")
	buf := make([]byte, 1)
	if _, err := io.ReadFull(sa, buf); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if sa.WaitReadableFor(50 * time.Millisecond) {
		t.Fatal("WaitReadableFor reported data on an idle stream")
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("WaitReadableFor returned after %s on an idle stream", d)
	}
	// The caller's own deadline is back in force afterwards.
	_ = sa.SetReadDeadline(time.Unix(1, 0))
	sa.WaitReadableFor(time.Millisecond)
	if _, err := sa.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the caller's deadline after WaitReadableFor: %v", err)
	}
	_ = sa.SetReadDeadline(time.Time{})
	done := make(chan bool, 1)
	go func() { done <- sa.WaitReadableFor(time.Minute) }()
	waitStacks(t, 1, "internal/mux.(*Stream).WaitReadableFor")
	a.Write([]byte("data"))
	if !<-done {
		t.Fatal("WaitReadableFor timed out although data arrived")
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(sa, got); err != nil || string(got) != "data" {
		t.Fatalf("data after WaitReadableFor: %q %v", got, err)
	}
	a.CloseWrite()
	go func() { done <- sa.WaitReadableFor(time.Minute) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("WaitReadableFor blocked on a closed stream")
	}
}

// openPair opens a stream on cli, writes first on it (the peer sees a
// stream with its first frame) and returns it with srv's accepted end.
func openPair(t *testing.T, cli, srv *Session, first string) (*Stream, *Stream) {
	t.Helper()
	accepted := make(chan *Stream, 1)
	go func() {
		if st, err := srv.Accept(); err == nil {
			accepted <- st
		}
	}()
	a, err := cli.Open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write([]byte(first)); err != nil {
		t.Fatal(err)
	}
	select {
	case sa := <-accepted:
		return a, sa
	case <-time.After(5 * time.Second):
		t.Fatal("stream not accepted")
		return nil, nil
	}
}

// yamux's own lines: the socket failure that ends a session is the
// owner's to report (once, with its cause), so while the socket is failing
// nothing of yamux's reaches warn; on a healthy session protocol trouble
// does. The level follows the session's state, not the line's words.
func TestYamuxLoggerLevels(t *testing.T) {
	cases := []struct {
		line          string
		healthy, fail slog.Level
	}{
		{"[ERR] yamux: Failed to write frames: write tcp 127.0.0.1:1->127.0.0.1:2: write: broken pipe", slog.LevelWarn, slog.LevelDebug},
		{"[ERR] yamux: Failed to read header: read tcp: i/o timeout", slog.LevelWarn, slog.LevelDebug},
		{"[ERR] yamux: receive window exceeded, resetting the stream (stream: 5, remain: 1, recv: 2)", slog.LevelWarn, slog.LevelDebug},
		{"[ERR] yamux: Invalid protocol version: 7", slog.LevelWarn, slog.LevelDebug},
		{"[WARN] yamux: frame for missing stream: Vsn:0 Type:1 Flags:0 StreamID:3 Length:0", slog.LevelDebug, slog.LevelDebug},
		{"[WARN] yamux: backlog exceeded, forcing connection reset", slog.LevelWarn, slog.LevelDebug},
	}
	for _, c := range cases {
		for _, failed := range []bool{false, true} {
			s := &Session{conn: &watchConn{}}
			s.conn.failed.Store(failed)
			var got []slog.Level
			yamuxLogger{l: slog.New(levelRecorder{levels: &got}), s: s}.Printf("%s", c.line)
			want := c.healthy
			if failed {
				want = c.fail
			}
			if len(got) != 1 || got[0] != want {
				t.Errorf("%q (socket failed: %v): logged at %v, want %v", c.line, failed, got, want)
			}
		}
	}
}

// A session whose socket fails under busy streams logs nothing of yamux's
// at warn or above: its owner reports the loss once.
func TestSocketFailureIsNotYamuxWarnings(t *testing.T) {
	var mu sync.Mutex
	var levels []slog.Level
	o := testOptions()
	o.Logger = slog.New(levelRecorder{levels: &levels, mu: &mu})
	cli, srv, cc, _ := pair(t, o)
	acceptAll(srv, func(st *Stream) { go io.Copy(io.Discard, st) })
	for range 16 {
		st, err := cli.Open()
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			buf := make([]byte, 64<<10)
			for {
				if _, err := st.Write(buf); err != nil {
					return
				}
			}
		}()
	}
	waitStacks(t, 16, "internal/mux.(*Stream).Write")
	cc.Close()
	<-cli.Closed()
	<-srv.Closed()
	cli.Close()
	srv.Close()
	mu.Lock()
	defer mu.Unlock()
	for _, l := range levels {
		if l >= slog.LevelWarn {
			t.Fatalf("yamux logged at %v while its socket failed (levels %v)", l, levels)
		}
	}
}

type levelRecorder struct {
	levels *[]slog.Level
	mu     *sync.Mutex // nil when one goroutine logs
}

func (levelRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r levelRecorder) Handle(_ context.Context, rec slog.Record) error {
	if r.mu != nil {
		r.mu.Lock()
		defer r.mu.Unlock()
	}
	*r.levels = append(*r.levels, rec.Level)
	return nil
}
func (r levelRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r levelRecorder) WithGroup(string) slog.Handler      { return r }

// Close leaves nothing of a session running: its monitor (a timer) and
// every goroutine of the fork's session are gone when Close returns, for
// each of 1,000 sessions opened and closed.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	o := testOptions()
	o.HeartbeatInterval = 20 * time.Millisecond // pinging while it is closed
	g0 := runtime.NumGoroutine()
	for i := range 1000 {
		cc, sc := connPair(t, o, o)
		cli, err := Client(cc, o)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := Server(sc, o)
		if err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			// Let some heartbeats and their replies run.
			for _, s := range []*Session{cli, srv} {
				if _, err := s.ys.Ping(); err != nil {
					t.Fatal(err)
				}
			}
		}
		cli.Close()
		srv.Close()
		for _, s := range []*Session{cli, srv} {
			select {
			case <-s.Done():
			default:
				t.Fatalf("session %d: Close returned with its monitor still running", i)
			}
		}
		if i%100 == 0 {
			if g := sessionGoroutines(); g != "" {
				t.Fatalf("session %d: goroutines run on after Close:\n%s", i, g)
			}
		}
	}
	if g := sessionGoroutines(); g != "" {
		t.Fatalf("goroutines run on after Close:\n%s", g)
	}
	if g := runtime.NumGoroutine(); g > g0+2 {
		t.Errorf("goroutines %d after 1,000 sessions, %d before", g, g0)
	}
}

// sessionGoroutines is the stacks of goroutines running code of a session,
// ours or the fork's, that are still there moments after Close returned.
// A goroutine that has signalled its end (its WaitGroup's Done, its done
// channel's close) is still on its way out for a moment, runnable; one
// that waits for anything (a channel, a lock, the poller, a timer) is
// a goroutine Close did not wait for, and so is one still there 1 s later.
func sessionGoroutines() string {
	buf := make([]byte, 1<<20)
	for deadline := time.Now().Add(time.Second); ; runtime.Gosched() {
		var found []string
		exiting := false
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if !strings.Contains(g, "hashicorp/yamux.(*Session)") && !strings.Contains(g, "hashicorp/yamux.(*Stream)") &&
				!strings.Contains(g, "internal/mux.(*Session)") {
				continue
			}
			header, _, _ := strings.Cut(g, "\n")
			if strings.Contains(header, "[runnable]") || strings.Contains(header, "[running]") {
				exiting = true
				continue
			}
			found = append(found, g)
		}
		if len(found) > 0 {
			return strings.Join(found, "\n\n")
		}
		if !exiting {
			return ""
		}
		if time.Now().After(deadline) {
			return "runnable goroutines of closed sessions still there 1 s later"
		}
	}
}

// A session that accepts one stream (a server: the control stream) still
// opens many before the peer acknowledges any: yamux bounds both with one
// AcceptBacklog, and a server's public connections are its opened streams.
func TestOneIncomingStreamManyOutgoing(t *testing.T) {
	so, co := testOptions(), testOptions()
	so.IncomingStreams = 1
	cc, sc := connPair(t, so, co)
	cli, err := Client(cc, co)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv, err := Server(sc, so)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// Nobody accepts on the client: every stream stays unacknowledged.
	opened := make(chan error, 1)
	go func() {
		for i := 0; i < 32; i++ {
			if _, err := srv.OpenWith([]byte("x")); err != nil {
				opened <- err
				return
			}
		}
		opened <- nil
	}()
	select {
	case err := <-opened:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("opening 32 streams the peer has not accepted yet blocked")
	}
}
