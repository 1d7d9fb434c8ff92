//go:build linux

package tunneltest

import (
	"errors"
	"net"
	"syscall"
	"testing"
)

func TestRefusingAddr(t *testing.T) {
	addr := RefusingAddr(t)
	_, err := net.Dial("tcp", addr)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s: %v, want connection refused", addr, err)
	}
	// Nobody else gets the port while the test runs, not even with
	// SO_REUSEADDR (which net.Listen sets).
	if l, err := net.Listen("tcp", addr); err == nil {
		l.Close()
		t.Fatalf("listened on %s, which should stay refusing", addr)
	}
}
