package server

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func testGate(max, perAddr, failures int) (*gate, *fakeClock, *bytes.Buffer) {
	var logs bytes.Buffer
	g := newGate(max, perAddr, failures, slog.New(slog.NewTextHandler(&logs, nil)))
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	g.now = clk.now
	return g, clk, &logs
}

var (
	addrA = netip.MustParseAddr("198.18.1.2")
	addrB = netip.MustParseAddr("198.18.3.2")
)

// The gate caps handshakes in progress in all and per address, and frees
// a slot when a handshake ends.
func TestGateCapsHandshakesInProgress(t *testing.T) {
	g, _, _ := testGate(3, 2, 100)
	d1, why := g.admit(addrA)
	d2, why2 := g.admit(addrA)
	if why != "" || why2 != "" {
		t.Fatalf("first two from A refused: %q %q", why, why2)
	}
	if _, why := g.admit(addrA); !strings.Contains(why, "handshake_limit_per_address") {
		t.Fatalf("third from A: %q", why)
	}
	d3, why := g.admit(addrB)
	if why != "" {
		t.Fatalf("B refused: %q", why)
	}
	if _, why := g.admit(addrB); !strings.Contains(why, "(handshake_limit)") {
		t.Fatalf("past the global cap: %q", why)
	}
	d1(false)
	d1(false) // once only
	if _, why := g.admit(addrB); why != "" {
		t.Fatalf("a freed slot was not reused: %q", why)
	}
	d2(false)
	d3(false)
}

// Failed handshakes drain an address's bucket; past it, the address is
// turned away at accept until the bucket refills, and its further
// refusals go to one summary line instead of one line each.
func TestGateLimitsFailuresAndSummarises(t *testing.T) {
	g, clk, logs := testGate(100, 100, 3)
	for i := range 3 {
		done, why := g.admit(addrA)
		if why != "" {
			t.Fatalf("attempt %d refused at accept: %q", i, why)
		}
		if !g.logRefusal(addrA) {
			t.Fatalf("failure %d within the allowance not logged in full", i)
		}
		done(true)
	}
	for range 10 {
		if _, why := g.admit(addrA); !strings.Contains(why, "failed_handshakes_per_minute") {
			t.Fatalf("past the allowance: %q", why)
		}
	}
	if _, why := g.admit(addrB); why != "" {
		t.Fatalf("another address suffers: %q", why)
	}
	g.sweep()
	if n := strings.Count(logs.String(), "handshakes refused from address"); n != 1 ||
		!strings.Contains(logs.String(), "closed_at_accept=10") || !strings.Contains(logs.String(), "addr=198.18.1.2") {
		t.Fatalf("summary lines (%d):\n%s", n, logs)
	}
	// 3 a minute: one comes back in 20 s.
	clk.advance(21 * time.Second)
	done, why := g.admit(addrA)
	if why != "" {
		t.Fatalf("bucket did not refill: %q", why)
	}
	done(false)
}

// The table of addresses stays bounded and forgets idle ones.
func TestGateForgets(t *testing.T) {
	g, clk, _ := testGate(1<<20, 1<<20, 5)
	for i := range maxSources + 100 {
		a := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		if i >= 1<<16 {
			a = netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
		}
		done, _ := g.admit(a)
		if done != nil {
			done(false)
		}
	}
	if n := len(g.sources); n > maxSources {
		t.Fatalf("%d addresses remembered, bound %d", n, maxSources)
	}
	clk.advance(2 * time.Minute)
	g.sweep()
	if n := len(g.sources); n != 0 {
		t.Fatalf("%d idle addresses still remembered after a sweep", n)
	}
}

// An IPv6 host has a /64 to spread over: the gate counts the /64, so it
// cannot pose as many sources.
func TestGateCountsIPv6ByPrefix(t *testing.T) {
	g, _, _ := testGate(100, 2, 100)
	for i, a := range []string{"2001:2::1", "2001:2::ffff:1", "2001:2:0:0:8000::1"} {
		_, why := g.admit(sourceOf(netip.MustParseAddr(a)))
		if want := i >= 2; (why != "") != want {
			t.Fatalf("%s (attempt %d): refused %q, want refused %v", a, i, why, want)
		}
	}
	if _, why := g.admit(sourceOf(netip.MustParseAddr("2001:2:0:1::1"))); why != "" {
		t.Fatalf("another /64 refused: %q", why)
	}
	if got := sourceOf(netip.MustParseAddr("::ffff:198.18.1.2")); got != addrA {
		t.Fatalf("a v4-mapped address counts as %s, want %s", got, addrA)
	}
}

// A full table is swept in one go, and its refusals are summed into one
// log line rather than one per address.
func TestGateFullTableLogsOneLine(t *testing.T) {
	g, _, logs := testGate(1<<20, 1, 1)
	for i := range maxSources {
		a := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		done, _ := g.admit(a)
		done(true)          // its one failure: its bucket is empty
		_, _ = g.admit(a)   // closed at accept
		_ = g.logRefusal(a) // not logged in full
	}
	if n := len(g.sources); n != maxSources {
		t.Fatalf("%d sources, want %d", n, maxSources)
	}
	_, _ = g.admit(netip.AddrFrom4([4]byte{198, 19, 0, 1}))
	if n := len(g.sources); n != 1 {
		t.Errorf("%d sources after the full sweep, want 1", n)
	}
	out := logs.String()
	if n := strings.Count(out, "\n"); n != 1 || !strings.Contains(out, "addresses=65536") || !strings.Contains(out, "closed_at_accept=65536") {
		t.Fatalf("full sweep logged %d lines:\n%.500s", n, out)
	}
}
