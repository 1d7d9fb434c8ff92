package mux

import (
	"testing"
	"time"
)

// link is a bottleneck of rate bytes/s with a base round trip, fed by a
// sender that always has bulk frames and asks a queueBound before each
// write, as the session's send loop does. Its RTT samples come from the
// data's own trip, smoothed as TCP does (1/8 per acknowledgment of two
// segments); extra is a queue of someone else's, added to every trip.
type link struct {
	rate   float64
	minRTT time.Duration
	extra  time.Duration
	mss    int

	now      time.Time
	queue    []chunk // at the bottleneck, oldest first
	queued   int
	acks     []chunk // drained, acknowledged at .at
	inFlight int
	srtt     time.Duration
	minSeen  time.Duration
	credit   float64 // bytes the bottleneck may drain this step

	// what was seen after warm-up
	steps, busy int
	queueSum    time.Duration
	sent        int
}

type chunk struct {
	at time.Time // enqueued at, or acknowledged at
	n  int
}

// frameBytes is one write of bulk frames on l in TLS records: yamux's
// frame cap follows what the link drains in 10 ms, in multiples of 4 KiB.
func (l *link) frameBytes() int {
	n := max(int(l.rate/100)/(4<<10)*(4<<10), 4<<10)
	return n + 12 + 29*(n/(16<<10)+1)
}

func (l *link) write(n int) {
	for n > 0 {
		c := min(n, l.mss)
		l.queue = append(l.queue, chunk{l.now, c})
		l.queued += c
		l.inFlight += c
		n -= c
	}
}

func (l *link) tick(dt time.Duration, measure bool) {
	l.now = l.now.Add(dt)
	if measure {
		l.steps++
		if l.queued > 0 {
			l.busy++
		}
		l.queueSum += time.Duration(float64(l.queued) / l.rate * float64(time.Second))
	}
	l.credit += l.rate * dt.Seconds()
	for len(l.queue) > 0 && l.credit >= float64(l.queue[0].n) {
		c := l.queue[0]
		l.queue = l.queue[1:]
		l.queued -= c.n
		l.credit -= float64(c.n)
		// Its round trip: the time queued, the base, someone else's queue.
		rtt := l.now.Sub(c.at) + l.minRTT + l.extra
		l.acks = append(l.acks, chunk{l.now.Add(l.minRTT + l.extra), c.n})
		if l.srtt == 0 {
			l.srtt = rtt
		} else {
			l.srtt += (rtt - l.srtt) / 16 // per segment: 1/8 per ack of two
		}
		if l.minSeen == 0 || rtt < l.minSeen {
			l.minSeen = rtt
		}
		if measure {
			l.sent += c.n
		}
	}
	if len(l.queue) == 0 {
		l.credit = 0 // an idle link saves nothing up
	}
	for len(l.acks) > 0 && !l.acks[0].at.After(l.now) {
		l.inFlight -= l.acks[0].n
		l.acks = l.acks[1:]
	}
}

func (l *link) sample() tcpSample {
	return tcpSample{rtt: l.srtt, minRTT: l.minSeen, inFlight: l.inFlight, mss: l.mss}
}

// run drives the sender for d: it writes a frame whenever the bound lets
// it and looks again when the bound says.
func (l *link) run(b *queueBound, d time.Duration, measure bool) {
	const dt = 100 * time.Microsecond
	var next time.Time
	for end := l.now.Add(d); l.now.Before(end); l.tick(dt, measure) {
		if l.now.Before(next) {
			continue
		}
		if l.srtt == 0 {
			// Until the first sample, one frame in flight.
			if l.inFlight == 0 {
				l.write(l.frameBytes())
			}
			continue
		}
		if h := b.hold(l.now, l.sample()); h > 0 {
			next = l.now.Add(h)
			continue
		}
		l.write(l.frameBytes())
	}
}

func newLink(mbit float64, minRTT time.Duration) *link {
	return &link{rate: mbit * 1e6 / 8, minRTT: minRTT, mss: 1448, now: time.Unix(1e9, 0)}
}

// The bound keeps the bottleneck busy and its queue near Target, on a
// slow link and on a long one, where a sender without it (any loss-based
// TCP) fills the bottleneck's buffer whole.
func TestQueueBoundSettlesAtTarget(t *testing.T) {
	for _, tc := range []struct {
		mbit   float64
		minRTT time.Duration
	}{{8, 100 * time.Microsecond}, {8, 30 * time.Millisecond}, {50, 20 * time.Millisecond}, {2, 5 * time.Millisecond}, {1, 20 * time.Millisecond}, {200, 50 * time.Millisecond}} {
		l := newLink(tc.mbit, tc.minRTT)
		var b queueBound
		b.setSlow(true)
		// Start as a loss-based sender leaves it: 200 ms of queue.
		l.write(int(l.rate * 0.2))
		l.run(&b, 5*time.Second, false)
		l.run(&b, 20*time.Second, true)
		busy := float64(l.busy) / float64(l.steps)
		mean := l.queueSum / time.Duration(l.steps)
		t.Logf("%.0f Mbit/s, base RTT %s: bottleneck busy %.1f %%, mean queue %s, bound %d bytes",
			tc.mbit, tc.minRTT, 100*busy, mean.Round(100*time.Microsecond), b.cwnd)
		if busy < 0.97 {
			t.Errorf("%.0f Mbit/s, %s: the bottleneck was busy %.1f %% of the time, want at least 97 %%", tc.mbit, tc.minRTT, 100*busy)
		}
		// The queue cannot be shorter than what one write puts in it.
		limit := Target + time.Duration(float64(l.frameBytes())/l.rate*float64(time.Second))
		if mean > limit {
			t.Errorf("%.0f Mbit/s, %s: mean queue %s, want at most %s", tc.mbit, tc.minRTT, mean, limit)
		}
	}
}

