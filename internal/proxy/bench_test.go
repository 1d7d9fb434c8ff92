package proxy_test

import (
	"context"
	"io"
	"net"
	"testing"

	"github.com/tunnel-dev/tunnel/internal/proxy"
)

// BenchmarkJoin moves bulk data one way through Join between two loopback
// TCP connections: the copy loop's cost per byte on top of the sockets.
func BenchmarkJoin(b *testing.B) {
	left, a := tcpPair(b)
	c, right := tcpPair(b)
	go func() { _, _ = proxy.Join(context.Background(), a, "a", c, "c") }()
	benchSend(b, left, right)
}

// BenchmarkDirect is the same traffic over one TCP connection, the baseline
// for BenchmarkJoin in the same run.
func BenchmarkDirect(b *testing.B) {
	left, right := tcpPair(b)
	benchSend(b, left, right)
}

// benchSend writes b.N chunks of 256 KiB into left while right is drained.
func benchSend(b *testing.B, left, right net.Conn) {
	go func() { _, _ = io.Copy(io.Discard, right) }()
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := left.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	left.Close()
}
