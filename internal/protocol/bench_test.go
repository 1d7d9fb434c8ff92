package protocol

import (
	"bytes"
	"testing"
)

// BenchmarkStreamHeader is the per-connection framing cost: encode and
// decode one stream header.
func BenchmarkStreamHeader(b *testing.B) {
	h := StreamHeader{Tunnel: "web", RemoteAddr: "198.51.100.7:50412", Conn: 42}
	var buf bytes.Buffer
	b.ReportAllocs()
	for range b.N {
		buf.Reset()
		if err := WriteFrame(&buf, h); err != nil {
			b.Fatal(err)
		}
		var got StreamHeader
		if err := ReadFrame(&buf, &got); err != nil {
			b.Fatal(err)
		}
	}
}
