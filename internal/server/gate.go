package server

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// gate bounds the work tunneld does for peers that have not authenticated:
// how many handshakes run at once, in all and per source address, and how
// often one address may fail a handshake (a token bucket). What it turns
// away costs an accept and a close, no goroutine. It also keeps refusals
// from flooding the log: an address's refusals within its allowance are
// logged in full, the rest are counted into one summary line per address
// per interval.
type gate struct {
	max, maxPerAddr int
	failRate        float64 // failed handshakes per second refilled
	failBurst       float64
	interval        time.Duration // summary period
	log             *slog.Logger
	now             func() time.Time

	mu      sync.Mutex
	total   int
	sources map[netip.Addr]*source
}

// source is what the gate remembers of one address.
type source struct {
	inHandshake int
	tokens      float64 // failures it may still have before it is refused
	refill      time.Time
	logged      time.Time // when its last summary was logged
	suppressed  int       // refusals since, not logged
	atDoor      int       // connections closed at accept since
}

// maxSources bounds the gate's memory: an attacker with many addresses
// cannot grow it further; the oldest idle entries go first (sweep).
const maxSources = 65536

func newGate(max, maxPerAddr int, failuresPerMinute int, log *slog.Logger) *gate {
	return &gate{
		max: max, maxPerAddr: maxPerAddr,
		failRate: float64(failuresPerMinute) / 60, failBurst: float64(failuresPerMinute),
		interval: time.Minute, log: log, now: time.Now,
		sources: map[netip.Addr]*source{},
	}
}

// setLimits applies reloaded limits; handshakes in progress keep going.
func (g *gate) setLimits(max, maxPerAddr, failuresPerMinute int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.max, g.maxPerAddr = max, maxPerAddr
	g.failRate, g.failBurst = float64(failuresPerMinute)/60, float64(failuresPerMinute)
}

// addrOf is the source the gate counts a connection against: the IPv4
// address, or the /64 an IPv6 address is in, as one host or site usually
// has a whole /64 and could otherwise pose as 2^64 sources.
func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return sourceOf(ip)
		}
	}
	return netip.Addr{}
}

func sourceOf(ip netip.Addr) netip.Addr {
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// sourceLocked returns addr's entry, making one (with a full bucket).
func (g *gate) sourceLocked(addr netip.Addr) *source {
	src := g.sources[addr]
	if src == nil {
		if len(g.sources) >= maxSources {
			g.sweepLocked(true)
		}
		src = &source{tokens: g.failBurst, refill: g.now()}
		g.sources[addr] = src
	}
	now := g.now()
	src.tokens, src.refill = g.tokensAt(src, now), now
	return src
}

// tokensAt is src's bucket at now, refilled since its last look.
func (g *gate) tokensAt(src *source, now time.Time) float64 {
	return min(g.failBurst, src.tokens+now.Sub(src.refill).Seconds()*g.failRate)
}

// admit lets a new connection from addr start its handshake, or says why
// not. done must be called once when the handshake is over, with whether
// it failed.
func (g *gate) admit(addr netip.Addr) (done func(failed bool), why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	src := g.sourceLocked(addr)
	switch {
	case g.total >= g.max:
		why = "too many handshakes in progress (handshake_limit)"
	case src.inHandshake >= g.maxPerAddr:
		why = "too many handshakes in progress from this address (handshake_limit_per_address)"
	case src.tokens < 1:
		why = "too many failed handshakes from this address (failed_handshakes_per_minute)"
	}
	if why != "" {
		src.atDoor++
		return nil, why
	}
	g.total++
	src.inHandshake++
	var once sync.Once
	return func(failed bool) {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			g.total--
			src.inHandshake--
			if failed {
				src.tokens--
			}
		})
	}, ""
}

// logRefusal reports whether a refused handshake from addr is to be logged
// in full: while the address is within its allowance of failures (its
// bucket), every one is; past it, they are counted for the address's
// summary line. An address gets at most failed_handshakes_per_minute full
// lines a minute, and one summary.
func (g *gate) logRefusal(addr netip.Addr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	src := g.sourceLocked(addr)
	if src.tokens >= 1 {
		return true
	}
	src.suppressed++
	return false
}

// sweep logs one summary line per address with refusals not yet reported
// and forgets addresses with nothing left to remember.
func (g *gate) sweep() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sweepLocked(false)
}

// sweepLocked; full also drops entries that still remember refusals, for
// when the table is full. A full sweep happens when tens of thousands of
// addresses are refusing handshakes at once: it sums their refusals into
// one line, as one line per address would flood the log from under the
// gate's lock.
func (g *gate) sweepLocked(full bool) {
	now := g.now()
	var addrs, suppressed, atDoor int
	for addr, src := range g.sources {
		if src.suppressed > 0 || src.atDoor > 0 {
			if full {
				addrs++
				suppressed += src.suppressed
				atDoor += src.atDoor
			} else {
				g.log.Warn("handshakes refused from address", "addr", addr.String(),
					"failed_not_logged", src.suppressed, "closed_at_accept", src.atDoor,
					"since", src.logged.Format(time.RFC3339))
			}
			src.suppressed, src.atDoor = 0, 0
			src.logged = now
		}
		idle := src.inHandshake == 0 && g.tokensAt(src, now) >= g.failBurst && now.Sub(src.logged) >= g.interval
		if idle || (full && src.inHandshake == 0) {
			delete(g.sources, addr)
		}
	}
	if addrs > 0 {
		g.log.Warn("handshakes refused from many addresses (the gate's table of addresses was full: a distributed flood?)",
			"addresses", addrs, "failed_not_logged", suppressed, "closed_at_accept", atDoor, "table_size", maxSources)
	}
}
