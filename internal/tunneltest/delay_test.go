//go:build linux

package tunneltest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"testing"
	"time"
)

// The delaying relay holds each byte for its one-way delay each way,
// never passes more than its rate, and delivers everything intact, then
// the half-close.
func TestDelayRelay(t *testing.T) {
	CheckLeaks(t)
	echo := NewEcho(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const oneWay = 50 * time.Millisecond
	const bps = 80e6 // 10 MB/s
	r := NewDelayRelay(t, ln, echo.Addr(), oneWay, bps)
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	start := time.Now()
	if _, err := c.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	var one [1]byte
	if _, err := io.ReadFull(c, one[:]); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt < 2*oneWay {
		t.Errorf("round trip %s, want at least %s", rtt, 2*oneWay)
	}

	msg := make([]byte, 4<<20)
	_, _ = rand.Read(msg)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c)
		got <- b
	}()
	start = time.Now()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	back := <-got
	took := time.Since(start)
	if a, b := sha256.Sum256(msg), sha256.Sum256(back); !bytes.Equal(a[:], b[:]) {
		t.Fatalf("%d bytes back of %d, or different", len(back), len(msg))
	}
	// 4 MiB at 10 MB/s is 0.42 s each way, pipelined: at least that
	// plus both delays.
	if least := time.Duration(float64(len(msg))/(bps/8)*float64(time.Second)) + 2*oneWay; took < least {
		t.Errorf("4 MiB echoed in %s, faster than the rate allows (%s)", took, least)
	}
}
