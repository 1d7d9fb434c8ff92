package mux

import (
	"io"
	"testing"

	"github.com/tunnel-dev/tunnel/internal/protocol"
)

// BenchmarkStreamOpen is what one public connection costs the session
// before data flows: open a stream, write the header, accept it on the
// other end, read the header, and close both.
func BenchmarkStreamOpen(b *testing.B) {
	o := testOptions()
	cli, srv, _, _ := pair(b, o)
	accepted := make(chan error, 1)
	go func() {
		for {
			st, err := cli.Accept()
			if err != nil {
				return
			}
			var h protocol.StreamHeader
			err = protocol.ReadFrame(st, &h)
			st.Close()
			accepted <- err
		}
	}()
	h := protocol.StreamHeader{Tunnel: "web", RemoteAddr: "198.51.100.7:50412", Conn: 1}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		st, err := srv.Open()
		if err != nil {
			b.Fatal(err)
		}
		h.Conn = uint64(i)
		if err := protocol.WriteFrame(st, h); err != nil {
			b.Fatal(err)
		}
		if err := <-accepted; err != nil {
			b.Fatal(err)
		}
		st.Close()
	}
}

// BenchmarkStreamBulk moves data one way over one stream of a session on
// loopback TCP, with the default stream window.
func BenchmarkStreamBulk(b *testing.B) {
	o := testOptions()
	o.StreamWindow = 0
	cli, srv, _, _ := pair(b, o)
	go func() {
		st, err := cli.Accept()
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, st)
	}()
	st, err := srv.Open()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := st.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}
