package mux

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

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
	ln, err := Listen(context.Background(), "127.0.0.1:0", so)
	if err != nil {
		t.Fatal(err)
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
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	sc, ok := <-accepted
	if !ok {
		t.Fatal("server side: accept or handshake failed")
	}
	t.Cleanup(func() { sc.Close() })
	return cc, sc
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
	acceptAll(srv, func(*yamux.Stream) {})
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		st, err := cli.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				_, err := Stream{st}.Read(make([]byte, 10))
				errs <- err
				return
			}
			_, err := Stream{st}.Write(make([]byte, 512<<10))
			errs <- err
		}()
	}
	time.Sleep(200 * time.Millisecond) // let them block
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

// acceptAll hands every stream s accepts to serve, until s closes.
func acceptAll(s *Session, serve func(*yamux.Stream)) {
	go func() {
		for {
			st, err := s.AcceptStream()
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
	acceptAll(srv, func(st *yamux.Stream) { go io.Copy(io.Discard, st) })
	const n = 64
	var wg, started sync.WaitGroup
	errs := make(chan error, n)
	started.Add(n)
	for range n {
		st, err := cli.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			first := true
			for {
				_, err := Stream{st}.Write(buf)
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
	accepted := make(chan *yamux.Stream, 2)
	go func() {
		for {
			st, err := srv.AcceptStream()
			if err != nil {
				return
			}
			accepted <- st
		}
	}()
	// Clean remote close: io.EOF.
	a, _ := cli.OpenStream()
	a.Write([]byte("x"))
	sa := <-accepted
	sa.Close()
	if _, err := io.ReadAll(Stream{a}); err != nil {
		t.Fatalf("clean close: %v", err)
	}
	// Session death: ErrSessionLost.
	b, _ := cli.OpenStream()
	b.Write([]byte("y"))
	<-accepted
	go srv.Close()
	if _, err := io.ReadAll(Stream{b}); !errors.Is(err, ErrSessionLost) {
		t.Fatalf("session death: %v, want ErrSessionLost", err)
	}
}

func TestCause(t *testing.T) {
	for err, want := range map[error]string{
		io.EOF: "closed by peer",
		nil:    "closed",
	} {
		if got := Cause(err); got != want {
			t.Errorf("Cause(%v) = %q, want %q", err, got, want)
		}
	}
}

// Abort (the patched Stream.Reset) reaches the peer as a reset: its read
// fails with ECONNRESET after the data it had, and so does its next write;
// the session lives on and forgets the stream on both ends.
func TestStreamResetReachesPeer(t *testing.T) {
	o := testOptions()
	cli, srv, _, _ := pair(t, o)
	a, sa := openPair(t, cli, srv, "partial")
	buf := make([]byte, 7)
	if _, err := io.ReadFull(sa, buf); err != nil {
		t.Fatal(err)
	}
	if err := (Stream{a}).Abort(); err != nil {
		t.Fatal(err)
	}
	_ = sa.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := (Stream{sa}).Read(buf); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("peer read after reset: %v, want connection reset", err)
	}
	if _, err := sa.Write([]byte("late")); err == nil {
		t.Error("peer write after reset succeeded")
	}
	if cli.IsClosed() || srv.IsClosed() {
		t.Fatal("a stream reset closed the session")
	}
	if n := cli.NumStreams() + srv.NumStreams(); n != 0 {
		t.Errorf("%d streams left after the reset", n)
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
	if (Stream{sa}).WaitReadableFor(200 * time.Millisecond) {
		t.Fatal("WaitReadableFor reported data on an idle stream")
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("WaitReadableFor returned after %s on an idle stream", d)
	}
	done := make(chan bool, 1)
	go func() { done <- (Stream{sa}).WaitReadableFor(time.Minute) }()
	select {
	case <-done:
		t.Fatal("WaitReadableFor returned on an idle stream")
	case <-time.After(200 * time.Millisecond):
	}
	a.Write([]byte("data"))
	if !<-done {
		t.Fatal("WaitReadableFor timed out although data arrived")
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(sa, got); err != nil || string(got) != "data" {
		t.Fatalf("data after WaitReadableFor: %q %v", got, err)
	}
	a.Close()
	go func() { done <- (Stream{sa}).WaitReadableFor(time.Minute) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("WaitReadableFor blocked on a closed stream")
	}
}

// NotifyReadable fires once when data arrives, at once when data is
// already there, and on the peer's close; Readable agrees.
func TestStreamNotifyReadable(t *testing.T) {
	o := testOptions()
	cli, srv, _, _ := pair(t, o)
	a, raw := openPair(t, cli, srv, "1")
	sa := Stream{raw}
	fired := make(chan struct{}, 4)
	hook := func() { fired <- struct{}{} }
	// Data already there: at once.
	sa.NotifyReadable(hook)
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatal("no call with data already buffered")
	}
	if !sa.Readable() {
		t.Fatal("Readable is false with data buffered")
	}
	io.ReadFull(sa, make([]byte, 1))
	if sa.Readable() {
		t.Fatal("Readable is true on a drained stream")
	}
	// Idle: no call until data arrives, then exactly one.
	sa.NotifyReadable(hook)
	select {
	case <-fired:
		t.Fatal("called on an idle stream")
	case <-time.After(100 * time.Millisecond):
	}
	a.Write([]byte("2"))
	a.Write([]byte("3"))
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatal("no call when data arrived")
	}
	time.Sleep(50 * time.Millisecond)
	if len(fired) != 0 {
		t.Fatal("called more than once")
	}
	io.ReadFull(sa, make([]byte, 2))
	// The peer's close makes it readable (EOF).
	sa.NotifyReadable(hook)
	a.Close()
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatal("no call on the peer's close")
	}
	if _, err := sa.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after close: %v", err)
	}
}

// openPair opens a stream on cli, writes first on it (the peer sees a
// stream with its first frame) and returns it with srv's accepted end.
func openPair(t *testing.T, cli, srv *Session, first string) (*yamux.Stream, *yamux.Stream) {
	t.Helper()
	accepted := make(chan *yamux.Stream, 1)
	go func() {
		if st, err := srv.AcceptStream(); err == nil {
			accepted <- st
		}
	}()
	a, err := cli.OpenStream()
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

// A stream opened with its first bytes announces itself with them: the SYN
// rides on the data frame, so the peer never holds a stream whose first
// bytes are still queued behind other streams' data. Read off the wire.
// rawPeer returns a server session with options o and the raw TCP conn of
// its peer, for tests that read or write frames by hand.
func rawPeer(t *testing.T, o Options) (net.Conn, *Session) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Server(sc, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return raw, srv
}

func TestOpenStreamWithSendsSYNOnData(t *testing.T) {
	o := testOptions()
	o.StreamWindow = DefaultStreamWindow
	raw, srv := rawPeer(t, o)

	const first = "stream header"
	st, err := srv.OpenStreamWith([]byte(first))
	if err != nil {
		t.Fatal(err)
	}
	_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	// yamux frame header: version, type, flags, stream id, length.
	next := func() (typ byte, flags uint16, id, length uint32) {
		t.Helper()
		for {
			var h [12]byte
			if _, err := io.ReadFull(raw, h[:]); err != nil {
				t.Fatal(err)
			}
			typ, flags = h[1], binary.BigEndian.Uint16(h[2:4])
			id, length = binary.BigEndian.Uint32(h[4:8]), binary.BigEndian.Uint32(h[8:12])
			if typ == 2 { // ping: the heartbeat, not the stream
				continue
			}
			return
		}
	}
	const typeData, typeWindowUpdate, flagSYN = 0, 1, 1
	typ, flags, id, length := next()
	if typ != typeData || flags != flagSYN || id != st.StreamID() || length != uint32(len(first)) {
		t.Fatalf("first frame: type %d flags %#x stream %d length %d; want data, SYN, stream %d, length %d", typ, flags, id, length, st.StreamID(), len(first))
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(raw, body); err != nil {
		t.Fatal(err)
	}
	if string(body) != first {
		t.Fatalf("first frame carries %q, want %q", body, first)
	}
	// Then the window the stream was opened with, as OpenStream announces it.
	typ, flags, id, length = next()
	if typ != typeWindowUpdate || flags != 0 || id != st.StreamID() || length != DefaultStreamWindow-256<<10 {
		t.Fatalf("second frame: type %d flags %#x stream %d delta %d; want a window update of %d", typ, flags, id, length, DefaultStreamWindow-256<<10)
	}
}

// A parked reader with a deliver function gets every byte in order: while
// deliver takes all, past many windows (the window must reopen without a
// Read); while it takes part or nothing, through the buffer and the wake-up,
// as package proxy uses it. Hashes compare what was sent and what arrived.
func TestStreamDeliver(t *testing.T) {
	for _, tc := range []struct {
		name string
		take func(r *mrand.Rand, n int) int
	}{
		{"takes all", func(_ *mrand.Rand, n int) int { return n }},
		{"takes part", func(r *mrand.Rand, n int) int {
			switch r.IntN(4) {
			case 0:
				return 0
			case 1:
				return r.IntN(n + 1)
			}
			return n
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := testOptions()
			o.StreamWindow = DefaultStreamWindow
			cli, srv, _, _ := pair(t, o)
			a, raw := openPair(t, cli, srv, "x")
			sa := Stream{raw}

			// CRC-32C, not SHA-256: the check must be cheap enough that the
			// receive loop outpaces the window-update goroutine, as it does
			// with a socket behind deliver (that race once stalled bulk).
			got := crc32.New(crc32.MakeTable(crc32.Castagnoli))
			r := mrand.New(mrand.NewPCG(1, 2))
			var delivered, woken int
			deliver := func(p []byte) (int, error) {
				n := tc.take(r, len(p))
				got.Write(p[:n])
				delivered++
				return n, nil
			}
			done := make(chan error, 1)
			var wake func()
			wake = func() {
				go func() {
					woken++
					buf := make([]byte, 64<<10)
					for sa.Readable() {
						n, err := sa.Read(buf)
						got.Write(buf[:n])
						if err == io.EOF {
							done <- nil
							return
						}
						if err != nil {
							done <- err
							return
						}
					}
					sa.NotifyReadableOrDeliver(wake, deliver)
				}()
			}
			// The first byte is already buffered: this drains it and parks.
			wake()

			want := crc32.New(crc32.MakeTable(crc32.Castagnoli))
			want.Write([]byte("x"))
			src := mrand.New(mrand.NewPCG(3, 4))
			chunk := make([]byte, 256<<10)
			const total = 48 << 20
			for sent := 0; sent < total; sent += len(chunk) {
				for i := range chunk {
					chunk[i] = byte(src.Uint32())
				}
				want.Write(chunk)
				if _, err := a.Write(chunk); err != nil {
					t.Fatal(err)
				}
			}
			a.Close()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("stalled: the sender's window never reopened, or a wake-up was lost")
			}
			if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
				t.Fatal("data differs from what was sent")
			}
			t.Logf("%d deliveries, %d wake-ups", delivered, woken)
			if delivered == 0 {
				t.Fatal("nothing went through deliver")
			}
		})
	}
}

// Many short streams, each one byte and a close, read by parked readers as
// package proxy reads them: the wake-up on the close races the reader's
// window update. A lock-order inversion between the two once stalled the
// receive loop for good (found by TestSlowLocalService, 300 refused dials).
func TestStreamDeliverShortStreams(t *testing.T) {
	o := testOptions()
	cli, srv, _, _ := pair(t, o)
	const n = 5000
	ended := make(chan error, n)
	go func() {
		for range n {
			raw, err := srv.AcceptStream()
			if err != nil {
				return
			}
			sa := Stream{raw}
			var wake func()
			wake = func() {
				go func() {
					buf := make([]byte, 1) // a Read, and its window update, per byte
					for sa.Readable() {
						if _, err := sa.Read(buf); err != nil {
							if err == io.EOF {
								err = nil
							}
							sa.Close()
							ended <- err
							return
						}
					}
					sa.NotifyReadableOrDeliver(wake, func(p []byte) (int, error) { return len(p), nil })
				}()
			}
			wake()
		}
	}()
	go func() {
		for range n {
			a, err := cli.OpenStreamWith([]byte("x"))
			for i := 0; err == nil && i < 8; i++ {
				_, err = a.Write([]byte("y"))
			}
			if err == nil {
				a.Close()
			}
			if err != nil {
				ended <- err
				return
			}
		}
	}()
	timeout := time.After(30 * time.Second)
	for i := range n {
		select {
		case err := <-ended:
			if err != nil {
				t.Fatal(err)
			}
		case <-timeout:
			// A deadlock: Close in the cleanup would hang on the same
			// locks, so report with every stack and end the run here.
			stacks := make([]byte, 4<<20)
			stacks = stacks[:runtime.Stack(stacks, true)]
			fmt.Fprintf(os.Stderr, "--- FAIL: %s: %d of %d streams ended; the receive loop is stuck\n%s", t.Name(), i, n, stacks)
			os.Exit(1)
		}
	}
}

// A peer that overruns one stream's receive window loses that stream — it
// is reset — and nothing else: the session and its other streams go on.
// The frames are written by hand, as a misbehaving peer would.
func TestWindowOverrunResetsOnlyThatStream(t *testing.T) {
	// testOptions' 256 KiB stream window: accepting cannot widen it, so
	// the overrun does not depend on when the test accepts.
	raw, srv := rawPeer(t, testOptions())

	const typeData, typeWindowUpdate, flagSYN, flagRST = 0, 1, 1, 8
	frame := func(typ byte, flags uint16, id uint32, body []byte) []byte {
		h := make([]byte, 12, 12+len(body))
		h[1] = typ
		binary.BigEndian.PutUint16(h[2:4], flags)
		binary.BigEndian.PutUint32(h[4:8], id)
		binary.BigEndian.PutUint32(h[8:12], uint32(len(body)))
		return append(h, body...)
	}
	// Stream 1 opens and then sends more than the 256 KiB initial window;
	// stream 3 opens after it and sends a little.
	var out []byte
	out = append(out, frame(typeData, flagSYN, 1, []byte("a"))...)
	out = append(out, frame(typeData, 0, 1, make([]byte, 300<<10))...)
	out = append(out, frame(typeData, 0, 1, []byte("more, dropped too"))...)
	out = append(out, frame(typeData, flagSYN, 3, []byte("still here"))...)
	go func() { _, _ = raw.Write(out) }()

	accept := func() *yamux.Stream {
		t.Helper()
		st, err := srv.AcceptStream()
		if err != nil {
			t.Fatalf("accept: %v (the session ended)", err)
		}
		return st
	}
	s1, s3 := accept(), accept()
	if s1.StreamID() != 1 || s3.StreamID() != 3 {
		t.Fatalf("accepted streams %d and %d, want 1 and 3", s1.StreamID(), s3.StreamID())
	}
	_ = s3.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := s3.Read(buf)
	if err != nil || string(buf[:n]) != "still here" {
		t.Fatalf("stream 3 read %q, %v; want its data", buf[:n], err)
	}
	// The overrun stream is reset: a RST goes to the peer, and its reader
	// sees the reset rather than any of the overrun bytes.
	_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		var h [12]byte
		if _, err := io.ReadFull(raw, h[:]); err != nil {
			t.Fatalf("no RST for stream 1 on the wire: %v", err)
		}
		typ, flags := h[1], binary.BigEndian.Uint16(h[2:4])
		id, length := binary.BigEndian.Uint32(h[4:8]), binary.BigEndian.Uint32(h[8:12])
		if typ == typeData {
			if _, err := io.CopyN(io.Discard, raw, int64(length)); err != nil {
				t.Fatal(err)
			}
		}
		if id == 1 && typ == typeWindowUpdate && flags&flagRST != 0 {
			break
		}
	}
	_ = s1.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	for {
		n, err := s1.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			if !errors.Is(err, yamux.ErrConnectionReset) {
				t.Fatalf("stream 1 ended with %v, want a reset", err)
			}
			break
		}
	}
	if len(got) > 1 {
		t.Fatalf("stream 1 read %d bytes; only the 1 before the overrun may arrive", len(got))
	}
	if srv.IsClosed() {
		t.Fatal("the session ended")
	}
}

