package proxy_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
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
		st, err := proxy.Join(a, "a", b, "b")
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
