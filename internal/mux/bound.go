package mux

import (
	"math"
	"sync/atomic"
	"time"
)

// queueBound keeps the session's own queue at a slow link's bottleneck
// short while the link is saturated. The send path puts control frames
// and small frames first and TCP_NOTSENT_LOWAT keeps the kernel's unsent
// queue short, but a loss-based TCP (Reno, CUBIC) then fills the
// bottleneck's buffer in the network until it drops: on a home uplink
// 100 ms or more of queue that every new connection's first frame and
// every echo crosses, in each direction. No ordering in the sender can
// reorder a router's queue; only sending less can shorten it.
//
// So while the link is slow, bulk frames wait (yamux's Config.Hold; urgent
// frames do not) while the bytes in flight — sent and unacknowledged,
// plus unsent in the kernel — reach a bound, and the bound follows the
// queueing delay that the socket's own round trips show (TCP_INFO's
// smoothed RTT above its minimum) toward Target: the delay-based idea of
// LEDBAT (RFC 6817) and of TCP Vegas, applied in user space on top of
// whatever congestion control the kernel runs. Little's law gives the
// step: at a rate R and a round trip of minRTT+queue the bytes in flight
// are R·(minRTT+queue), so the bound that leaves Target of queue is
// bound·(minRTT+Target)/(minRTT+queue). The bound moves half that step
// (its square root), at most ×0.5 down and ×1.15 up, once per round trip,
// so that the smoothed RTT has caught up with the previous step; a full
// step overshot both ways and lost a fifth of the link.
//
// A delay-based sender yields to a loss-based one that shares the
// bottleneck (another upload on the same uplink): that queue is not ours
// to shorten, and yielding to it would only starve the tunnel. When the
// bound has sat at its floor with the queue above giveUpQueue for
// giveUpAfter, it steps aside for pauseFor — the session competes like
// any TCP connection — and then tries again.
//
// The bound belongs to the session's send loop, the only caller of hold;
// only restart is touched from elsewhere.
type queueBound struct {
	restart atomic.Bool // the link has turned slow again: start afresh

	active   bool      // cwnd has been set since the link turned slow
	heldFrom time.Time // the write waiting now was first held then
	cwnd     int       // bytes in flight allowed
	next     time.Time
	limited  bool      // a write was held since the last step
	lowSince time.Time // the bound has been at its floor, the queue long, since
	offUntil time.Time // stepped aside until
}

// tcpSample is what the bound reads from the socket (TCP_INFO).
type tcpSample struct {
	rtt, minRTT time.Duration // smoothed and minimum round trip
	inFlight    int           // bytes sent and unacknowledged, plus unsent
	mss         int
}

// Target is the queueing delay the bound leaves in the session's round
// trip: its own direction's bottleneck queue plus, when the other
// direction is saturated too, the queue its acknowledgments wait in (the
// peer's bound keeps that one short in turn, so each holds about half).
// An exchange crosses both directions, so it is also about what a new
// connection or an echo waits on a saturated link; and it is long enough
// that the bottleneck does not run dry between the send loop's looks at
// the socket, a millisecond or two apart, or while one 16 KiB frame
// (16 ms at 8 Mbit/s) sits in the queue.
const Target = 40 * time.Millisecond

const (
	// maxHold bounds one write's wait: the socket's write timeout and
	// the heartbeat judge a link that stopped draining, not the bound.
	maxHold     = 250 * time.Millisecond
	giveUpAfter = 2 * time.Second
	giveUpQueue = 2 * Target
	pauseFor    = 30 * time.Second
	// minSegs segments is the bound's floor.
	minSegs = 2
	// The send loop looks again after the time the excess takes to
	// drain, within these limits.
	minLook, maxLook = time.Millisecond / 2, 2 * time.Millisecond
)

// step moves the bound toward Target once per round trip.
func (b *queueBound) step(now time.Time, s tcpSample) {
	floor := minSegs * s.mss
	if !b.active {
		b.active = true
		b.cwnd = max(s.inFlight, floor)
		b.next = now.Add(s.rtt)
		b.limited, b.lowSince, b.offUntil = false, time.Time{}, time.Time{}
		return
	}
	if now.Before(b.next) {
		return
	}
	b.next = now.Add(max(s.rtt, time.Millisecond))
	queue := s.rtt - s.minRTT
	// Half the step Little's law asks for: the smoothed RTT lags the
	// queue, and a full step overshoots both ways.
	f := math.Sqrt(float64(s.minRTT+Target) / float64(s.minRTT+max(queue, 0)))
	switch {
	case f < 1:
		f = max(f, 0.5)
	case !b.limited:
		// Writes were not held: the bound was not what limited the
		// sender, so nothing says the link would take more.
		f = 1
	default:
		f = min(f, 1.15)
	}
	b.limited = false
	b.cwnd = max(int(float64(b.cwnd)*f), floor)
	if b.cwnd > floor || queue <= giveUpQueue {
		b.lowSince = time.Time{}
		return
	}
	if b.lowSince.IsZero() {
		b.lowSince = now
	} else if now.Sub(b.lowSince) >= giveUpAfter {
		b.offUntil = now.Add(pauseFor)
		b.lowSince = time.Time{}
	}
}

// hold is how long the bulk frames waiting to be written should wait
// before the next look at the socket; 0 lets them go.
func (b *queueBound) hold(now time.Time, s tcpSample) time.Duration {
	if s.minRTT <= 0 || s.mss <= 0 {
		return 0
	}
	if b.restart.Swap(false) {
		b.active, b.offUntil = false, time.Time{}
	}
	if now.Before(b.offUntil) {
		return 0
	}
	if !b.offUntil.IsZero() {
		// Back from stepping aside: start again from what flies now.
		b.offUntil, b.active = time.Time{}, false
	}
	b.step(now, s)
	// A round trip shorter than the shortest look is a link that was
	// slow only for a moment (a busy machine delays a write on loopback):
	// it drains faster than a hold could measure, and a hold would cost
	// a millisecond of it.
	if s.inFlight < b.cwnd || s.rtt < 2*minLook {
		b.heldFrom = time.Time{}
		return 0
	}
	b.limited = true
	if b.heldFrom.IsZero() {
		b.heldFrom = now
	} else if now.Sub(b.heldFrom) >= maxHold {
		b.heldFrom = time.Time{}
		return 0
	}
	// The excess drains at about bound per round trip.
	rate := float64(b.cwnd) / max(s.rtt, time.Millisecond).Seconds()
	d := time.Duration(float64(s.inFlight-b.cwnd+1) / rate * float64(time.Second))
	return min(max(d, minLook), maxLook)
}

// setSlow is told when the link turns slow or fast; each slow spell
// starts from what is in flight then.
func (b *queueBound) setSlow(slow bool) {
	if slow {
		b.restart.Store(true)
	}
}
