//go:build !linux

package mux

// tcpState is what the socket says about data in flight; only Linux
// reports it (TCP_INFO), so elsewhere a TCP timeout is not told apart.
type tcpState struct{ inFlight bool }

func readTCPState(fd uintptr) (*tcpState, bool) { return nil, false }
