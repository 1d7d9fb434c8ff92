package proxy

import (
	"sync"
	"sync/atomic"
	"time"
)

// Tally counts the connections of one tunnel for status pages and
// metrics: the open ones as they run (their joins' counts read live), and
// the totals of the ended ones. Opening and closing take its lock once
// each; the copy loops never do.
type Tally struct {
	mu                      sync.Mutex
	live                    map[uint64]*Live
	ended, endAToB, endBToA uint64
	// idleSince is when the last connection ended with no holder left
	// (see Hold); zero while the tally is in use.
	idleSince time.Time
	holders   int
}

// Live is one open connection of a Tally.
type Live struct {
	ID    uint64
	Peer  string
	Since time.Time
	// Owner tells the connections of one session from another's.
	Owner any
	pair  atomic.Pointer[Pair]
}

// Run attaches the connection's join, once it runs.
func (l *Live) Run(p *Pair) { l.pair.Store(p) }

// Moved is what the connection has moved so far.
func (l *Live) Moved() Stats {
	if p := l.pair.Load(); p != nil {
		return p.Moved()
	}
	return Stats{}
}

// Abort resets the connection with err; false when its join is not
// running yet.
func (l *Live) Abort(err error) bool {
	p := l.pair.Load()
	if p == nil {
		return false
	}
	p.Abort(err)
	return true
}

// Open records l as open.
func (t *Tally) Open(l *Live) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.live == nil {
		t.live = map[uint64]*Live{}
	}
	t.live[l.ID] = l
	t.idleSince = time.Time{}
}

// Close moves l's final counts from open to ended.
func (t *Tally) Close(l *Live, final Stats) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.live, l.ID)
	t.ended++
	t.endAToB += uint64(final.AToB)
	t.endBToA += uint64(final.BToA)
	t.idleLocked()
}

// Hold counts a holder of the tally (a listener, a configured tunnel):
// a tally with neither holders nor open connections is idle. Release
// undoes it.
func (t *Tally) Hold() {
	t.mu.Lock()
	t.holders++
	t.idleSince = time.Time{}
	t.mu.Unlock()
}

func (t *Tally) Release() {
	t.mu.Lock()
	t.holders--
	t.idleLocked()
	t.mu.Unlock()
}

func (t *Tally) idleLocked() {
	if t.holders == 0 && len(t.live) == 0 && t.idleSince.IsZero() {
		t.idleSince = time.Now()
	}
}

// Holders is how many holders the tally has now.
func (t *Tally) Holders() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.holders
}

// IdleFor reports whether the tally has been idle for longer than d.
func (t *Tally) IdleFor(now time.Time, d time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return !t.idleSince.IsZero() && now.Sub(t.idleSince) > d
}

// Counts is a consistent reading of a Tally.
type Counts struct {
	// Open counts the open connections (of one owner, when asked so);
	// Total every connection, open or ended.
	Open, Total uint64
	AToB, BToA  uint64 // of every connection
	OwnAToB     uint64 // of the owner's open connections
	OwnBToA     uint64
}

// Read reads the tally; with owner non-nil, Open and Own* count only that
// owner's connections.
func (t *Tally) Read(owner any) Counts {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := Counts{Total: t.ended, AToB: t.endAToB, BToA: t.endBToA}
	for _, l := range t.live {
		m := l.Moved()
		c.Total++
		c.AToB += uint64(m.AToB)
		c.BToA += uint64(m.BToA)
		if owner == nil || l.Owner == owner {
			c.Open++
			c.OwnAToB += uint64(m.AToB)
			c.OwnBToA += uint64(m.BToA)
		}
	}
	return c
}

// Find is the open connection with id, or nil.
func (t *Tally) Find(id uint64) *Live {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.live[id]
}

// Each calls f for every open connection, under the tally's lock: f must
// not call back into it.
func (t *Tally) Each(f func(*Live)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, l := range t.live {
		f(l)
	}
}
