package yamux

// Tests of the local patches against a hostile peer: one that floods pings
// and never reads, opens streams it may not, or uses ids that are not its
// own. The peer here writes raw frames on a real loopback socket.

import (
	"errors"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// rawServer returns a server session on one end of a loopback connection
// and the raw other end, for a test to write frames on.
func rawServer(t *testing.T, edit func(*Config)) (*Session, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.LogOutput = io.Discard
	if edit != nil {
		edit(cfg)
	}
	s, err := Server(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		peer.Close()
		s.Close()
	})
	return s, peer
}

func frame(typ uint8, flags uint16, id, length uint32) []byte {
	h := header(make([]byte, headerSize))
	h.encode(typ, flags, id, length)
	return h
}

// waitGoroutines waits until at most n goroutines are left, or fails.
func waitGoroutines(t *testing.T, n int, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d goroutines, want at most %d", what, runtime.NumGoroutine(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A peer that floods pings and never reads costs a bounded queue of
// replies, not a goroutine per ping (upstream: one each, blocked up to the
// write timeout; 1.4 million and 2.8 GB seen against tunneld).
func TestPingFloodCostsNoGoroutinePerPing(t *testing.T) {
	base := runtime.NumGoroutine()
	s, peer := rawServer(t, nil)
	const pings = 100_000
	buf := make([]byte, 0, pings*headerSize)
	for i := uint32(0); i < pings; i++ {
		buf = append(buf, frame(typePing, flagSYN, 0, i)...)
	}
	// A go-away after the pings: once the session has seen it, it has
	// handled every ping before it.
	buf = append(buf, frame(typeGoAway, 0, 0, goAwayNormal)...)
	if _, err := peer.Write(buf); err != nil {
		t.Fatal(err)
	}
	peak := 0
	deadline := time.Now().Add(10 * time.Second)
	for atomic.LoadInt32(&s.remoteGoAway) == 0 {
		if g := runtime.NumGoroutine(); g > peak {
			peak = g
		}
		if time.Now().After(deadline) {
			t.Fatal("the session did not get through the pings")
		}
		time.Sleep(time.Millisecond)
	}
	if peak > base+20 {
		t.Fatalf("%d pings unread: %d goroutines (base %d)", pings, peak, base)
	}
	t.Logf("%d pings, never read: at most %d goroutines (base %d)", pings, peak, base)
	peer.Close()
	waitGoroutines(t, base, "after the flooder left")
	if !s.IsClosed() {
		t.Fatal("session still open after its conn closed")
	}
}

// Closing a session stops the close timers of its streams: a stream closed
// on our side waits up to StreamCloseTimeout for the peer's FIN, and the
// timer kept the stream, its buffers and the session reachable that long
// after the session was gone (5 minutes; every refused tunneld handshake
// did this).
func TestSessionCloseStopsStreamCloseTimers(t *testing.T) {
	client, server := tcpSessions(t, testWindow)
	cs, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	ss, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	ss.Close() // our half: the close timer starts
	ss.stateLock.Lock()
	running := ss.closeTimer != nil
	ss.stateLock.Unlock()
	if !running {
		t.Fatal("no close timer after a half close")
	}
	server.Close()
	ss.stateLock.Lock()
	left := ss.closeTimer
	ss.stateLock.Unlock()
	if left != nil && left.Stop() {
		t.Fatal("a closed session's stream still has its close timer running")
	}
}

// With IncomingStreamLimit 1 the peer's second stream is refused with a
// RST, and what it sends there is discarded, not buffered.
func TestIncomingStreamLimit(t *testing.T) {
	s, peer := rawServer(t, func(c *Config) { c.IncomingStreamLimit = 1 })
	body := make([]byte, 64<<10)
	var out []byte
	out = append(out, frame(typeWindowUpdate, flagSYN, 1, 0)...)
	out = append(out, frame(typeWindowUpdate, flagSYN, 3, 0)...)
	out = append(out, frame(typeData, 0, 3, uint32(len(body)))...)
	out = append(out, body...)
	if _, err := peer.Write(out); err != nil {
		t.Fatal(err)
	}
	st, err := s.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if st.StreamID() != 1 {
		t.Fatalf("accepted stream %d, want 1", st.StreamID())
	}
	// The peer gets the accept's ACK for 1 and a RST for 3.
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	sawRST := false
	for !sawRST {
		h := header(make([]byte, headerSize))
		if _, err := io.ReadFull(peer, h); err != nil {
			t.Fatalf("reading the server's frames: %v", err)
		}
		if h.StreamID() == 3 && h.Flags()&flagRST != 0 {
			sawRST = true
		}
		if h.MsgType() == typeData {
			io.CopyN(io.Discard, peer, int64(h.Length()))
		}
	}
	s.streamLock.Lock()
	n := len(s.streams)
	s.streamLock.Unlock()
	if n != 1 {
		t.Fatalf("server holds %d streams, want 1", n)
	}
	if s.IsClosed() {
		t.Fatal("a refused stream closed the session")
	}
	// Its accept queue has room for the one stream it may ever hold.
	if c := cap(s.acceptCh); c != 1 {
		t.Fatalf("accept queue of %d for a peer allowed one stream", c)
	}
}

// A stream the peer opens with an id that is not its own (0, or our
// parity) ends the session as a protocol error; it is never accepted.
func TestInvalidStreamIDIsAProtocolError(t *testing.T) {
	for _, id := range []uint32{0, 2} {
		s, peer := rawServer(t, nil)
		if _, err := peer.Write(frame(typeWindowUpdate, flagSYN, id, 0)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-s.CloseChan():
		case <-time.After(5 * time.Second):
			t.Fatalf("stream id %d: session still open", id)
		}
		select {
		case st := <-s.acceptCh:
			t.Fatalf("stream id %d was queued for accept (%d)", id, st.StreamID())
		default:
		}
		s.shutdownErrLock.Lock()
		err := s.shutdownErr
		s.shutdownErrLock.Unlock()
		if !errors.Is(err, ErrInvalidStreamID) {
			t.Fatalf("stream id %d: session ended with %v", id, err)
		}
	}
}