// yamux's own lines: the socket failure that ends a session is the
// owner's to report (once, with its cause), so it stays out of the logs
// at warn; protocol trouble does not.
func TestYamuxLoggerLevels(t *testing.T) {
	cases := []struct {
		line string
		want slog.Level
	}{
		{"[ERR] yamux: Failed to write frames: write tcp 127.0.0.1:1->127.0.0.1:2: write: broken pipe", slog.LevelDebug},
		{"[ERR] yamux: Failed to write frame: write tcp 127.0.0.1:1->127.0.0.1:2: write: connection reset by peer", slog.LevelDebug},
		{"[ERR] yamux: Failed to read header: read tcp: i/o timeout", slog.LevelDebug},
		{"[ERR] yamux: Failed to read stream data: unexpected EOF", slog.LevelDebug},
		{"[ERR] yamux: Failed to discard data: read tcp: use of closed network connection", slog.LevelDebug},
		{"[ERR] yamux: keepalive failed: i/o deadline reached", slog.LevelDebug},
		{"[ERR] yamux: receive window exceeded, resetting the stream (stream: 5, remain: 1, recv: 2)", slog.LevelWarn},
		{"[ERR] yamux: Invalid protocol version: 7", slog.LevelWarn},
		{"[ERR] yamux: unexpected FIN flag in state 6", slog.LevelWarn},
		{"[WARN] yamux: frame for missing stream: Vsn:0 Type:1 Flags:0 StreamID:3 Length:0", slog.LevelDebug},
		{"[WARN] yamux: backlog exceeded, forcing connection reset", slog.LevelWarn},
	}
	for _, c := range cases {
		var got []slog.Level
		h := levelRecorder{levels: &got}
		yamuxLogger{l: slog.New(h)}.Printf("%s", c.line)
		if len(got) != 1 || got[0] != c.want {
			t.Errorf("%q: logged at %v, want %v", c.line, got, c.want)
		}
	}
}

