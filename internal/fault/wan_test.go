package fault

import (
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
// connection's share of the link. `make bench-wan` runs it (as root: it
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
	r := newRig(b, o)
	r.lab.Shape(r.cli, rate)

	echoConn := r.dialPublic(r.fixed)
	idle := r.interactive(echoConn.TCPConn, 20*time.Second)

	stop := make(chan struct{})
	counts, wait := r.bulkEach(r.fixed, 4, stop)
	// Until the link is saturated: a few seconds of bulk have filled every
	// queue on the way.
	time.Sleep(5 * time.Second)
	if os.Getenv("WAN_DEBUG") != "" {
		for _, h := range []struct{ name, ns string }{{"server", r.srv.NS}, {"client", r.cli.NS}} {
			out, _ := exec.Command("ip", "netns", "exec", h.ns, "ss", "-tni", "sport", "=", ":7835", "or", "dport", "=", ":7835").CombinedOutput()
			b.Logf("%s session socket:\n%s", h.name, out)
			q, _ := exec.Command("ip", "netns", "exec", h.ns, "tc", "-s", "qdisc").CombinedOutput()
			b.Logf("%s qdisc:\n%s", h.name, q)
		}
	}
	loaded := r.interactive(echoConn.TCPConn, 60*time.Second)
	before := snapshot(counts)
	const window = 20 * time.Second
	time.Sleep(window)
	after := snapshot(counts)
	close(stop)
	_ = wait()

	var total int64
	shares := make([]int64, len(after))
	for i := range after {
		shares[i] = after[i] - before[i]
		total += shares[i]
	}
	bps := float64(total) * 8 / window.Seconds()
	out := fmt.Sprintf("\nWAN, session link %s, TCP %s (%s):\n", rate, o.congestion, time.Now().Format("2006-01-02"))
	out += fmt.Sprintf("  %-34s %10s %10s %12s %12s\n", "", "idle p50", "idle p99", "loaded p50", "loaded p99")
	out += fmt.Sprintf("  %-34s %10s %10s %12s %12s\n", fmt.Sprintf("new connection, first byte (%d/%d)", len(idle.ttfb), len(loaded.ttfb)),
		pct(idle.ttfb, 50), pct(idle.ttfb, 99), pct(loaded.ttfb, 50), pct(loaded.ttfb, 99))
	out += fmt.Sprintf("  %-34s %10s %10s %12s %12s\n", fmt.Sprintf("64-byte echo, open conn (%d/%d)", len(idle.echo), len(loaded.echo)),
		pct(idle.echo, 50), pct(idle.echo, 99), pct(loaded.echo, 50), pct(loaded.echo, 99))
	out += fmt.Sprintf("  bulk, 4 connections, echoed back: %.2f Mbit/s, %.0f %% of the cap; shares", bps/1e6, 100*bps/capBits)
	for _, n := range shares {
		out += fmt.Sprintf(" %.0f %%", 100*float64(n)/float64(max(total, 1)))
	}
	out += "\n"
	if idle.failed+loaded.failed > 0 {
		out += fmt.Sprintf("  failed probes: %d idle, %d loaded\n", idle.failed, loaded.failed)
	}
	fmt.Fprint(os.Stdout, out)
	b.Log(out)
}

// probes is what interactive measured.
type probes struct {
	ttfb, echo []time.Duration
	failed     int
}

// interactive times 100 new connections (started 50 ms apart, each from
// connect to its first echoed byte) and, meanwhile, 64-byte echoes on c,
// one after another, for at most limit.
func (r *rig) interactive(c net.Conn, limit time.Duration) probes {
	var mu sync.Mutex
	var p probes
	deadline := time.Now().Add(limit)
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := r.firstByte(deadline)
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

// firstByte connects to the tunnel, writes one byte and times the echo.
func (r *rig) firstByte(deadline time.Time) (time.Duration, error) {
	start := time.Now()
	c, err := r.pub.Dial(r.fixed)
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
