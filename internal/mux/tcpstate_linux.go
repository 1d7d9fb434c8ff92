//go:build linux

package mux

import (
	"time"

	"golang.org/x/sys/unix"
)

// tcpState is what the socket's TCP_INFO says about data in flight.
type tcpState struct {
	// inFlight: data unacknowledged or retransmitted, or a send window
	// the peer has closed (its zero-window probes count as probes too,
	// which without this read as keepalive's).
	inFlight bool
	rtt      time.Duration // the kernel's smoothed round trip
}

func readTCPState(fd uintptr) (*tcpState, bool) {
	info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return nil, false
	}
	// Rcv_wnd is set on every kernel that reports Snd_wnd; an older
	// kernel's shorter struct leaves both zero.
	zeroWindow := info.Snd_wnd == 0 && info.Rcv_wnd != 0
	return &tcpState{inFlight: info.Unacked > 0 || info.Retransmits > 0 || info.Backoff > 0 || zeroWindow,
		rtt: time.Duration(info.Rtt) * time.Microsecond}, true
}

// readSample reads what the queue bound steers by. A kernel without
// tcpi_min_rtt (before 4.9) reports none, and the bound stays out of the
// way.
func readSample(fd uintptr) (tcpSample, bool) {
	info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil || info.Min_rtt == 0 || info.Snd_mss == 0 {
		return tcpSample{}, false
	}
	return tcpSample{
		rtt:      time.Duration(info.Rtt) * time.Microsecond,
		minRTT:   time.Duration(info.Min_rtt) * time.Microsecond,
		inFlight: int(info.Unacked)*int(info.Snd_mss) + int(info.Notsent_bytes),
		mss:      int(info.Snd_mss),
	}, true
}
