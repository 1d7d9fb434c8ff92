package rawio

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair returns both ends of a TCP connection on loopback with small
// buffers, so that writes of a few hundred KiB meet a full socket and wait.
func pair(t testing.TB) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, ok := <-ch
	if !ok {
		t.Fatal("accept failed")
	}
	a, b = c.(*net.TCPConn), s.(*net.TCPConn)
	for _, x := range []*net.TCPConn{a, b} {
		_ = x.SetReadBuffer(16 << 10)
		_ = x.SetWriteBuffer(16 << 10)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func socket(t testing.TB, c net.Conn) *Socket {
	t.Helper()
	s, ok := New(c)
	if !ok {
		t.Fatal("New: not a socket")
	}
	return s
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// Both directions at once, each far larger than the socket buffers, so
// every write waits for room and every read for data; checked by hash.
func TestSocketReadWriteBothWays(t *testing.T) {
	a, b := pair(t)
	sa, sb := socket(t, a), socket(t, b)
	const size = 8 << 20
	up, down := randBytes(t, size), randBytes(t, size)

	type res struct {
		sum [32]byte
		err error
	}
	readAll := func(s *Socket, n int, out chan<- res) {
		h := sha256.New()
		buf := make([]byte, 7000) // odd size: reads end mid-write
		got := 0
		for got < n {
			k, err := s.Read(buf)
			if err != nil {
				out <- res{err: err}
				return
			}
			h.Write(buf[:k])
			got += k
		}
		var r res
		copy(r.sum[:], h.Sum(nil))
		out <- r
	}
	ra, rb := make(chan res, 1), make(chan res, 1)
	go readAll(sb, size, rb)
	go readAll(sa, size, ra)
	werr := make(chan error, 2)
	go func() {
		// Many small and empty buffers, more than one writev takes.
		var bufs [][]byte
		for off := 0; off < size; {
			n := min(size-off, 1+off%3000)
			bufs = append(bufs, up[off:off+n], nil)
			off += n
		}
		n, err := sa.WriteBuffers(bufs)
		if err == nil && n != size {
			err = errors.New("short WriteBuffers")
		}
		werr <- err
	}()
	go func() {
		n, err := sb.Write(down)
		if err == nil && n != size {
			err = errors.New("short Write")
		}
		werr <- err
	}()
	for range 2 {
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
	}
	if r := <-rb; r.err != nil || r.sum != sha256.Sum256(up) {
		t.Fatalf("a->b: err %v, hash match %v", r.err, r.sum == sha256.Sum256(up))
	}
	if r := <-ra; r.err != nil || r.sum != sha256.Sum256(down) {
		t.Fatalf("b->a: err %v, hash match %v", r.err, r.sum == sha256.Sum256(down))
	}
}

func TestSocketReadEOF(t *testing.T) {
	a, b := pair(t)
	sb := socket(t, b)
	if _, err := a.Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	a.CloseWrite()
	got, err := io.ReadAll(readerFunc(sb.Read))
	if err != nil || string(got) != "last" {
		t.Fatalf("got %q, %v", got, err)
	}
	if n, err := sb.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("after EOF: %d, %v; want 0, io.EOF itself", n, err)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// Waiting happens in the runtime's poller, so deadlines work as on a
// net.Conn.
func TestSocketDeadlines(t *testing.T) {
	a, b := pair(t)
	sa, sb := socket(t, a), socket(t, b)

	b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := sb.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past deadline: %v", err)
	}

	// Nobody reads b: the write fills both buffers and then times out,
	// reporting what it did write.
	a.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	n, err := sa.Write(make([]byte, 16<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write past deadline: %v", err)
	}
	if n <= 0 || n >= 16<<20 {
		t.Fatalf("write past deadline wrote %d bytes; want some, not all", n)
	}
	a.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := sa.WriteBuffers([][]byte{make([]byte, 16<<20)}); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("writev past deadline: %v", err)
	}
}

// TryWrite takes what fits and returns at once when the socket is full;
// what it took arrives intact.
func TestSocketTryWrite(t *testing.T) {
	a, b := pair(t)
	sa := socket(t, a)
	data := randBytes(t, 16<<20) // far more than both socket buffers
	n, err := sa.TryWrite(data)
	if err != nil || n <= 0 || n >= len(data) {
		t.Fatalf("TryWrite into an unread socket: %d of %d, %v; want some, not all, no error", n, len(data), err)
	}
	if k, err := sa.TryWrite(data[n:]); err != nil || k != 0 {
		t.Fatalf("TryWrite into a full socket: %d, %v; want 0, nil", k, err)
	}
	got := make([]byte, n)
	if _, err := io.ReadFull(b, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data[:n]) {
		t.Fatal("bytes differ from what TryWrite took")
	}
}

// Close while a read waits ends the read with net.ErrClosed.
func TestSocketCloseWakesRead(t *testing.T) {
	_, b := pair(t)
	sb := socket(t, b)
	errc := make(chan error, 1)
	go func() {
		_, err := sb.Read(make([]byte, 8))
		errc <- err
	}()
	waitParked(t, "rawio.(*Socket).Read")
	b.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read after close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read still waiting 5s after Close")
	}
}

// A reset from the peer is an error naming the call, with the errno
// inside for errors.Is.
func TestSocketReset(t *testing.T) {
	a, b := pair(t)
	sb := socket(t, b)
	a.SetLinger(0)
	a.Close()
	// Until the reset has arrived: the socket's TCP state is CLOSE.
	for deadline := time.Now().Add(5 * time.Second); tcpState(t, b) != tcpClose; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no reset arrived within 5 s")
		}
	}
	_, err := sb.Write(bytes.Repeat([]byte("x"), 1<<20))
	if err == nil {
		_, err = sb.Read(make([]byte, 8))
	}
	var se *os.SyscallError
	if !errors.As(err, &se) {
		t.Fatalf("after reset: %v (%T); want an *os.SyscallError", err, err)
	}
}

