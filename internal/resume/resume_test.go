package resume

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/nettest"

	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/proxy"
	"github.com/tunnel-dev/tunnel/internal/sockopt"
)

func options() mux.Options {
	return mux.Options{
		KeepAlive:         sockopt.KeepAlive{Idle: time.Hour, Interval: time.Hour, Count: 1},
		UserTimeout:       time.Second, // the monitor samples, and acknowledges, every 250 ms
		HeartbeatInterval: time.Second,
		HeartbeatTimeout:  4 * time.Second,
		HandshakeTimeout:  5 * time.Second,
		StreamWindow:      512 << 10,
		Logger:            slog.New(slog.DiscardHandler),
	}
}

// session is one session between the two ends, over loopback TCP; kill
// cuts its connection under both, as a network failure would.
type session struct {
	cli, srv *mux.Session
	cc, sc   net.Conn
}

func newSession(t *testing.T) *session {
	t.Helper()
	o := options()
	ln, err := mux.Listen(context.Background(), "127.0.0.1:0", o)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	cc, err := mux.Dial(context.Background(), ln.Addr().String(), o)
	if err != nil {
		t.Fatal(err)
	}
	sc, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	s := &session{cc: cc, sc: sc}
	if s.cli, err = mux.Client(cc, o); err != nil {
		t.Fatal(err)
	}
	if s.srv, err = mux.Server(sc, o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s
}

func (s *session) kill() { s.cc.Close(); s.sc.Close() }

func (s *session) close() { s.cli.Close(); s.srv.Close() }

// pair opens a stream on the session: the client's end and the server's.
func (s *session) pair(t *testing.T) (*mux.Stream, *mux.Stream) {
	t.Helper()
	a, err := s.cli.Open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write([]byte{0}); err != nil { // announces the stream
		t.Fatal(err)
	}
	b, err := s.srv.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(b, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// resume moves both ends onto a new stream pair, each told the other's
// read offset, as the daemons will after a reconnect. Both attach at once:
// each resends its tail while the other reads.
func resume(t *testing.T, s *session, ca, cb *Conn) {
	t.Helper()
	a, b := s.pair(t)
	ra, rb := ca.Detach(), cb.Detach()
	errs := make(chan error, 2)
	go func() { errs <- ca.Attach(a, rb) }()
	go func() { errs <- cb.Attach(b, ra) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// transfer writes n seeded bytes on w and returns their hash; drain reads
// n bytes from r and sends the hash of what it read.
func transfer(w *Conn, n int, seed uint64, errs chan<- error) [32]byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	go func() {
		for off := 0; off < n; {
			k := min(n-off, 1+rng.IntN(300<<10))
			if _, err := w.Write(data[off : off+k]); err != nil {
				errs <- err
				return
			}
			off += k
		}
		errs <- nil
	}()
	return sha256.Sum256(data)
}

func drain(r *Conn, n int, sum chan<- [32]byte, errs chan<- error) {
	h := sha256.New()
	if _, err := io.CopyN(h, r, int64(n)); err != nil {
		errs <- err
		return
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	sum <- s
}

// 16 MiB each way with the session cut under the transfer twice: every
// byte arrives once and in order in both directions, what each end kept
// goes once it is acknowledged, half-closes then arrive both ways, and
// nothing is left running.
func TestResumeCarriesBothDirections(t *testing.T) {
	base := runtime.NumGoroutine()
	s := newSession(t)
	a, b := s.pair(t)
	ca, cb := New(a, 10*time.Second), New(b, 10*time.Second)

	const n = 16 << 20
	errs := make(chan error, 4)
	sumAB, sumBA := make(chan [32]byte, 1), make(chan [32]byte, 1)
	wantAB := transfer(ca, n, 1, errs)
	wantBA := transfer(cb, n, 2, errs)
	go drain(cb, n, sumAB, errs)
	go drain(ca, n, sumBA, errs)

	for _, at := range []uint64{3 << 20, 9 << 20} {
		deadline := time.Now().Add(20 * time.Second)
		for cb.Offset() < at || ca.Offset() < at {
			if time.Now().After(deadline) {
				t.Fatalf("offsets %d and %d, waiting for %d", ca.Offset(), cb.Offset(), at)
			}
			time.Sleep(time.Millisecond)
		}
		s.kill()
		s = newSession(t)
		resume(t, s, ca, cb)
	}
	var got [2][32]byte
	for i := 0; i < 4; {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
			i++
		case got[0] = <-sumAB:
			i++
		case got[1] = <-sumBA:
			i++
		case <-time.After(30 * time.Second):
			t.Fatal("the transfers did not finish")
		}
	}
	if got[0] != wantAB || got[1] != wantBA {
		t.Fatal("the bytes read differ from the bytes written")
	}
	if ca.Offset() != n || cb.Offset() != n {
		t.Fatalf("read offsets %d and %d, want %d", ca.Offset(), cb.Offset(), n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for ca.Kept() != 0 || cb.Kept() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d and %d bytes still kept after everything was read", ca.Kept(), cb.Kept())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range []*Conn{ca, cb} {
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []*Conn{ca, cb} {
		if k, err := c.Read(make([]byte, 1)); k != 0 || err != io.EOF {
			t.Fatalf("after the peer's CloseWrite: %d bytes, %v", k, err)
		}
		if c.Offset() != n+1 {
			t.Fatalf("read offset %d after the FIN, want %d", c.Offset(), n+1)
		}
	}
	ca.Close()
	cb.Close()
	s.close()
	waitGoroutines(t, base)
}

// A half-close that the dying session never delivered is delivered on the
// next one, after the data it followed, exactly once.
func TestResumeResendsALostFIN(t *testing.T) {
	s := newSession(t)
	a, b := s.pair(t)
	ca, cb := New(a, 10*time.Second), New(b, 10*time.Second)
	msg := []byte("the last words")
	if _, err := ca.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := ca.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	s.kill()
	s = newSession(t)
	resume(t, s, ca, cb)
	got, err := io.ReadAll(cb)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(msg) {
		t.Fatalf("read %q, want %q", got, msg)
	}
	if _, err := ca.Write([]byte("more")); !errors.Is(err, ErrClosed) {
		t.Fatalf("a write after CloseWrite: %v", err)
	}
	// The other direction is still open: it works after the resume.
	if _, err := cb.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(ca, buf); err != nil || string(buf) != "reply" {
		t.Fatalf("read %q, %v", buf, err)
	}
}

// A peer that claims to have read more than was written, or less than it
// acknowledged, is refused and changes nothing: the real peer then
// resumes. Without a new stream within the window, the connection ends
// and frees what it kept; a closed one whose peer does not read it all
// within the window is reset.
func TestResumeRefusesImpossibleOffsetsAndExpires(t *testing.T) {
	s := newSession(t)
	a, b := s.pair(t)
	ca, cb := New(a, 10*time.Second), New(b, 10*time.Second)
	if _, err := ca.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(cb, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	s.kill()
	s = newSession(t)
	ca.Detach()
	cb.Detach()
	x, y := s.pair(t)
	if err := ca.Attach(x, 1001); !errors.Is(err, ErrOffset) {
		t.Fatalf("an offset past what was written: %v", err)
	}
	x.Abort()
	y.Abort()
	resume(t, s, ca, cb)

	// Expiry: a window of 100 ms and no new stream.
	s2 := newSession(t)
	c, _ := s2.pair(t)
	cc := New(c, 100*time.Millisecond)
	if _, err := cc.Write(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	s2.kill()
	if _, err := cc.Read(make([]byte, 1)); !errors.Is(err, ErrExpired) {
		t.Fatalf("a read after the window: %v", err)
	}
	if _, err := cc.Write([]byte("x")); !errors.Is(err, ErrExpired) {
		t.Fatalf("a write after the window: %v", err)
	}
	if cc.Kept() != 0 {
		t.Fatalf("%d bytes kept after the window", cc.Kept())
	}

	// Closed, attached, and a peer that never reads: reset after the
	// window.
	s3 := newSession(t)
	e, f := s3.pair(t)
	ce := New(e, 100*time.Millisecond)
	if _, err := ce.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if err := ce.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ce.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a close whose peer never reads lingered past its window")
	}
	if !errors.Is(ce.Err(), ErrExpired) || ce.Kept() != 0 {
		t.Fatalf("ended with %v, %d bytes kept", ce.Err(), ce.Kept())
	}
	// The peer's stream is reset (a reset stream reads as one at once,
	// whatever it had buffered).
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := f.Read(make([]byte, 2000))
		if err != nil && err != io.EOF {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the peer's stream was never reset")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Close with data the peer has not read yet lingers, as a TCP close
// drains its send buffer: the connection stays resumable, is resumed
// after the session dies, and ends (Done) only once the peer has read
// everything and the FIN.
func TestCloseLingersUntilThePeerHasReadEverything(t *testing.T) {
	base := runtime.NumGoroutine()
	s := newSession(t)
	a, b := s.pair(t)
	ca, cb := New(a, 10*time.Second), New(b, 10*time.Second)
	errs := make(chan error, 1)
	want := transfer(ca, 256<<10, 3, errs) // less than a window: written without a reader
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	// As a join closes: after the peer's EOF was read.
	if err := cb.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(ca); err != nil || len(rest) != 0 {
		t.Fatalf("read %d bytes, %v; want the EOF", len(rest), err)
	}
	if err := ca.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ca.Done():
		t.Fatal("closed while the peer had read nothing")
	case <-time.After(100 * time.Millisecond):
	}
	if ca.Kept() == 0 {
		t.Fatal("nothing kept for a peer that read nothing")
	}
	s.kill()
	s = newSession(t)
	resume(t, s, ca, cb)
	h := sha256.New()
	if _, err := io.Copy(h, cb); err != nil {
		t.Fatal(err)
	}
	if string(h.Sum(nil)) != string(want[:]) {
		t.Fatal("the bytes read differ from the bytes written")
	}
	select {
	case <-ca.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("still open 5 s after the peer read everything (kept %d)", ca.Kept())
	}
	if !errors.Is(ca.Err(), ErrClosed) || ca.Kept() != 0 {
		t.Fatalf("ended with %v, %d bytes kept", ca.Err(), ca.Kept())
	}
	cb.Close()
	select {
	case <-cb.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the reader's end did not close")
	}
	s.close()
	waitGoroutines(t, base)
}

// slowRead is a stream whose Read, once it has taken bytes from the
// stream, waits to return them until released.
type slowRead struct {
	*mux.Stream
	took, release chan struct{}
}

func (s *slowRead) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	s.took <- struct{}{}
	<-s.release
	return n, err
}

// A Read that has taken bytes off the old stream when Detach comes
// counts them, and Detach waits for it: those bytes were consumed, and
// may have been acknowledged, on the old stream, so the offset it reports
// must include them, or the writer, having dropped them on that
// acknowledgment, finds the offset impossible.
func TestDetachWaitsForARead(t *testing.T) {
	s := newSession(t)
	a, b := s.pair(t)
	sb := &slowRead{Stream: b, took: make(chan struct{}, 1), release: make(chan struct{})}
	ca, cb := New(a, 10*time.Second), New(sb, 10*time.Second)
	if _, err := ca.Write([]byte("12345")); err != nil {
		t.Fatal(err)
	}
	read := make(chan int, 1)
	go func() {
		n, _ := cb.Read(make([]byte, 100))
		read <- n
	}()
	<-sb.took
	offset := make(chan uint64, 1)
	go func() { offset <- cb.Detach() }()
	select {
	case off := <-offset:
		t.Fatalf("Detach returned %d while a Read held bytes of the old stream", off)
	case <-time.After(100 * time.Millisecond):
	}
	close(sb.release)
	if n := <-read; n != 5 {
		t.Fatalf("read %d bytes, want 5", n)
	}
	if off := <-offset; off != 5 {
		t.Fatalf("Detach reported %d, want 5", off)
	}
	ca.Abort()
	cb.Abort()
}

// A reader parked on the connection, as package proxy parks an idle
// direction: data is delivered to its function straight from the receive
// loop and counted in the read offset; a hook set while detached waits
// for the next stream and works there; the connection's end calls it.
func TestParkedReaderAcrossAResume(t *testing.T) {
	s := newSession(t)
	a, b := s.pair(t)
	ca, cb := New(a, 10*time.Second), New(b, 10*time.Second)
	var mu sync.Mutex
	var got []byte
	deliver := func(p []byte) (int, error) {
		mu.Lock()
		got = append(got, p...)
		mu.Unlock()
		return len(p), nil
	}
	woke := make(chan struct{}, 4)
	wake := func() { woke <- struct{}{} }
	received := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			k := len(got)
			mu.Unlock()
			if k == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("delivered %d bytes, want %d", k, n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if cb.Readable() {
		t.Fatal("readable with nothing sent")
	}
	cb.NotifyReadableOrDeliver(wake, deliver)
	if _, err := ca.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	received(5)
	if off := cb.Offset(); off != 5 {
		t.Fatalf("offset %d after 5 bytes delivered, want 5", off)
	}

	// Cut: the hook on the old stream fires (its stream is gone); parked
	// again while detached, the hook waits for the next stream.
	s.kill()
	select {
	case <-woke:
	case <-time.After(5 * time.Second):
		t.Fatal("the hook did not fire when the stream went")
	}
	ca.Detach()
	cb.Detach()
	if cb.Readable() {
		t.Fatal("readable while detached")
	}
	cb.NotifyReadableOrDeliver(wake, deliver)
	if cb.WaitReadableFor(50 * time.Millisecond) {
		t.Fatal("WaitReadableFor: readable while detached")
	}
	s = newSession(t)
	resume(t, s, ca, cb) // Detach again reports the same offsets
	if _, err := ca.Write([]byte(" again")); err != nil {
		t.Fatal(err)
	}
	received(11)
	mu.Lock()
	if string(got) != "hello again" {
		t.Fatalf("delivered %q", got)
	}
	mu.Unlock()

	// The end: a hook set while detached is called.
	ca.Detach()
	cb.Detach()
	cb.NotifyReadableOrDeliver(wake, deliver)
	cb.Abort()
	select {
	case <-woke:
	case <-time.After(5 * time.Second):
		t.Fatal("the hook was not called when the connection ended")
	}
	if !cb.Readable() {
		t.Fatal("an ended connection is not readable (a Read would fail at once)")
	}
	ca.Abort()
}

// A Conn is a net.Conn by golang.org/x/net/nettest: data in order,
// deadlines past, present and future (on a stream, and so far without a
// resume in between), Close unblocking pending calls.
func TestConnConformance(t *testing.T) {
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		s := newSession(t)
		a, b := s.pair(t)
		ca, cb := New(a, 10*time.Second), New(b, 10*time.Second)
		return ca, cb, func() { ca.Abort(); cb.Abort(); s.close() }, nil
	})
}

// Close, as TCP's, is the caller's end: a Read and a Write blocked with
// no deadline (the peer sends nothing and reads nothing) return at once,
// with net.ErrClosed, and later calls fail the same way.
func TestCloseUnblocksPendingCalls(t *testing.T) {
	s := newSession(t)
	a, b := s.pair(t)
	ca, cb := New(a, 10*time.Second), New(b, 10*time.Second)
	defer cb.Abort()
	read := make(chan error, 1)
	go func() {
		_, err := ca.Read(make([]byte, 10))
		read <- err
	}()
	wrote := make(chan error, 1)
	go func() {
		_, err := ca.Write(make([]byte, 4<<20)) // more than the window
		wrote <- err
	}()
	time.Sleep(100 * time.Millisecond)
	if err := ca.Close(); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan error{"read": read, "write": wrote} {
		select {
		case err := <-ch:
			if err == nil {
				t.Fatalf("the pending %s returned no error", name)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("the pending %s is still blocked after Close", name)
		}
	}
	if _, err := ca.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("a read after Close: %v", err)
	}
	if _, err := ca.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("a write after Close: %v", err)
	}
}

// tcpPair is a loopback TCP connection: the dialed end and the accepted.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(); c.Close() })
	return d, c
}

// The tunnel's data path with resumable connections in the middle: a
// public socket joined (package proxy) to one end, the other end joined
// to a local service's socket, 8 MiB each way with the session cut under
// them. Both sockets see every byte in order and each other's
// half-close; the joins end cleanly, the connections end once all was
// read, and nothing is left running.
func TestJoinsCarriedThroughAResume(t *testing.T) {
	base := runtime.NumGoroutine()
	public, publicSrv := tcpPair(t)
	localCli, local := tcpPair(t)
	s := newSession(t)
	a, b := s.pair(t)
	ca, cb := New(a, 10*time.Second), New(b, 10*time.Second)
	joined := make(chan error, 2)
	ctx := context.Background()
	proxy.Go(ctx, publicSrv, "public", ca, "resumable", func(_ proxy.Stats, err error) { joined <- err })
	proxy.Go(ctx, cb, "resumable", localCli, "local", func(_ proxy.Stats, err error) { joined <- err })

	const n = 8 << 20
	// The second half is written only once the session is cut, so the
	// transfer spans the cut however the machine schedules it: a
	// transfer that finished first would leave nothing to resume.
	cut := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-cut:
		default:
			close(cut) // a test that failed before the cut
		}
	})
	send := func(c net.Conn, seed uint64) [32]byte {
		data := make([]byte, n)
		rng := rand.New(rand.NewPCG(seed, seed))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		go func() {
			_, _ = c.Write(data[:n/2])
			<-cut
			_, _ = c.Write(data[n/2:])
			_ = c.(*net.TCPConn).CloseWrite()
		}()
		return sha256.Sum256(data)
	}
	got := func(c net.Conn, out chan<- [32]byte) {
		h := sha256.New()
		_, _ = io.Copy(h, c) // to the peer's half-close
		var s [32]byte
		copy(s[:], h.Sum(nil))
		out <- s
	}
	up, down := make(chan [32]byte, 1), make(chan [32]byte, 1)
	wantUp, wantDown := send(public, 7), send(local, 8)
	go got(local, up)
	go got(public, down)

	deadline := time.Now().Add(20 * time.Second)
	for ca.Offset() < n/3 || cb.Offset() < n/3 {
		if time.Now().After(deadline) {
			t.Fatalf("offsets %d and %d", ca.Offset(), cb.Offset())
		}
		time.Sleep(time.Millisecond)
	}
	s.kill()
	close(cut)
	s = newSession(t)
	resume(t, s, ca, cb)

	for i, c := range []chan [32]byte{up, down} {
		select {
		case sum := <-c:
			if want := [][32]byte{wantUp, wantDown}[i]; sum != want {
				t.Fatalf("direction %d: the bytes read differ from the bytes written", i)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("direction %d did not finish", i)
		}
	}
	for range 2 {
		select {
		case err := <-joined:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a join did not end")
		}
	}
	for _, c := range []*Conn{ca, cb} {
		select {
		case <-c.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("a connection did not end (kept %d)", c.Kept())
		}
	}
	s.close()
	waitGoroutines(t, base)
}

// A peer that reads but never acknowledges cannot make a connection keep
// more than its limit: the writer waits, as for a closed window, and
// goes on once acknowledgments come.
func TestKeptIsBoundedWithoutAcknowledgments(t *testing.T) {
	s := newSession(t)
	a, b := s.pair(t)
	ca := New(a, 10*time.Second)
	const limit = 1 << 20
	ca.LimitKept(limit)
	read := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, b) // never asks for acknowledgments
		read <- n
	}()
	buf := make([]byte, 64<<10)
	_ = ca.SetWriteDeadline(time.Now().Add(time.Second))
	var wrote int
	var err error
	for {
		var n int
		if n, err = ca.Write(buf); err != nil {
			break
		}
		wrote += n
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write: %v, want the deadline", err)
	}
	if wrote > limit+len(buf) || ca.Kept() > limit+len(buf) {
		t.Fatalf("wrote %d, kept %d: past the limit %d", wrote, ca.Kept(), limit)
	}
	t.Logf("wrote %d bytes before waiting; %d kept", wrote, ca.Kept())
	// Acknowledgments free it.
	b.EnableAcks()
	_ = ca.SetWriteDeadline(time.Now().Add(10 * time.Second))
	for range 64 {
		if _, err := ca.Write(buf); err != nil {
			t.Fatalf("write after acknowledgments: %v", err)
		}
	}
	if err := ca.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n := <-read; n != int64(wrote+64*len(buf)) {
		t.Fatalf("peer read %d bytes, %d written", n, wrote+64*len(buf))
	}
	ca.Abort()
}
