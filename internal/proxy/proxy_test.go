package proxy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/proxy"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

type result struct {
	st  proxy.Stats
	err error
}

// join runs Join between the inner ends of two pairs and returns the outer
// ends: left talks to right through the join.
func join(t *testing.T) (left, right *net.TCPConn, done chan result) {
	left, a := tcpPair(t)
	b, right := tcpPair(t)
	done = make(chan result, 1)
	go func() {
		st, err := proxy.Join(context.Background(), a, "a", b, "b")
		done <- result{st, err}
	}()
	return left, right, done
}

// A half-close travels through: the side that stopped writing still gets
// the whole answer, and Join ends cleanly with exact counts.
func TestJoinHalfClose(t *testing.T) {
	tt.CheckLeaks(t)
	left, right, done := join(t)
	req := make([]byte, 3<<20)
	rand.Read(req)
	go func() {
		left.Write(req)
		left.CloseWrite()
	}()
	got, err := io.ReadAll(right) // ends at the forwarded FIN
	if err != nil || !bytes.Equal(got, req) {
		t.Fatalf("request: %d bytes, err %v", len(got), err)
	}
	resp := make([]byte, 5<<20)
	rand.Read(resp)
	go func() {
		right.Write(resp)
		right.CloseWrite()
	}()
	got, err = io.ReadAll(left)
	if err != nil || !bytes.Equal(got, resp) {
		t.Fatalf("response after half-close: %d bytes, err %v", len(got), err)
	}
	r := <-done
	if r.err != nil || r.st.AToB != int64(len(req)) || r.st.BToA != int64(len(resp)) {
		t.Fatalf("join: %+v", r)
	}
}

// A reset on one side resets the other: the peer sees an error, not a
// clean EOF it could take for a complete reply.
func TestJoinAbortPropagates(t *testing.T) {
	tt.CheckLeaks(t)
	left, right, done := join(t)
	if _, err := left.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(right, buf); err != nil {
		t.Fatal(err)
	}
	right.SetLinger(0)
	right.Close() // RST
	left.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := left.Read(buf)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("left read after right reset: %v, want connection reset", err)
	}
	r := <-done
	if r.err == nil {
		t.Fatal("Join returned no error after a reset")
	}
	t.Logf("join error: %v", r.err)
}

// Many small exchanges: each one drains the socket, so the copy loop waits
// for data without a buffer thousands of times. A wait that can miss data
// arriving just before it parks hangs here.
func TestJoinManySmallExchanges(t *testing.T) {
	tt.CheckLeaks(t)
	left, right, done := join(t)
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(right, buf); err != nil {
				right.CloseWrite()
				return
			}
			if _, err := right.Write(buf); err != nil {
				return
			}
		}
	}()
	msg, got := make([]byte, 64), make([]byte, 128)
	for i := range 20000 {
		msg[0], msg[1] = byte(i), byte(i>>8)
		// Two writes a few microseconds apart: the second tends to land
		// while the copy loop is between draining the first and waiting.
		if _, err := left.Write(msg); err != nil {
			t.Fatal(err)
		}
		for start := time.Now(); time.Since(start) < time.Duration(i%20)*time.Microsecond; {
		}
		if _, err := left.Write(msg); err != nil {
			t.Fatal(err)
		}
		left.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(left, got); err != nil {
			t.Fatalf("exchange %d: %v", i, err)
		}
		if !bytes.Equal(got[:64], msg) || !bytes.Equal(got[64:], msg) {
			t.Fatalf("exchange %d: wrong bytes", i)
		}
	}
	left.CloseWrite()
	io.Copy(io.Discard, left)
	if r := <-done; r.err != nil {
		t.Fatal(r.err)
	}
}

var errOwnerGone = errors.New("test: the join's owner ended")

