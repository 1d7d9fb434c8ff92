//go:build !linux

package mux

import "time"

// tcpState is what the socket says about data in flight; only Linux
// reports it (TCP_INFO), so elsewhere a TCP timeout is not told apart.
type tcpState struct {
	inFlight bool
	rtt      time.Duration
}

func readTCPState(fd uintptr) (*tcpState, bool) { return nil, false }

// readSample reports nothing: the queue bound needs TCP_INFO's round
// trips, so elsewhere the session goes without it.
func readSample(fd uintptr) (tcpSample, bool) { return tcpSample{}, false }
