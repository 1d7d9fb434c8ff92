package fault

import (
	"cmp"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkWANInteractive measures what a user feels on a slow uplink that
// one big transfer saturates: the session's path is capped at 8 Mbit/s
// (a token bucket on the client's link, as a home uplink), 4 connections
// move bulk data through the tunnel both ways, and meanwhile 100 new
// connections are timed from connect to their first echoed byte and 64-byte
// echoes are timed on a connection opened before the load. The same
// figures with the session idle are printed beside them, with each bulk
// connection's share of the link, and, as the same run's baseline, all of
// it again over the same link without the tunnel (plain TCP from the
// public host to the echo service). `make bench-wan` runs it (as root: it
// builds network namespaces); it prints, it asserts nothing.
func BenchmarkWANInteractive(b *testing.B) {
	const rate = "8mbit"
	const capBits = 8e6
	o := defaultOpts()
	// Production-like TCP timers: the link is slow, not dead.
	o.sessionKA = ka{10 * time.Second, 5 * time.Second, 2}
	o.userTimeout = 30 * time.Second
	o.localOnClient = true
	// A loss-based congestion control, as most uplinks' senders run
	// (Linux's default is CUBIC, which a network namespace may not pick
	// unless the host allows it; Reno behaves alike here: it fills the
	// bottleneck's queue and loses little). The machine's own default may
	// be BBR, which on a token bucket lost a tenth of its segments.
	o.congestion = "reno"
	if cc := os.Getenv("WAN_CC"); cc != "" {
		o.congestion = cc
	}
	// WAN_STREAM_MAX sets [window] stream_max on both daemons (window
	// growth is off at the default).
	o.streamMax = os.Getenv("WAN_STREAM_MAX")
	r := newRig(b, o)
	r.lab.Shape(r.cli, rate)

	// The same link without the tunnel first: plain TCP connections from
	// the public host straight to the echo service, whose bulk rate is
	// what the tunnel's is measured against (headers and the other
	// direction's acknowledgments take their part of the cap on both).
	plain := r.saturated(b, r.echo.Addr())
	tunnel := r.saturated(b, r.fixed)

	out := fmt.Sprintf("\nWAN, session link %s, TCP %s, stream_max %s (%s):\n", rate, o.congestion, cmp.Or(o.streamMax, "default"), time.Now().Format("2006-01-02"))
	out += fmt.Sprintf("  %-36s %10s %10s %12s %12s %12s %12s\n", "", "idle p50", "idle p99", "loaded p50", "loaded p99", "plain p50", "plain p99")
	row := func(name string, pick func(probes) []time.Duration) {
		i, l, p := pick(tunnel.idle), pick(tunnel.loaded), pick(plain.loaded)
		out += fmt.Sprintf("  %-36s %10s %10s %12s %12s %12s %12s\n", fmt.Sprintf("%s (%d/%d)", name, len(i), len(l)),
			pct(i, 50), pct(i, 99), pct(l, 50), pct(l, 99), pct(p, 50), pct(p, 99))
	}
	row("new connection, first byte", func(p probes) []time.Duration { return p.ttfb })
	row("64-byte echo, open connection", func(p probes) []time.Duration { return p.echo })
	for _, l := range []struct {
		name string
		s    saturation
	}{{"tunnel", tunnel}, {"plain TCP", plain}} {
		out += fmt.Sprintf("  bulk, 4 connections, %-9s %.2f Mbit/s, %.0f %% of the cap; shares", l.name+":", l.s.bps/1e6, 100*l.s.bps/capBits)
		for _, sh := range l.s.shares {
			out += fmt.Sprintf(" %.0f %%", 100*sh)
		}
		out += "\n"
	}
	out += fmt.Sprintf("  tunnel bulk / plain TCP bulk: %.1f %%\n", 100*tunnel.bps/plain.bps)
	if f := tunnel.idle.failed + tunnel.loaded.failed + plain.loaded.failed; f > 0 {
		out += fmt.Sprintf("  failed probes: %d tunnel idle, %d tunnel loaded, %d plain loaded\n", tunnel.idle.failed, tunnel.loaded.failed, plain.loaded.failed)
	}
	fmt.Fprint(os.Stdout, out)
	b.Log(out)
}

// saturation is what saturated measured.
type saturation struct {
	idle, loaded probes
	bps          float64   // bulk echoed back, bits/s
	shares       []float64 // each bulk connection's part of it
}

// saturated measures interactive probes to addr with the link idle, then
// while 4 bulk connections to addr move data both ways, and the bulk
// connections' rate and shares.
func (r *rig) saturated(b *testing.B, addr string) saturation {
	var s saturation
	echoConn := r.dialPublic(addr)
	defer echoConn.Close()
	s.idle = r.interactive(addr, echoConn.TCPConn, 20*time.Second)

	stop := make(chan struct{})
	counts, wait := r.bulkEach(addr, 4, stop)
	// Until the link is saturated: a few seconds of bulk have filled every
	// queue on the way.
	time.Sleep(5 * time.Second)
	if os.Getenv("WAN_DEBUG") != "" {
		for _, h := range []struct{ name, ns string }{{"server", r.srv.NS}, {"client", r.cli.NS}} {
			out, _ := exec.Command("ip", "netns", "exec", h.ns, "ss", "-tni").CombinedOutput()
			b.Logf("%s sockets (%s):\n%s", h.name, addr, out)
			q, _ := exec.Command("ip", "netns", "exec", h.ns, "tc", "-s", "qdisc").CombinedOutput()
			b.Logf("%s qdisc:\n%s", h.name, q)
		}
	}
	s.loaded = r.interactive(addr, echoConn.TCPConn, 60*time.Second)
	before := snapshot(counts)
	const window = 20 * time.Second
	time.Sleep(window)
	after := snapshot(counts)
	close(stop)
	_ = wait()

	var total int64
	for i := range after {
		total += after[i] - before[i]
	}
	for i := range after {
		s.shares = append(s.shares, float64(after[i]-before[i])/float64(max(total, 1)))
	}
	s.bps = float64(total) * 8 / window.Seconds()
	return s
}

// probes is what interactive measured.
type probes struct {
	ttfb, echo []time.Duration
	failed     int
}

// interactive times 100 new connections to addr (started 50 ms apart, each from
// connect to its first echoed byte) and, meanwhile, 64-byte echoes on c,
// one after another, for at most limit.
func (r *rig) interactive(addr string, c net.Conn, limit time.Duration) probes {
	var mu sync.Mutex
	var p probes
	deadline := time.Now().Add(limit)
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := r.firstByte(addr, deadline)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				p.failed++
				return
			}
			p.ttfb = append(p.ttfb, d)
		}()
		time.Sleep(50 * time.Millisecond)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	msg := make([]byte, 64)
	got := make([]byte, 64)
	_ = c.SetDeadline(deadline)
	for n := 0; n < 100; n++ {
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			p.failed++
			break
		}
		if _, err := io.ReadFull(c, got); err != nil {
			p.failed++
			break
		}
		mu.Lock()
		p.echo = append(p.echo, time.Since(start))
		mu.Unlock()
	}
	_ = c.SetDeadline(time.Time{})
	<-done
	return p
}

// firstByte connects to addr, writes one byte and times the echo.
func (r *rig) firstByte(addr string, deadline time.Time) (time.Duration, error) {
	start := time.Now()
	c, err := r.pub.Dial(addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	if _, err := c.Write([]byte{1}); err != nil {
		return 0, err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func snapshot(cs []*atomic.Int64) []int64 {
	out := make([]int64, len(cs))
	for i, c := range cs {
		out[i] = c.Load()
	}
	return out
}

// pct is the p-th percentile of ds, "-" when there is none.
func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	i = min(max(i-1, 0), len(s)-1)
	if s[i] < 10*time.Millisecond {
		return s[i].Round(10 * time.Microsecond).String()
	}
	return s[i].Round(time.Millisecond).String()
}