type levelRecorder struct{ levels *[]slog.Level }

func (levelRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r levelRecorder) Handle(_ context.Context, rec slog.Record) error {
	*r.levels = append(*r.levels, rec.Level)
	return nil
}
func (r levelRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r levelRecorder) WithGroup(string) slog.Handler      { return r }

// Close leaves nothing of a session running: its monitor, its heartbeat
// pinger and the fork's receive, send and ping-reply goroutines are all
// gone when Close returns, for each of 1,000 sessions opened and closed.
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
			time.Sleep(3 * o.HeartbeatInterval) // let some heartbeats run
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
	}
	stacks := func() string {
		buf := make([]byte, 1<<20)
		return string(buf[:runtime.Stack(buf, true)])
	}
	// The fork's receive loop, when it is the one that saw the conn
	// close, calls Close itself after signalling that it is done, and
	// may run on for the rest of the other Close: moments, not more.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st := stacks()
		if !strings.Contains(st, "hashicorp/yamux.(*Session)") && !strings.Contains(st, "hashicorp/yamux.(*Stream)") &&
			!strings.Contains(st, "internal/mux.(*Session)") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines of closed sessions still run 2 s later:\n%s", st)
		}
	}
	if g := runtime.NumGoroutine(); g > g0+2 {
		t.Errorf("goroutines %d after 1,000 sessions, %d before", g, g0)
	}
}
