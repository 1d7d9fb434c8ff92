package proxy_test

import (
	"io"
	"net"
	"testing"

	"github.com/tunnel-dev/tunnel/internal/proxy"
)

// BenchmarkJoin moves bulk data one way through Join between two loopback
// TCP connections: the copy loop's cost per byte on top of the sockets.
func BenchmarkJoin(b *testing.B) {
	left, a := benchPair(b)
	c, right := benchPair(b)
	go func() { _, _ = proxy.Join(a, "a", c, "c") }()
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

// BenchmarkDirect is the same traffic over one TCP connection, the baseline
// for BenchmarkJoin in the same run.
func BenchmarkDirect(b *testing.B) {
	left, right := benchPair(b)
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

func benchPair(b *testing.B) (*net.TCPConn, *net.TCPConn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}
