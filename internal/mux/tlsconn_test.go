package mux

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/testcert"
)

// tlsConfigs returns a server config with a fresh self-signed certificate
// for 127.0.0.1 and a client config that trusts only it.
func tlsConfigs(t *testing.T) (srv, cli *tls.Config) {
	return testcert.New(t, "session").Configs(t)
}

// countingIO counts the socket writes under a watchConn.
type countingIO struct {
	ioer
	writes atomic.Int64
}

func (c *countingIO) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.ioer.Write(p)
}

// tlsPair returns both ends of a TLS session conn over loopback TCP, made
// by Dial and Listen+Handshake: the client's is a *tlsConn.
func tlsPair(t *testing.T) (*tlsConn, net.Conn) {
	t.Helper()
	srvTLS, cliTLS := tlsConfigs(t)
	so, co := testOptions(), testOptions()
	so.TLS, co.TLS = srvTLS, cliTLS
	c, sc := connPair(t, so, co)
	tc, ok := c.(*tlsConn)
	if !ok {
		t.Fatalf("Dial with TLS returned %T, want *tlsConn", c)
	}
	return tc, sc
}

// Every frame written to a TLS session leaves in one socket write, however
// many records TLS cuts it into; the bytes arrive intact.
func TestTLSFrameOneWrite(t *testing.T) {
	tc, sc := tlsPair(t)
	sizes := []int{0, 64, 16 << 10, 256 << 10, 512 << 10} // yamux frames are at most 256 KiB
	want := sha256.New()
	var total int64
	frames := make([]net.Buffers, len(sizes))
	for i, n := range sizes {
		hdr := make([]byte, 12)
		body := make([]byte, n)
		rand.Read(hdr)
		rand.Read(body)
		frames[i] = net.Buffers{hdr, body}
		want.Write(hdr)
		want.Write(body)
		total += int64(12 + n)
	}
	// A write larger than a cork holds goes out in pieces, intact.
	big := make([]byte, 3<<20+5)
	rand.Read(big)
	want.Write(big)
	total += int64(len(big))

	type got struct {
		sum []byte
		n   int64
		err error
	}
	res := make(chan got, 1)
	go func() {
		h := sha256.New()
		n, err := io.CopyN(h, sc, total)
		res <- got{h.Sum(nil), n, err}
	}()
	w := findWatch(tc)
	cio := &countingIO{ioer: w.rw}
	w.rw = cio
	for i, f := range frames {
		before := cio.writes.Load()
		if _, err := tc.WriteBuffers(f); err != nil {
			t.Fatal(err)
		}
		if k := cio.writes.Load() - before; k != 1 {
			t.Errorf("frame of %d bytes: %d socket writes, want 1", 12+sizes[i], k)
		}
		// Written in full: the cork's buffer went back to the pool, so
		// a session gone quiet holds none.
		tc.c.mu.Lock()
		held := cap(tc.c.pend)
		tc.c.mu.Unlock()
		if held != 0 {
			t.Errorf("frame of %d bytes: the cork still holds a %d-byte buffer", 12+sizes[i], held)
		}
	}
	if _, err := tc.Write(big); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil || r.n != total {
		t.Fatalf("server read %d of %d bytes: %v", r.n, total, r.err)
	}
	if !bytes.Equal(r.sum, want.Sum(nil)) {
		t.Fatal("bytes through TLS differ from what was written")
	}
}

// Closing a TLS session while a write is stuck on a full socket (a peer
// that stopped reading, as on a dead path) returns at once and ends the
// write; it does not wait out TLS's 5 s close_notify deadline.
func TestTLSCloseWithWriteStuck(t *testing.T) {
	c, _ := tlsPair(t) // the server end is never read
	werr := make(chan error, 1)
	go func() {
		// Frame-sized writes until the socket buffers are full: the last
		// one waits in its flush, TLS's own write already returned.
		buf := make([]byte, 256<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				werr <- err
				return
			}
		}
	}()
	// Until the write has filled the buffers and waits for room.
	waitGoroutine(t, "[IO wait", "(*tlsConn).Write")
	start := time.Now()
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
		t.Fatal("Close still waiting after 3s with a write stuck")
	}
	select {
	case err := <-werr:
		if err == nil {
			t.Fatal("stuck write returned no error after Close")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("stuck write did not end within 3s of Close")
	}
	t.Logf("Close took %s", time.Since(start).Round(time.Millisecond))
}
