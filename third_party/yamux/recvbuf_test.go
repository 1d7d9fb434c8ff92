package yamux

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"
)

// The ring against a plain byte slice: random appends (filled from a
// reader and written) and reads of random sizes keep the same bytes in the
// same order, and the ring never grows past the larger of its limit and
// the most it held.
func TestRecvBufferRing(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var rb recvBuffer
	var want []byte
	next := byte(0)
	gen := func(n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = next
			next++
		}
		return p
	}
	const limit = 1 << 12
	peak := 0
	for i := 0; i < 5000; i++ {
		switch rng.IntN(3) {
		case 0:
			p := gen(rng.IntN(limit / 4))
			if err := rb.fill(bytes.NewReader(p), len(p), limit); err != nil {
				t.Fatal(err)
			}
			want = append(want, p...)
		case 1:
			p := gen(rng.IntN(limit / 8))
			rb.Write(p, limit)
			want = append(want, p...)
		case 2:
			p := make([]byte, rng.IntN(limit/3))
			n := rb.Read(p)
			if n != imin(len(p), len(want)) || !bytes.Equal(p[:n], want[:n]) {
				t.Fatalf("step %d: read %d bytes, want %d, same %v", i, n, imin(len(p), len(want)), bytes.Equal(p[:n], want[:n]))
			}
			want = want[n:]
		}
		peak = imax(peak, len(want))
		if rb.Len() != len(want) {
			t.Fatalf("step %d: Len %d, want %d", i, rb.Len(), len(want))
		}
		if rb.Cap() > imax(limit, peak) {
			t.Fatalf("step %d: capacity %d having held at most %d, with limit %d", i, rb.Cap(), peak, limit)
		}
	}
	// A reader that fails part way is an error, as upstream's io.Copy
	// through a LimitedReader was not (it came back short, silently).
	if err := rb.fill(bytes.NewReader(make([]byte, 10)), 20, limit); err == nil {
		t.Fatal("a short fill reported no error")
	}
}

// A stream whose reader is behind by a whole window holds a buffer of one
// window, not the two to three upstream's bytes.Buffer grew to; its bytes
// arrive intact; and once the stream has gone quiet, ShrinkIdle gives the
// buffer back, which a stream that is still receiving keeps.
func TestReceiveBufferBoundedAndReleased(t *testing.T) {
	const window = 8 << 20
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	cli, srv := tcpSessions(t, window)
	a, sa := openPair(t, cli, srv, "x")
	if _, err := sa.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	b, sb := openPair(t, cli, srv, "y")
	if _, err := sb.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3*window)
	for i := range data {
		data[i] = byte(i * 7 >> 3)
	}
	base := heap()

	// A full window sent in frames of assorted sizes, nobody reading.
	sent := make(chan error, 1)
	go func() {
		off := 0
		for _, n := range []int{1000, 300 << 10, 64 << 10, 5, window} {
			n = imin(n, len(data)-off)
			if _, err := a.Write(data[off : off+n]); err != nil {
				sent <- err
				return
			}
			off += n
		}
		_, err := a.Write(data[off:])
		sent <- err
	}()
	waitBuffered(t, sa, window-1) // "x" took a byte of the window
	if c := capOf(sa); c > window {
		t.Fatalf("buffer of %d KiB for a window of %d KiB", c>>10, window>>10)
	}

	// A reader that lags by most of a window the whole way: reads of
	// 100 KiB while the rest keeps coming.
	h := sha256.New()
	buf := make([]byte, 100<<10)
	for got := 0; got < len(data); {
		n, err := sa.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(buf[:n])
		got += n
		if c := capOf(sa); c > window {
			t.Fatalf("buffer of %d KiB for a window of %d KiB after %d bytes", c>>10, window>>10, got)
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if h.Sum(nil) == nil || !bytes.Equal(h.Sum(nil), sum(data)) {
		t.Fatal("the bytes read differ from the bytes written")
	}
	if capOf(sa) == 0 {
		t.Fatal("no buffer after the burst: nothing for ShrinkIdle to give up")
	}

	// The second stream receives between the two looks; the first does not.
	srv.ShrinkIdle()
	if capOf(sa) == 0 {
		t.Fatal("a buffer drained just now was given up at once")
	}
	if _, err := b.Write(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	waitBuffered(t, sb, 4096)
	srv.ShrinkIdle()
	if c := capOf(sa); c != 0 {
		t.Fatalf("a quiet stream still holds %d KiB", c>>10)
	}
	if capOf(sb) == 0 {
		t.Fatal("a stream holding data lost its buffer")
	}
	if _, err := io.ReadFull(sb, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	// Back to where the session started, within less than a frame.
	deadline := time.Now().Add(5 * time.Second)
	for {
		after := heap()
		if after < base+256<<10 {
			t.Logf("heap %d KiB before the burst, %d KiB after", base>>10, after>>10)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("heap %d KiB before the burst, %d KiB after the buffer was given up", base>>10, after>>10)
		}
		time.Sleep(10 * time.Millisecond)
	}
	runtime.KeepAlive(data)
}

func capOf(s *Stream) int {
	s.recvLock.Lock()
	defer s.recvLock.Unlock()
	return s.recvBuf.Cap()
}

func sum(p []byte) []byte {
	h := sha256.Sum256(p)
	return h[:]
}

func imin(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func imax(a, b int) int { return -imin(-a, -b) }

// ShrinkIdle and FlushAcks run on a liveness monitor's goroutine: they
// never wait for a stream whose frame is being read (the receive loop
// holds its recvLock while it reads the body off the socket, which a
// black-holed path stalls), nor for one whose window update is being
// sent.
func TestSessionChoresNeverWait(t *testing.T) {
	cli, srv := tcpSessions(t, 256<<10)
	_, sa := openPair(t, cli, srv, "x")
	sa.EnableAcks()
	if _, err := sa.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	for _, lock := range []*sync.Mutex{&sa.recvLock, &sa.controlHdrLock, &srv.streamLock} {
		lock.Lock()
		done := make(chan struct{})
		go func() {
			srv.ShrinkIdle()
			srv.FlushAcks()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("a session chore waited for a held lock")
		}
		lock.Unlock()
	}
}
