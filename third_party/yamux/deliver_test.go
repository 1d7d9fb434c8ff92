package yamux

// Tests of the local deliver patch (see PATCHES.md) that need the stream's
// books, so they live in the package. They run on real loopback sockets.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testWindow = 4 << 20 // a MaxStreamWindowSize as large as users set

// tcpSessions returns a client and a server session over a loopback TCP
// connection, closed when the test ends.
func tcpSessions(t testing.TB, window uint32) (client, server *Session) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
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
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	cfg := DefaultConfig()
	cfg.MaxStreamWindowSize = window
	cfg.EnableKeepAlive = false
	cfg.LogOutput = testLog{t}
	if client, err = Client(c1, cfg); err != nil {
		t.Fatal(err)
	}
	if server, err = Server(c2, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Logf("%s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}

// books checks the receive-window invariant: what the peer may still send
// plus what is buffered or on its way to a sink never exceeds the window.
// The sender trusts our updates, so when this fails the stream can be
// overrun (or buffer without bound).
func books(s *Stream) (remain, buffered, inflight uint32, ok bool) {
	s.recvLock.Lock()
	defer s.recvLock.Unlock()
	buffered = uint32(s.recvBuf.Len())
	inflight = s.delivering
	total := uint64(s.recvWindow) + uint64(buffered) + uint64(inflight)
	return s.recvWindow, buffered, inflight, total <= uint64(s.session.config.MaxStreamWindowSize)
}

// senderBound is the most window a sender can hold with a receiver whose
// maximum is max. A sender takes a frame off its window only after writing
// it, so an update for that very frame can land first: the window briefly
// exceeds max by up to one frame (at most max). A wrapped window is near
// 4 GiB.
func senderBound(max uint32) uint32 { return 2 * max }

// A window update sent while a frame is on its way to a sink must not count
// that frame as consumed: if the sink then takes none of it, it is buffered
// on top of a window already reopened in full. The sink here runs the update
// itself, which is what the deliver goroutine of an earlier frame does when
// it happens to look at that moment (seen under bulk load as "receive window
// exceeded": the over-granted window later produced a negative delta that
// wrapped the sender's window).
func TestDeliverUpdateDuringFrameKeepsBooks(t *testing.T) {
	client, server := tcpSessions(t, testWindow)
	cs, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	ss, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	woke := make(chan struct{})
	var calls atomic.Int32
	ss.NotifyReadableOrDeliver(func() { close(woke) }, func(p []byte) (int, error) {
		if calls.Add(1) == 1 {
			if err := ss.sendWindowUpdate(); err != nil {
				t.Errorf("window update: %v", err)
			}
		}
		return 0, nil // a full socket: the whole frame is buffered
	})

	// Parked before any data is sent, so the first frame goes to the sink.
	data := make([]byte, initialStreamWindow+testWindow)
	rand.Read(data)
	want := sha256.Sum256(data)
	wrote := make(chan error, 1)
	go func() {
		_, err := cs.Write(data)
		if err == nil {
			err = cs.Close()
		}
		wrote <- err
	}()
	<-woke
	if calls.Load() != 1 {
		t.Fatalf("sink called %d times, want 1", calls.Load())
	}

	h := sha256.New()
	buf := make([]byte, 1024) // small reads: a partial drain computes a delta with data still buffered
	var got int
	for {
		if r, b, f, ok := books(ss); !ok {
			t.Fatalf("after %d bytes read: remain %d + buffered %d + delivering %d exceeds the window %d", got, r, b, f, testWindow)
		}
		if w := atomic.LoadUint32(&cs.sendWindow); w > senderBound(testWindow) {
			t.Fatalf("after %d bytes read: the sender's window is %d, more than %d", got, w, senderBound(testWindow))
		}
		ss.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := ss.Read(buf)
		h.Write(buf[:n])
		got += n
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read after %d bytes: %v", got, err)
		}
		if got > 256<<10 {
			buf = make([]byte, 64<<10)
		}
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if got != len(data) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("read %d bytes, want %d; hashes equal: %v", got, len(data), bytes.Equal(h.Sum(nil), want[:]))
	}
}

// Many streams at once, each parked on a sink that takes all, part or none
// of what it is offered (a socket that is sometimes full), and a reader that
// drains the rest with reads of random sizes: the window updates of the
// deliver goroutine race the receive loop's frames as they do under bulk
// load. Every stream must arrive whole (hashed) and the books must balance
// whenever the reader looks.
//
// Two windows: the tunnel's 4 MiB, and 512 KiB, with which the window is
// reopened after nearly every frame, so updates race frames far more often.
func TestDeliverStress(t *testing.T) {
	for _, window := range []uint32{512 << 10, testWindow} {
		t.Run(fmt.Sprintf("window=%dKiB", window>>10), func(t *testing.T) { deliverStress(t, window) })
	}
}

func deliverStress(t *testing.T, window uint32) {
	const streams = 8
	size := 24 << 20
	if testing.Short() {
		size = 4 << 20
	}
	client, server := tcpSessions(t, window)

	var wg sync.WaitGroup
	errs := make(chan error, 2*streams)
	var pairs [streams][2]*Stream
	for i := range pairs {
		cs, err := client.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		ss, err := server.AcceptStream()
		if err != nil {
			t.Fatal(err)
		}
		pairs[i] = [2]*Stream{cs, ss}
	}
	for _, p := range pairs {
		cs, ss := p[0], p[1]
		data := make([]byte, size)
		rand.Read(data)
		want := sha256.Sum256(data)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for off := 0; off < len(data); {
				n := 1 + randIntn(512<<10)
				if rest := len(data) - off; n > rest {
					n = rest
				}
				if _, err := cs.Write(data[off : off+n]); err != nil {
					errs <- err
					return
				}
				off += n
			}
			if err := cs.Close(); err != nil {
				errs <- err
			}
		}()
		go func() {
			defer wg.Done()
			if err := drainParked(ss, cs, want); err != nil {
				errs <- fmt.Errorf("stream %d: %w", ss.StreamID(), err)
				client.Close() // unblocks the writers
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// drainParked reads s to EOF the way package proxy does: parked on a sink
// while idle, reading when woken, and checks the hash, the books, and that
// the sending peer never holds more window than the maximum.
func drainParked(s, peer *Stream, want [32]byte) error {
	h := sha256.New() // written by the sink (receive loop) and the reader in turn, never at once
	max := s.session.config.MaxStreamWindowSize
	// The hook runs where a sink that took part of a frame has just
	// buffered the rest, before the receive loop reads on: the moment an
	// over-granted window shows, before the sender's next frames hide it.
	woke := make(chan error, 1)
	hook := func() {
		var err error
		if r, b, f, ok := books(s); !ok {
			err = fmt.Errorf("woken with remain %d + buffered %d + delivering %d, more than the window %d", r, b, f, max)
		}
		woke <- err
	}
	sink := func(p []byte) (int, error) {
		if randIntn(4) == 0 {
			// A slow socket: frames queue on the session while one is
			// being delivered, as with iperf3 behind the tunnel.
			time.Sleep(50 * time.Microsecond)
		}
		var n int
		switch randIntn(4) {
		case 0: // full socket
		case 1:
			n = randIntn(len(p))
		default:
			n = len(p)
		}
		h.Write(p[:n])
		return n, nil
	}
	buf := make([]byte, 512<<10)
	var got int
	for {
		s.NotifyReadableOrDeliver(hook, sink)
		select {
		case err := <-woke:
			if err != nil {
				return err
			}
		case <-time.After(20 * time.Second):
			return fmt.Errorf("stalled after %d bytes", got)
		}
		for s.Readable() {
			if r, b, f, ok := books(s); !ok {
				return fmt.Errorf("remain %d + buffered %d + delivering %d exceeds the window %d", r, b, f, max)
			}
			if w := atomic.LoadUint32(&peer.sendWindow); w > senderBound(max) {
				return fmt.Errorf("the sender's window is %d, more than %d", w, senderBound(max))
			}
			n, err := s.Read(buf[:1+randIntn(len(buf)-1)])
			h.Write(buf[:n])
			got += n
			if err == io.EOF {
				if sum := h.Sum(nil); !bytes.Equal(sum, want[:]) {
					return fmt.Errorf("data differs (%d bytes read directly)", got)
				}
				return nil
			}
			if err != nil {
				return fmt.Errorf("read after %d bytes: %w", got, err)
			}
		}
	}
}

func randIntn(n int) int { return mrand.IntN(n) }