func TestNewNotASocket(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if _, ok := New(p); ok {
		t.Fatal("New(net.Pipe) claims a socket")
	}
}

func TestConsume(t *testing.T) {
	bufs := [][]byte{[]byte("ab"), nil, []byte("cde"), []byte("f")}
	bufs = consume(bufs, 3)
	if len(bufs) != 2 || string(bufs[0]) != "de" || string(bufs[1]) != "f" {
		t.Fatalf("consume 3: %q", bufs)
	}
	if bufs = consume(bufs, 3); len(bufs) != 0 {
		t.Fatalf("consume all: %q", bufs)
	}
}

// 64-byte ping-pong between two goroutines over loopback, with package
// net's calls and with this package's. Alone on the machine the two are
// equal (13.5 vs 13.3 µs per round trip here, no allocations either way):
// each call is short and a core is always free, so sysmon never hands a P
// over. The win shows when every core is busy, in make bench's
// 32-connection echo.
func BenchmarkPingPongNet(b *testing.B) { benchPingPong(b, false) }
func BenchmarkPingPongRaw(b *testing.B) { benchPingPong(b, true) }

func benchPingPong(b *testing.B, raw bool) {
	x, y := pair(b)
	rw := func(c net.Conn) (func([]byte) (int, error), func([]byte) (int, error)) {
		if !raw {
			return c.Read, c.Write
		}
		s := socket(b, c)
		return s.Read, s.Write
	}
	xr, xw := rw(x)
	yr, yw := rw(y)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(readerFunc(yr), buf); err != nil {
				return
			}
			if _, err := yw(buf); err != nil {
				return
			}
		}
	}()
	msg := make([]byte, 64)
	b.SetBytes(64)
	b.ResetTimer()
	for range b.N {
		if _, err := xw(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(readerFunc(xr), msg); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	x.Close()
	<-done
}

// waitParked waits until a goroutine with fn in its stack is parked in the
// runtime's poller.
func waitParked(t *testing.T, fn string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "[IO wait") && strings.Contains(g, fn) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no goroutine in %s parked in the poller within 5 s", fn)
		}
	}
}

const tcpClose = 7 // TCP_CLOSE in the kernel's TCP states

// tcpState is the kernel's TCP state of c's socket.
func tcpState(t *testing.T, c *net.TCPConn) uint8 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st uint8
	_ = rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			st = info.State
		}
	})
	return st
}
