package yamux

// Tests of the local patches' API (Reset, NotifyReadable, OpenStreamWith,
// NotifyReadableOrDeliver, the window overrun), on real loopback sockets,
// used as package mux and package proxy of the tunnel use them.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// openPair opens a stream on cli, writes first on it (the peer sees a
// stream with its first frame) and returns it with srv's accepted end.
func openPair(t *testing.T, cli, srv *Session, first string) (*Stream, *Stream) {
	t.Helper()
	accepted := make(chan *Stream, 1)
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

// Reset reaches the peer as a reset: its read fails with
// ErrConnectionReset after the data it had, and so does its next write;
// the session lives on and forgets the stream on both ends.
func TestStreamResetReachesPeer(t *testing.T) {
	cli, srv := tcpSessions(t, initialStreamWindow)
	a, sa := openPair(t, cli, srv, "partial")
	buf := make([]byte, 7)
	if _, err := io.ReadFull(sa, buf); err != nil {
		t.Fatal(err)
	}
	if err := a.Reset(); err != nil {
		t.Fatal(err)
	}
	_ = sa.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := sa.Read(buf); !errors.Is(err, ErrConnectionReset) {
		t.Fatalf("peer read after reset: %v, want ErrConnectionReset", err)
	}
	if _, err := sa.Write([]byte("late")); err == nil {
		t.Error("peer write after reset succeeded")
	}
	if cli.IsClosed() || srv.IsClosed() {
		t.Fatal("a stream reset closed the session")
	}
	deadline := time.Now().Add(5 * time.Second)
	for cli.NumStreams()+srv.NumStreams() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams left after the reset", cli.NumStreams()+srv.NumStreams())
		}
		time.Sleep(time.Millisecond)
	}
}