// A queue that is not ours (another upload through the same uplink, with
// a loss-based TCP) cannot be shortened by sending less: the bound gives
// up after giveUpAfter instead of starving the session, and tries again
// after pauseFor.
func TestQueueBoundStepsAsideForAForeignQueue(t *testing.T) {
	l := newLink(8, 10*time.Millisecond)
	var b queueBound
	b.setSlow(true)
	l.run(&b, 3*time.Second, false)
	if !b.offUntil.IsZero() {
		t.Fatalf("the bound stepped aside with no foreign queue (bound %d)", b.cwnd)
	}
	// Someone else's queue, on top of the base round trip the bound has
	// already seen.
	l.extra = 150 * time.Millisecond
	start := l.now
	for l.now.Sub(start) < giveUpAfter+5*time.Second && b.offUntil.IsZero() {
		l.run(&b, 10*time.Millisecond, false)
	}
	if b.offUntil.IsZero() {
		t.Fatalf("the bound did not step aside within %s of a 150 ms foreign queue (bound %d)", l.now.Sub(start), b.cwnd)
	}
	took := l.now.Sub(start)
	if took < giveUpAfter {
		t.Errorf("stepped aside after %s, before giveUpAfter (%s)", took, giveUpAfter)
	}
	// Aside, nothing is held, however much flies.
	if h := b.hold(l.now, tcpSample{rtt: time.Second, minRTT: l.minRTT, inFlight: 1 << 30, mss: l.mss}); h != 0 {
		t.Errorf("aside, hold = %s, want 0", h)
	}
	// After the pause it bounds again, starting from what flies then.
	later := b.offUntil.Add(time.Millisecond)
	if h := b.hold(later, tcpSample{rtt: 200 * time.Millisecond, minRTT: l.minRTT, inFlight: 50_000, mss: l.mss}); h != 0 {
		t.Errorf("first look after the pause: hold = %s, want 0 (the bound starts at what flies)", h)
	}
	if !b.active || b.cwnd != 50_000 {
		t.Errorf("after the pause: active %v, bound %d, want a fresh bound of 50000", b.active, b.cwnd)
	}
}

// No write waits longer than maxHold in all, whatever the socket says: a
// link that stopped draining is for the write timeout and the heartbeat
// to judge.
func TestQueueBoundHoldIsBounded(t *testing.T) {
	var b queueBound
	b.setSlow(true)
	now := time.Unix(1e9, 0)
	stuck := tcpSample{rtt: 50 * time.Millisecond, minRTT: time.Millisecond, inFlight: 100_000, mss: 1448}
	b.hold(now, stuck) // starts the bound at what flies
	stuck.inFlight = 200_000
	var waited time.Duration
	for {
		h := b.hold(now.Add(waited), stuck)
		if h == 0 {
			break
		}
		if h < minLook || h > maxLook {
			t.Fatalf("hold = %s, want within [%s, %s]", h, minLook, maxLook)
		}
		waited += h
		if waited > time.Minute {
			t.Fatal("hold never let the write go")
		}
	}
	if waited < maxHold || waited > maxHold+maxLook {
		t.Errorf("a stuck write waited %s in all, want about %s", waited, maxHold)
	}
}

// Each slow spell starts from what is in flight then, not from the last
// spell's bound; a kernel without the round trips (no tcpi_min_rtt) and a
// link whose round trip is under a millisecond are never held.
func TestQueueBoundRestartsWithEachSlowSpell(t *testing.T) {
	var b queueBound
	now := time.Unix(1e9, 0)
	b.setSlow(true)
	b.hold(now, tcpSample{rtt: 10 * time.Millisecond, minRTT: time.Millisecond, inFlight: 30_000, mss: 1448})
	if b.cwnd != 30_000 {
		t.Fatalf("bound %d, want 30000", b.cwnd)
	}
	b.setSlow(false)
	b.setSlow(true)
	b.hold(now.Add(time.Second), tcpSample{rtt: 10 * time.Millisecond, minRTT: time.Millisecond, inFlight: 90_000, mss: 1448})
	if b.cwnd != 90_000 {
		t.Errorf("after a new slow spell, bound %d, want 90000", b.cwnd)
	}
	if h := b.hold(now.Add(2*time.Second), tcpSample{rtt: time.Second, inFlight: 1 << 30, mss: 1448}); h != 0 {
		t.Errorf("without a minimum RTT, hold = %s, want 0", h)
	}
	// Loopback on a busy machine turns "slow" for a moment; a round trip
	// of a third of a millisecond is never held, however much flies.
	if h := b.hold(now.Add(3*time.Second), tcpSample{rtt: 300 * time.Microsecond, minRTT: time.Microsecond, inFlight: 1 << 30, mss: 65483}); h != 0 {
		t.Errorf("a 300 µs round trip: hold = %s, want 0", h)
	}
}