// A join ends at once when its context does, in every state it can be in,
// with the context's cause, and both outer peers see a reset. This is how a
// session's end reaches connections that would otherwise wait on a silent
// peer for as long as it stays silent.
func TestJoinEndsWithItsContext(t *testing.T) {
	states := []struct {
		name  string
		setup func(t *testing.T, left, right *net.TCPConn)
		// rightEnded: right already read the forwarded FIN, so it may
		// see EOF again rather than the reset.
		rightEnded bool
	}{
		{"both open, idle", func(t *testing.T, left, right *net.TCPConn) {}, false},
		{"one direction ended, the other waiting on a silent peer", func(t *testing.T, left, right *net.TCPConn) {
			left.Write([]byte("x"))
			left.CloseWrite()
			io.ReadAll(right) // the FIN came through: a -> b is over
		}, true},
		{"blocked writing to a peer that does not read", func(t *testing.T, left, right *net.TCPConn) {
			// Left's writes stop at the reset; the writer takes the
			// socket's one report of it, so its reads then see EOF:
			// read the error from the writer instead.
			werr := make(chan error, 1)
			t.Cleanup(func() {
				if err := <-werr; !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
					t.Errorf("left writer: %v, want a reset", err)
				}
			})
			go func() {
				buf := make([]byte, 64<<10)
				for {
					if _, err := left.Write(buf); err != nil {
						werr <- err
						return
					}
				}
			}()
			// Until the buffers are full and the writer waits.
			tt.WaitBlocked(t, 10*time.Second, "TestJoinEndsWithItsContext")
		}, false},
	}
	for _, st := range states {
		t.Run(st.name, func(t *testing.T) {
			tt.CheckLeaks(t)
			left, a := tcpPair(t)
			b, right := tcpPair(t)
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			done := make(chan result, 1)
			proxy.Go(ctx, a, "a", b, "b", func(st proxy.Stats, err error) { done <- result{st, err} })
			st.setup(t, left, right)
			cancel(errOwnerGone)
			start := time.Now()
			select {
			case r := <-done:
				t.Logf("join ended %s after its context", time.Since(start).Round(time.Microsecond))
				if !errors.Is(r.err, errOwnerGone) {
					t.Fatalf("join error %v, want the context's cause", r.err)
				}
			case <-time.After(5 * time.Second): // hang detection
				t.Fatal("join still running after its context ended")
			}
			for name, c := range map[string]*net.TCPConn{"left": left, "right": right} {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				for {
					_, err := c.Read(make([]byte, 64<<10))
					if err == nil {
						continue
					}
					eofOK := (name == "right" && st.rightEnded) || (name == "left" && strings.HasPrefix(st.name, "blocked writing"))
					if !errors.Is(err, syscall.ECONNRESET) && !(eofOK && err == io.EOF) {
						t.Errorf("%s peer: %v, want a reset", name, err)
					}
					break
				}
			}
		})
	}
}

// A context that ends after the join finished changes nothing: the join
// reported a clean end and closed both sides normally.
func TestJoinContextAfterEnd(t *testing.T) {
	tt.CheckLeaks(t)
	left, a := tcpPair(t)
	b, right := tcpPair(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan result, 1)
	proxy.Go(ctx, a, "a", b, "b", func(st proxy.Stats, err error) { done <- result{st, err} })
	left.CloseWrite()
	right.CloseWrite()
	r := <-done
	cancel(errOwnerGone)
	if r.err != nil {
		t.Fatalf("clean join returned %v", r.err)
	}
	for _, c := range []*net.TCPConn{left, right} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("after a clean join: %v, want EOF", err)
		}
	}
}

// A Pair counts while data flows, not only at the end, and its Abort
// resets both peers with the error it is given.
func TestPairCountsLiveAndAborts(t *testing.T) {
	tt.CheckLeaks(t)
	left, a := tcpPair(t)
	b, right := tcpPair(t)
	done := make(chan result, 1)
	p := proxy.Go(context.Background(), a, "a", b, "b", func(st proxy.Stats, err error) { done <- result{st, err} })
	chunk := make([]byte, 300<<10)
	rand.Read(chunk)
	var moved int64
	for i := 0; i < 3; i++ {
		if _, err := left.Write(chunk); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(right, make([]byte, len(chunk))); err != nil {
			t.Fatal(err)
		}
		moved += int64(len(chunk))
		// The read above returned, so the join's write completed; its
		// count is added just after the write returns.
		want := moved
		tt.Eventually(t, 5*time.Second, fmt.Sprintf("Moved() to count %d bytes", want), func() bool {
			got := p.Moved()
			return got.AToB == want && got.BToA == 0
		})
	}
	if _, err := right.Write([]byte("back")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(left, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	tt.Eventually(t, 5*time.Second, "Moved() to count the 4 bytes back", func() bool { return p.Moved().BToA == 4 })
	errKicked := errors.New("closed by the operator")
	p.Abort(errKicked)
	r := <-done
	if !errors.Is(r.err, errKicked) {
		t.Fatalf("join ended with %v, want the abort's error", r.err)
	}
	for _, c := range []*net.TCPConn{left, right} {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("outer end read %v after Abort, want a reset", err)
		}
	}
	if r.st.AToB != moved || r.st.BToA != 4 {
		t.Fatalf("final stats %+v", r.st)
	}
	p.Abort(errors.New("late")) // a no-op once over
}