// NotifyReadable fires once when data arrives, at once when data is
// already there, and on the peer's close; Readable agrees.
func TestStreamNotifyReadable(t *testing.T) {
	cli, srv := tcpSessions(t, initialStreamWindow)
	a, sa := openPair(t, cli, srv, "1")
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
	if _, err := io.ReadFull(sa, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if sa.Readable() {
		t.Fatal("Readable is true on a drained stream")
	}
	// Idle: no call until data arrives, then exactly one. Nothing can make
	// the hook fire early but a bug, so a short look suffices to catch it
	// often without making the test wait on a clock.
	sa.NotifyReadable(hook)
	select {
	case <-fired:
		t.Fatal("called on an idle stream")
	case <-time.After(20 * time.Millisecond):
	}
	if _, err := a.Write([]byte("2")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatal("no call when data arrived")
	}
	// A second arrival after the hook fired must not call it again: wait
	// until that arrival is buffered (Readable sees both bytes), then look.
	if _, err := a.Write([]byte("3")); err != nil {
		t.Fatal(err)
	}
	waitBuffered(t, sa, 2)
	if len(fired) != 0 {
		t.Fatal("called more than once")
	}
	if _, err := io.ReadFull(sa, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
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

// waitBuffered waits until s has n bytes buffered.
func waitBuffered(t *testing.T, s *Stream, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.recvLock.Lock()
		got := s.recvBuf.Len()
		s.recvLock.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes buffered, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// A stream opened with its first bytes announces itself with them: the SYN
// rides on the data frame, so the peer never holds a stream whose first
// bytes are still queued behind other streams' data. Read off the wire.
func TestOpenStreamWithSendsSYNOnData(t *testing.T) {
	srv, raw := rawServer(t, func(c *Config) { c.MaxStreamWindowSize = testWindow })

	const first = "stream header"
	st, err := srv.OpenStreamWith([]byte(first))
	if err != nil {
		t.Fatal(err)
	}
	_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	next := func() (typ byte, flags uint16, id, length uint32) {
		t.Helper()
		var h [headerSize]byte
		if _, err := io.ReadFull(raw, h[:]); err != nil {
			t.Fatal(err)
		}
		return h[1], binary.BigEndian.Uint16(h[2:4]), binary.BigEndian.Uint32(h[4:8]), binary.BigEndian.Uint32(h[8:12])
	}
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
	if typ != typeWindowUpdate || flags != 0 || id != st.StreamID() || length != testWindow-initialStreamWindow {
		t.Fatalf("second frame: type %d flags %#x stream %d delta %d; want a window update of %d", typ, flags, id, length, testWindow-initialStreamWindow)
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
			cli, srv := tcpSessions(t, testWindow)
			a, sa := openPair(t, cli, srv, "x")

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
// receive loop for good (found by the tunnel's TestSlowLocalService, 300
// refused dials).
func TestStreamDeliverShortStreams(t *testing.T) {
	cli, srv := tcpSessions(t, initialStreamWindow)
	const n = 5000
	ended := make(chan error, n)
	go func() {
		for i := 0; i < n; i++ {
			sa, err := srv.AcceptStream()
			if err != nil {
				return
			}
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
		for i := 0; i < n; i++ {
			a, err := cli.OpenStreamWith([]byte("x"))
			for j := 0; err == nil && j < 8; j++ {
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
	for i := 0; i < n; i++ {
		select {
		case err := <-ended:
			if err != nil {
				t.Fatal(err)
			}
		case <-timeout:
			// A deadlock: the cleanup's Close would hang on the same
			// locks and the run would end at go test's own timeout with
			// less to go on. Report with every stack and stop here.
			stacks := make([]byte, 4<<20)
			stacks = stacks[:runtime.Stack(stacks, true)]
			fmt.Fprintf(os.Stderr, "%d of %d streams ended; the receive loop is stuck\n%s", i, n, stacks)
			panic(t.Name() + ": the receive loop is stuck")
		}
	}
}

// A peer that overruns one stream's receive window loses that stream — it
// is reset — and nothing else: the session and its other streams go on.
// The frames are written by hand, as a misbehaving peer would.
func TestWindowOverrunResetsOnlyThatStream(t *testing.T) {
	// The initial window: accepting cannot widen it, so the overrun does
	// not depend on when the test accepts.
	srv, raw := rawServer(t, nil)

	data := func(flags uint16, id uint32, body []byte) []byte {
		return append(frame(typeData, flags, id, uint32(len(body))), body...)
	}
	// Stream 1 opens and then sends more than the 256 KiB initial window;
	// stream 3 opens after it and sends a little.
	var out []byte
	out = append(out, data(flagSYN, 1, []byte("a"))...)
	out = append(out, data(0, 1, make([]byte, 300<<10))...)
	out = append(out, data(0, 1, []byte("more, dropped too"))...)
	out = append(out, data(flagSYN, 3, []byte("still here"))...)
	go func() { _, _ = raw.Write(out) }()

	accept := func() *Stream {
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
		var h [headerSize]byte
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
			if !errors.Is(err, ErrConnectionReset) {
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

// A sink gets a frame in pieces of at most Config.DeliverBufferSize.
func TestDeliverBufferSize(t *testing.T) {
	const size = 1000
	srv, raw := rawServer(t, func(c *Config) { c.DeliverBufferSize = size })
	if _, err := raw.Write(append(frame(typeData, flagSYN, 1, 1), 'x')); err != nil {
		t.Fatal(err)
	}
	st, err := srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	calls := make(chan int, 16)
	woken := make(chan struct{}, 1)
	st.NotifyReadableOrDeliver(func() { woken <- struct{}{} },
		func(p []byte) (int, error) { calls <- len(p); return len(p), nil })
	body := bytes.Repeat([]byte{'y'}, 5*size+1)
	if _, err := raw.Write(append(frame(typeData, 0, 1, uint32(len(body))), body...)); err != nil {
		t.Fatal(err)
	}
	for total := 0; total < len(body); {
		select {
		case n := <-calls:
			if n > size {
				t.Fatalf("the sink got %d bytes in one call; DeliverBufferSize is %d", n, size)
			}
			total += n
		case <-time.After(5 * time.Second):
			t.Fatalf("the sink got %d of %d bytes", total, len(body))
		}
	}
	if len(woken) != 0 {
		t.Fatal("the sink took everything, yet the reader was woken")
	}
}

// Close returns only when every goroutine of the session has ended: the
// receive, send and ping-reply loops, keepalive, open timers, window
// updates for delivered data and close timers, however the session ends
// (Close from outside, or its own goroutines ending it).
func TestCloseWaitsForEveryGoroutine(t *testing.T) {
	// A goroutine that has called bg.Done is still on its way out for a
	// moment, runnable; one that waits for anything (a channel, a lock,
	// the poller, a timer) is one Close did not wait for, and so is one
	// still there 1 s later.
	sessionGoroutines := func() string {
		buf := make([]byte, 1<<20)
		for deadline := time.Now().Add(time.Second); ; runtime.Gosched() {
			var found []string
			exiting := false
			for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
				if !strings.Contains(g, "yamux.(*Session)") && !strings.Contains(g, "yamux.(*Stream)") {
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
			if !exiting || time.Now().After(deadline) {
				if exiting {
					return "runnable goroutines of closed sessions still there 1 s later"
				}
				return ""
			}
		}
	}
	for i := 0; i < 50; i++ {
		cli, srv := tcpSessions(t, testWindow)
		cli.config.StreamOpenTimeout = time.Minute // open timers running
		cli.config.StreamCloseTimeout = time.Minute
		// A stream whose data goes down the deliver path, so window
		// updates run on goroutines of their own.
		a, sa := openPair(t, cli, srv, "x")
		if _, err := io.ReadFull(sa, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		sa.NotifyReadableOrDeliver(func() {}, func(p []byte) (int, error) { return len(p), nil })
		chunk := make([]byte, 64<<10)
		for j := 0; j < 16; j++ {
			if _, err := a.Write(chunk); err != nil {
				t.Fatal(err)
			}
		}
		// Streams opened and never accepted, one closed (its timer runs).
		for j := 0; j < 4; j++ {
			st, err := cli.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			if j == 0 {
				st.Close()
			}
		}
		if i%2 == 0 {
			cli.Close()
			srv.Close()
		} else {
			// The server's end goes first; the client's receive loop
			// ends its session itself, then Close waits for it.
			srv.Close()
			cli.Close()
		}
		if g := sessionGoroutines(); g != "" {
			t.Fatalf("round %d: goroutines of closed sessions run on after Close:\n%s", i, g)
		}
	}
}

// A session that ends itself (here: the open timeout of a stream the peer
// never acknowledges) does so from one of its own goroutines, which must
// not wait for itself; Close afterwards returns and leaves nothing.
func TestSessionEndingItselfDoesNotWaitForItself(t *testing.T) {
	srv, _ := rawServer(t, func(c *Config) { c.StreamOpenTimeout = 50 * time.Millisecond })
	if _, err := srv.OpenStream(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.CloseChan():
	case <-time.After(10 * time.Second):
		t.Fatal("the open timeout did not end the session")
	}
	done := make(chan struct{})
	go func() { srv.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung after the session ended itself")
	}
}

// Urgent frames (here a new stream's opening frame) go ahead of bulk frames
// already queued: on a session whose socket is full, the opening frame is
// written right after the bulk write in progress, not after every queued
// one, as upstream's single FIFO would have it.
func TestUrgentFramesGoAheadOfBulk(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// Small buffers: a few frames fill the socket.
	_ = raw.(*net.TCPConn).SetReadBuffer(16 << 10)
	_ = c.(*net.TCPConn).SetWriteBuffer(16 << 10)
	cfg := DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.LogOutput = io.Discard
	cfg.ConnectionWriteTimeout = time.Minute
	srv, err := Server(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const bulk = 8
	var streams []*Stream
	for i := 0; i < bulk; i++ {
		st, err := srv.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	for _, st := range streams {
		go func(st *Stream) { _, _ = st.Write(make([]byte, initialStreamWindow)) }(st)
	}
	// Until the socket is full and every bulk frame is queued or being
	// written (one by its own writer, one taken by the send loop, which
	// waits for the write lock): the raw peer reads nothing yet.
	deadline := time.Now().Add(10 * time.Second)
	for len(srv.sendCh) < bulk-2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d bulk frames queued, want %d", len(srv.sendCh), bulk-2)
		}
		time.Sleep(time.Millisecond)
	}
	opened := make(chan uint32, 1)
	go func() {
		st, err := srv.OpenStreamWith([]byte("hello"))
		if err == nil {
			opened <- st.StreamID()
		}
	}()
	for len(srv.urgentCh) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the opening frame was not queued as urgent")
		}
		time.Sleep(time.Millisecond)
	}
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	bulkBefore := 0
	for {
		var h [headerSize]byte
		if _, err := io.ReadFull(raw, h[:]); err != nil {
			t.Fatal(err)
		}
		typ, flags := h[1], binary.BigEndian.Uint16(h[2:4])
		length := binary.BigEndian.Uint32(h[8:12])
		if typ == typeData {
			if _, err := io.CopyN(io.Discard, raw, int64(length)); err != nil {
				t.Fatal(err)
			}
		}
		if typ == typeData && flags&flagSYN != 0 && length == uint32(len("hello")) {
			break
		}
		if typ == typeData && length > 2<<10 {
			bulkBefore++
		}
	}
	go func() { _, _ = io.Copy(io.Discard, raw) }()
	// The write in progress and the send loop's batch in hand go first;
	// never the queue.
	if bulkBefore > 2 {
		t.Fatalf("the opening frame came after %d bulk frames; %d were queued before it", bulkBefore, bulk)
	}
	select {
	case <-opened:
	case <-time.After(10 * time.Second):
		t.Fatal("OpenStreamWith did not return")
	}
}

// While the link is slow, Config.Hold keeps bulk frames back and urgent
// frames still go: a new stream's opening frame reaches the peer while a
// bulk frame waits, and no bulk frame slips out through a direct write.
func TestHoldKeepsBulkBackNotUrgent(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.LogOutput = io.Discard
	var released atomic.Bool
	var holds atomic.Int64
	cfg.Hold = func() time.Duration {
		if released.Load() {
			return 0
		}
		holds.Add(1)
		return time.Millisecond
	}
	srv, err := Server(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.slow.Store(true)

	bulk, err := srv.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := bulk.Write(make([]byte, 64<<10))
		wrote <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for holds.Load() < 5 {
		if time.Now().After(deadline) {
			t.Fatal("the bulk frame was never held")
		}
		time.Sleep(time.Millisecond)
	}
	go func() { _, _ = srv.OpenStreamWith([]byte("hello")) }()

	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	readFrame := func() (typ uint8, flags uint16, length uint32) {
		var h [headerSize]byte
		if _, err := io.ReadFull(raw, h[:]); err != nil {
			t.Fatal(err)
		}
		typ, flags, length = h[1], binary.BigEndian.Uint16(h[2:4]), binary.BigEndian.Uint32(h[8:12])
		if typ == typeData {
			if _, err := io.CopyN(io.Discard, raw, int64(length)); err != nil {
				t.Fatal(err)
			}
		}
		return typ, flags, length
	}
	for {
		typ, flags, length := readFrame()
		if typ == typeData && flags&flagSYN != 0 && length == uint32(len("hello")) {
			break
		}
		if typ == typeData && length > 0 {
			t.Fatalf("a bulk frame of %d bytes went out while Hold held it", length)
		}
	}
	select {
	case err := <-wrote:
		t.Fatalf("the bulk write returned while held: %v", err)
	default:
	}
	released.Store(true)
	var got uint32
	for got < 64<<10 {
		typ, _, length := readFrame()
		if typ == typeData {
			got += length
		}
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
}

// While Hold paces bulk writes, quick writes do not mean a fast link (the
// pacing keeps the kernel's queue empty, so no write waits in it): with
// every other write held the link stays slow. A run of writes that Hold
// lets go at once does mean it, and the link is reported fast again.
func TestHoldAndTheLinksSpeed(t *testing.T) {
	client, server := testConnTCP(t)
	cfg := testConf()
	cfg.EnableKeepAlive = false
	var told []bool
	var mu sync.Mutex
	cfg.SlowLink = func(slow bool) {
		mu.Lock()
		told = append(told, slow)
		mu.Unlock()
	}
	var asked atomic.Int64
	var pacing atomic.Bool
	pacing.Store(true)
	// 0, 2 ms, 0, 0, 2 ms, 0, ...: writes alternate between let go at
	// once and held once.
	cfg.Hold = func() time.Duration {
		if n := asked.Add(1); pacing.Load() && n%3 == 2 {
			return 2 * time.Millisecond
		}
		return 0
	}
	srv, err := Server(server, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := Client(client, testConf())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv.frameCap.Store(minFrameCap)
	srv.noteSlow(true)

	st, err := srv.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		peer, err := cli.AcceptStream()
		if err == nil {
			_, _ = io.Copy(io.Discard, peer)
		}
	}()
	buf := make([]byte, 4<<10)
	for i := 0; i < 100; i++ {
		if _, err := st.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if !srv.slow.Load() {
		t.Fatalf("paced writes, every other one held, turned the link fast (frame cap %d)", srv.frameCap.Load())
	}
	if asked.Load() < 100 {
		t.Errorf("Hold was asked %d times for 100 bulk writes: some went around it", asked.Load())
	}
	pacing.Store(false)
	for i := 0; i < 200 && srv.slow.Load(); i++ {
		if _, err := st.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if srv.slow.Load() {
		t.Fatalf("still slow after 200 writes Hold let go at once (frame cap %d)", srv.frameCap.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(told) != 2 || !told[0] || told[1] {
		t.Errorf("SlowLink told %v, want [true false]", told)
	}
}

// A bulk frame that Hold kept back, and that urgent frames passed while
// it waited, was still held: its write counts from when it left the queue,
// not as one Hold let go at once. Before, the urgent batch forgot the hold,
// and a link whose every bulk frame waited (with pings and window updates
// going meanwhile) looked fast after eight writes; frames grew back to
// their full size on a slow link.
func TestHeldFramePassedByUrgentFrames(t *testing.T) {
	client, server := testConnTCP(t)
	cfg := testConf()
	cfg.EnableKeepAlive = false
	cfg.SlowLink = func(bool) {}
	var srv *Session
	var asked atomic.Int64
	// Every bulk frame is held: asked first, Hold takes 2 ms (time the
	// frame spends held), queues a ping and says wait 5 ms more; the ping
	// goes at once; asked again, Hold lets the frame go.
	cfg.Hold = func() time.Duration {
		if asked.Add(1)%2 == 1 {
			time.Sleep(2 * time.Millisecond)
			srv.SendPing()
			return 5 * time.Millisecond
		}
		return 0
	}
	srv, err := Server(server, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := Client(client, testConf())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv.frameCap.Store(minFrameCap)
	srv.noteSlow(true)

	st, err := srv.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		peer, err := cli.AcceptStream()
		if err == nil {
			_, _ = io.Copy(io.Discard, peer)
		}
	}()
	buf := make([]byte, 4<<10)
	for i := 0; i < 100; i++ {
		if _, err := st.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if !srv.slow.Load() {
		t.Fatalf("bulk writes that each waited a millisecond or more turned the link fast (frame cap %d)", srv.frameCap.Load())
	}
}

// SendPing queues a ping without waiting for its answer, which still
// comes back (a heartbeat only needs something to arrive); on a closed
// session it reports false.
func TestSendPing(t *testing.T) {
	c, s := testConnTCP(t)
	client, server := testClientServerConfig(t, c, s, testConfNoKeepAlive(), testConfNoKeepAlive())
	defer client.Close()
	defer server.Close()
	before := runtime.NumGoroutine()
	for i := 0; i < 10; i++ {
		if !client.SendPing() {
			t.Fatalf("ping %d was not queued", i)
		}
	}
	if g := runtime.NumGoroutine(); g > before {
		t.Errorf("%d goroutines after 10 pings, %d before: SendPing must not wait", g, before)
	}
	// The answers arrive: a blocking Ping after them is answered too, and
	// the session still knows no pending ping of SendPing's.
	if _, err := client.Ping(); err != nil {
		t.Fatal(err)
	}
	client.pingLock.Lock()
	pending := len(client.pings)
	client.pingLock.Unlock()
	if pending != 0 {
		t.Errorf("%d pings pending after their answers", pending)
	}
	client.Close()
	if client.SendPing() {
		t.Error("SendPing on a closed session reported true")
	}
}

// delayConn delivers what is written to it after a delay, in order, as a
// long path would: each Write returns at once.
type delayConn struct {
	net.Conn
	delay time.Duration
	q     chan delayed
	stop  chan struct{}
	once  sync.Once
	done  chan struct{}
}

type delayed struct {
	at   time.Time
	data []byte
}

func newDelayConn(c net.Conn, d time.Duration) *delayConn {
	dc := &delayConn{Conn: c, delay: d, q: make(chan delayed, 1<<14), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(dc.done)
		for {
			select {
			case w := <-dc.q:
				time.Sleep(time.Until(w.at))
				if _, err := c.Write(w.data); err != nil {
					return
				}
			case <-dc.stop:
				return
			}
		}
	}()
	return dc
}

func (c *delayConn) Write(p []byte) (int, error) {
	select {
	case c.q <- delayed{time.Now().Add(c.delay), append([]byte(nil), p...)}:
		return len(p), nil
	case <-c.stop:
		return 0, net.ErrClosed
	}
}

func (c *delayConn) Close() error {
	c.once.Do(func() { close(c.stop) })
	err := c.Conn.Close()
	<-c.done
	return err
}

// With auto-tuning on, a stream's window grows when the measured
// bandwidth-delay product comes close to it (a 256 KiB window over a
// 60 ms round trip), never past StreamWindowCap; without it, or when the
// budget shared by the open streams leaves no room, it stays.
func TestWindowAutoTuning(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cap        uint32
		budget     uint64
		extra      int // streams open besides the bulk one
		wantGrowth bool
		wantAtMost uint32
		delay      time.Duration // each way
	}{
		{"off", 0, 0, 0, false, 256 << 10, 30 * time.Millisecond},
		{"grows to the cap", 1 << 20, 0, 0, true, 1 << 20, 30 * time.Millisecond},
		{"budget shared by streams", 4 << 20, 1 << 20, 7, false, 256 << 10, 30 * time.Millisecond},
		// Loopback with the tunnel's 4 MiB window: pings wait behind
		// data queued in socket buffers, which is not path; the window
		// has no reason to grow.
		{"short path", 16 << 20, 0, 0, false, 4 << 20, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c1, c2 := testConnTCP(t)
			conf := testConfNoKeepAlive()
			conf.MaxStreamWindowSize = 256 << 10
			if tc.delay == 0 {
				conf.MaxStreamWindowSize = 4 << 20
			}
			conf.StreamWindowCap = tc.cap
			conf.WindowBudget = tc.budget
			var cc, sc io.ReadWriteCloser = c1, c2
			if tc.delay > 0 {
				cc, sc = newDelayConn(c1.(net.Conn), tc.delay), newDelayConn(c2.(net.Conn), tc.delay)
			}
			client, err := Client(cc, conf)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			server, err := Server(sc, conf.Clone())
			if err != nil {
				t.Fatal(err)
			}
			defer server.Close()
			for i := 0; i < tc.extra; i++ {
				if _, err := client.OpenStream(); err != nil {
					t.Fatal(err)
				}
			}
			st, err := client.OpenStream()
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
			// The server reads everything of every stream at once.
			go func() {
				for {
					in, err := server.AcceptStream()
					if err != nil {
						return
					}
					go func() { _, _ = io.Copy(io.Discard, in) }()
				}
			}()
			deadline := time.Now().Add(3 * time.Second)
			start := server.window()
			for time.Now().Before(deadline) && server.window() <= start {
				time.Sleep(10 * time.Millisecond)
			}
			if tc.wantGrowth {
				// Let it grow as far as it will.
				time.Sleep(time.Second)
			}
			w := server.window()
			t.Logf("window %d KiB", w>>10)
			if tc.delay == 0 && w > start {
				// Loopback round trips are far under the 5 ms below
				// which windows never grow, unless the machine is so
				// busy that every ping waited that long for a CPU
				// (seen under make stress with other tests running).
				// The rule is what is checked: growth only past it.
				client.Close()
				server.Close() // its receive loop, which owns bdp, has ended
				if server.bdp.minRTT >= bdpMinRTT {
					t.Logf("shortest round trip %v on loopback: a busy machine; growth followed the rule", server.bdp.minRTT)
					return
				}
				t.Errorf("window grew to %d KiB with a shortest round trip of %v", w>>10, server.bdp.minRTT)
				return
			}
			if grew := w > start; grew != tc.wantGrowth {
				t.Errorf("window %d KiB: grew %v, want %v", w>>10, grew, tc.wantGrowth)
			}
			if w > tc.wantAtMost {
				t.Errorf("window %d KiB, above %d KiB", w>>10, tc.wantAtMost>>10)
			}
		})
	}
}

// After a quiet spell a grown window starts small again with the next data.
func TestWindowShrinksAfterIdle(t *testing.T) {
	defer func(d time.Duration) { windowIdleReset = d }(windowIdleReset)
	windowIdleReset = 300 * time.Millisecond
	c1, c2 := testConnTCP(t)
	conf := testConfNoKeepAlive()
	conf.MaxStreamWindowSize = 256 << 10
	conf.StreamWindowCap = 1 << 20
	client, err := Client(newDelayConn(c1.(net.Conn), 30*time.Millisecond), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := Server(newDelayConn(c2.(net.Conn), 30*time.Millisecond), conf.Clone())
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	in, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, in) }()
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(5 * time.Second)
	for server.window() <= 256<<10 {
		if time.Now().After(deadline) {
			t.Fatal("the window never grew")
		}
		if _, err := st.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * windowIdleReset)
	if _, err := st.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for server.window() != 256<<10 {
		if time.Now().After(deadline) {
			t.Fatalf("window %d KiB after a quiet spell, want 256 KiB again", server.window()>>10)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// slowConn writes at rate bytes per second, as a slow link drains a full
// socket buffer.
type slowConn struct {
	net.Conn
	rate float64
}

func (c slowConn) Write(p []byte) (int, error) {
	time.Sleep(time.Duration(float64(len(p)) / c.rate * float64(time.Second)))
	return c.Conn.Write(p)
}

// On a slow link data frames shrink to what it drains in about frameTime,
// so that nothing urgent waits long behind one, and grow back when writes
// stop waiting.
func TestFrameCapFollowsTheLink(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.LogOutput = io.Discard
	const rate = 4 << 20 // 4 MiB/s: a frame of 10 ms is about 40 KiB
	var told []bool
	var toldMu sync.Mutex
	cfg.SlowLink = func(slow bool) {
		toldMu.Lock()
		told = append(told, slow)
		toldMu.Unlock()
	}
	s, err := Server(slowConn{c, rate}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	go func() { _, _ = io.Copy(io.Discard, peer) }()
	st, err := s.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(make([]byte, initialStreamWindow)); err != nil { // 256 KiB
		t.Fatal(err)
	}
	got := s.frameCap.Load()
	if got >= sendBatch || got < minFrameCap {
		t.Fatalf("frame cap %d after slow writes, want below %d and at least %d", got, sendBatch, minFrameCap)
	}
	t.Logf("frame cap on a %d KiB/s link: %d KiB", rate>>10, got>>10)
	// Fast writes let it grow back.
	for i := 0; i < 8; i++ {
		s.noteWrite(64<<10, 100*time.Microsecond)
	}
	if got := s.frameCap.Load(); got != sendBatch {
		t.Fatalf("frame cap %d after fast writes, want %d", got, sendBatch)
	}
	toldMu.Lock()
	defer toldMu.Unlock()
	if len(told) != 2 || !told[0] || told[1] {
		t.Fatalf("SlowLink told %v, want [true false]", told)
	}
}

// With QueueAcceptAck, AcceptStream returns while its ACK is still queued:
// here the socket is full, so nothing can be written, and Accept returns
// all the same; the ACK follows once the socket drains.
func TestQueueAcceptAck(t *testing.T) {
	srv, raw := rawServer(t, func(c *Config) { c.QueueAcceptAck = true })
	// Fill the server's socket: a stream the raw peer opened with a big
	// window, written to until the writes block (the peer reads nothing).
	if _, err := raw.Write(append(frame(typeData, flagSYN, 1, 1), 'a')); err != nil {
		t.Fatal(err)
	}
	bulk, err := srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Write(frame(typeWindowUpdate, 0, 1, 64<<20)); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = bulk.Write(make([]byte, 64<<20)) }()
	// Until the write waits on the full socket.
	buf := make([]byte, 1<<20)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		blocked := false
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "[IO wait") && (strings.Contains(g, "yamux.(*Session).tryDirect") || strings.Contains(g, "yamux.(*Session).sendLoop")) {
				blocked = true
			}
		}
		if blocked {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the bulk write never blocked")
		}
	}
	// A second stream: Accept must not wait for its ACK to be written.
	if _, err := raw.Write(append(frame(typeData, flagSYN, 3, 1), 'b')); err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := srv.AcceptStream()
		accepted <- err
	}()
	select {
	case err := <-accepted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AcceptStream waited for its ACK to be written")
	}
	// The ACK for stream 3 reaches the peer once it reads.
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		var h [headerSize]byte
		if _, err := io.ReadFull(raw, h[:]); err != nil {
			t.Fatalf("no ACK for stream 3: %v", err)
		}
		typ, flags := h[1], binary.BigEndian.Uint16(h[2:4])
		id, length := binary.BigEndian.Uint32(h[4:8]), binary.BigEndian.Uint32(h[8:12])
		if typ == typeData {
			if _, err := io.CopyN(io.Discard, raw, int64(length)); err != nil {
				t.Fatal(err)
			}
		}
		if id == 3 && flags&flagACK != 0 {
			return
		}
	}
}

// Sessions share the buffers that carry frames to a sink: after 40
// sessions each delivered a frame and went idle, the heap holds a buffer
// or two, not 40 of DeliverBufferSize (each session kept its own before).
func TestSinkBuffersAreShared(t *testing.T) {
	const sessions = 40
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	type pair struct{ a, sa *Stream }
	var pairs []pair
	for i := 0; i < sessions; i++ {
		cli, srv := tcpSessions(t, testWindow)
		a, sa := openPair(t, cli, srv, "x")
		if _, err := sa.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		pairs = append(pairs, pair{a, sa})
	}
	before := heap()
	for _, p := range pairs {
		var got atomic.Int64
		done := make(chan struct{})
		p.sa.NotifyReadableOrDeliver(func() {}, func(b []byte) (int, error) {
			if got.Add(int64(len(b))) == 64<<10 {
				close(done)
			}
			return len(b), nil
		})
		if _, err := p.a.Write(make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("delivered %d of %d bytes", got.Load(), 64<<10)
		}
	}
	after := heap()
	grown := int64(after) - int64(before)
	t.Logf("heap %d KiB before the deliveries, %d KiB after", before>>10, after>>10)
	if limit := int64(4 * defaultDeliverBufferSize); grown > limit {
		t.Fatalf("heap grew %d KiB after %d sessions delivered a frame each, want at most %d KiB",
			grown>>10, sessions, limit>>10)
	}
	runtime.KeepAlive(pairs)
}

// With ReadBufferSize negative the receive loop reads the conn itself (a
// TLS conn buffers whole records): every byte still arrives, in order, in
// both directions, in large frames and in small ones.
func TestUnbufferedReadOverTLS(t *testing.T) {
	c, s := testConnTLS(t)
	cfg := testConfNoKeepAlive()
	cfg.ReadBufferSize = -1
	client, server := testClientServerConfig(t, c, s, cfg, cfg.Clone())
	if client.bufRead != c || server.bufRead != s {
		t.Fatalf("receive loops read through %T and %T, want the TLS conns", client.bufRead, server.bufRead)
	}
	a, sa := openPair(t, client, server, "x")
	if _, err := sa.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	send := func(w *Stream) [32]byte {
		h := sha256.New()
		r := mrand.New(mrand.NewPCG(5, 6))
		for i := 0; i < 400; i++ {
			b := make([]byte, 1+r.IntN(64<<10))
			for j := range b {
				b[j] = byte(r.Uint32())
			}
			h.Write(b)
			if _, err := w.Write(b); err != nil {
				t.Error(err)
				break
			}
		}
		w.Close()
		return [32]byte(h.Sum(nil))
	}
	recv := func(r *Stream) [32]byte {
		h := sha256.New()
		if _, err := io.Copy(h, r); err != nil {
			t.Error(err)
		}
		return [32]byte(h.Sum(nil))
	}
	var wg sync.WaitGroup
	var sentAB, sentBA, gotAB, gotBA [32]byte
	wg.Add(4)
	go func() { defer wg.Done(); sentAB = send(a) }()
	go func() { defer wg.Done(); sentBA = send(sa) }()
	go func() { defer wg.Done(); gotAB = recv(sa) }()
	go func() { defer wg.Done(); gotBA = recv(a) }()
	wg.Wait()
	if sentAB != gotAB || sentBA != gotBA {
		t.Fatal("data differs from what was sent")
	}
}

// A send loop gone quiet holds no batch buffer: after 40 sessions each
// sent 256 KiB through their send loops (Hold set and the link slow, so
// nothing goes direct) and went idle, the heap holds a few batch
// buffers, not 40 (each loop kept its largest before).
func TestQuietSendLoopHoldsNoBuffer(t *testing.T) {
	const sessions = 40
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	type pair struct {
		srv *Session
		a   *Stream
		got chan int64
	}
	var pairs []pair
	for i := 0; i < sessions; i++ {
		c1, c2 := testConnTCP(t)
		cfg := testConfNoKeepAlive()
		cfg.SlowLink = func(bool) {}
		cfg.Hold = func() time.Duration { return 0 }
		cfg.LogOutput = io.Discard
		srv, err := Server(c2, cfg)
		if err != nil {
			t.Fatal(err)
		}
		cli, err := Client(c1, testConfNoKeepAlive())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close(); cli.Close() })
		srv.noteSlow(true)
		a, err := srv.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan int64, 1)
		go func() {
			peer, err := cli.AcceptStream()
			if err != nil {
				got <- -1
				return
			}
			// To the end, and closed: the streams are gone, and what
			// stays is the sessions'.
			n, _ := io.Copy(io.Discard, peer)
			peer.Close()
			got <- n
		}()
		pairs = append(pairs, pair{srv, a, got})
	}
	before := heap()
	for _, p := range pairs {
		if _, err := p.a.Write(make([]byte, 256<<10)); err != nil {
			t.Fatal(err)
		}
		p.a.Close()
		select {
		case n := <-p.got:
			if n != 256<<10 {
				t.Fatalf("peer read %d bytes", n)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("data did not arrive")
		}
	}
	// Each loop is back waiting once its session has nothing queued.
	time.Sleep(100 * time.Millisecond)
	after := heap()
	grown := int64(after) - int64(before)
	t.Logf("heap %d KiB before, %d KiB after", before>>10, after>>10)
	if limit := int64(4 * sendBatch); grown > limit {
		t.Fatalf("heap grew %d KiB after %d quiet sessions each sent 256 KiB, want at most %d KiB",
			grown>>10, sessions, limit>>10)
	}
	runtime.KeepAlive(pairs)
}

// vecConn is a conn with writev (WriteBuffers) and write deadlines, as the
// tunnel's session conns have; it records the first byte's address of every
// buffer it is asked to write, to tell a caller's buffer from a copy.
type vecConn struct {
	net.Conn
	mu   sync.Mutex
	seen map[*byte]bool
	most int // the most large buffers one write had
	// writing is whether a WriteBuffers is under way; a failed one
	// returns linger late, as a write cut short may take time to unwind.
	writing atomic.Bool
	linger  time.Duration
}

func (c *vecConn) WriteBuffers(b net.Buffers) (int64, error) {
	c.mu.Lock()
	large := 0
	for _, p := range b {
		if len(p) > 0 {
			c.seen[&p[0]] = true
		}
		if len(p) >= refBody {
			large++
		}
	}
	if large > c.most {
		c.most = large
	}
	c.mu.Unlock()
	c.writing.Store(true)
	defer c.writing.Store(false)
	n, err := b.WriteTo(c.Conn)
	if err != nil {
		time.Sleep(c.linger)
	}
	return n, err
}

func (c *vecConn) wrote(p []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[&p[0]]
}

// forceSendLoop makes every bulk frame of s go through the send loop (as
// while a slow link is paced), where frames of several streams are
// batched; a lone idle writer would otherwise write its frame directly.
func forceSendLoop(cfg *Config) {
	cfg.SlowLink = func(bool) {}
	cfg.Hold = func() time.Duration { return 0 }
}

// The send loop writes large bodies from their callers' buffers, several
// in one writev, and the bytes of several streams sending at once arrive
// whole and in order.
func TestBatchWritesLargeBodiesInPlace(t *testing.T) {
	c1, c2 := testConnTCP(t)
	vc := &vecConn{Conn: c2.(net.Conn), seen: map[*byte]bool{}}
	cfg := testConfNoKeepAlive()
	forceSendLoop(cfg)
	cfg.LogOutput = io.Discard
	srv, err := Server(vc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := Client(c1, testConfNoKeepAlive())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	defer srv.Close()
	srv.noteSlow(true)

	const streams, chunk, chunks = 4, 20 << 10, 64 // chunk >= refBody
	type result struct {
		sum [32]byte
		err error
	}
	got := make(chan result, streams)
	go func() {
		for i := 0; i < streams; i++ {
			peer, err := cli.AcceptStream()
			if err != nil {
				got <- result{err: err}
				return
			}
			go func() {
				h := sha256.New()
				_, err := io.Copy(h, peer)
				peer.Close()
				var r result
				copy(r.sum[:], h.Sum(nil))
				r.err = err
				got <- r
			}()
		}
	}()
	want := map[[32]byte]bool{}
	var inPlace atomic.Int32
	var wg sync.WaitGroup
	sts := make([]*Stream, streams)
	for i := range sts {
		if sts[i], err = srv.OpenStream(); err != nil {
			t.Fatal(err)
		}
	}
	// The first frames of all streams wait together while the test holds
	// the write lock, so the first write carries them all.
	srv.writeMu.Lock()
	for i, st := range sts {
		st := st // go 1.20: one variable for all iterations
		rng := mrand.New(mrand.NewPCG(uint64(i), 7))
		data := make([]byte, chunk*chunks)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		want[sha256.Sum256(data)] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.Close()
			for j := 0; j < chunks; j++ {
				p := data[j*chunk : (j+1)*chunk]
				if _, err := st.Write(p); err != nil {
					t.Error(err)
					return
				}
				if vc.wrote(p) {
					inPlace.Add(1)
				}
			}
		}()
	}
	for len(srv.sendCh) < streams-1 { // the loop holds the first one
		time.Sleep(time.Millisecond)
	}
	srv.writeMu.Unlock()
	wg.Wait()
	for i := 0; i < streams; i++ {
		select {
		case r := <-got:
			if r.err != nil {
				t.Fatal(r.err)
			}
			if !want[r.sum] {
				t.Fatal("a stream's bytes arrived changed")
			}
			delete(want, r.sum)
		case <-time.After(20 * time.Second):
			t.Fatal("streams did not finish")
		}
	}
	// A direct write carries one body; only the send loop's batches
	// carry several, each from its caller's buffer.
	vc.mu.Lock()
	most := vc.most
	vc.mu.Unlock()
	if most < 2 {
		t.Fatalf("no write carried two bodies from their callers' buffers (%d chunks went that way or directly)", inPlace.Load())
	}
}

// A caller that stops waiting for a frame whose body the send loop is
// writing from its buffer returns only once the write is over (the write
// is cut at the caller's deadline, and the session with it), so it can
// reuse the buffer at once: nothing it writes there afterwards reaches
// the peer.
func TestCallerGivingUpWaitsForWriteOfItsBody(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	vc := &vecConn{Conn: a, seen: map[*byte]bool{}, linger: 200 * time.Millisecond}
	cfg := testConfNoKeepAlive()
	forceSendLoop(cfg)
	cfg.ConnectionWriteTimeout = 300 * time.Millisecond
	cfg.LogOutput = io.Discard
	srv, err := Server(vc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.noteSlow(true)

	// The peer reads slowly, a KiB at a time, so that the write of the
	// body is under way when its caller gives up.
	var peerGot bytes.Buffer
	peerDone := make(chan struct{})
	go func() {
		defer close(peerDone)
		p := make([]byte, 1<<10)
		for {
			n, err := b.Read(p)
			peerGot.Write(p[:n])
			if err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	st, err := srv.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte{0x5a}, 64<<10)
	done := make(chan error, 1)
	go func() {
		_, err := st.Write(body)
		done <- err
	}()
	select {
	case err := <-done:
		if vc.writing.Load() {
			t.Fatal("the caller returned while its body was still being written")
		}
		if err == nil {
			t.Fatal("a write the peer cannot take in time succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the caller did not return")
	}
	if !vc.wrote(body) {
		t.Fatal("the body was copied, not written in place: the test proves nothing")
	}
	for i := range body {
		body[i] = 0xff // the caller reuses its buffer
	}
	select {
	case <-srv.CloseChan():
	case <-time.After(10 * time.Second):
		t.Fatal("the session outlived a write cut at its deadline")
	}
	b.Close()
	<-peerDone
	if i := bytes.IndexByte(peerGot.Bytes(), 0xff); i >= 0 {
		t.Fatalf("byte %d the peer read came from the reused buffer", i)
	}
	if peerGot.Len() >= len(body) {
		t.Fatalf("peer read %d bytes: the write was not cut", peerGot.Len())
	}
}
