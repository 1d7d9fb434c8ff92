package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// BenchmarkLongFatLink measures throughput over long, fat paths: a
// user-space relay (tt.NewDelayRelay) holds data for half the round trip each
// way, at most at LFN_MBIT (200 Mbit/s), for round trips of 20, 50 and
// 200 ms. The baseline is a plain TCP connection through the same relay;
// the tunnel is the built binaries with the session through the relay,
// both ends with the default [window] (LFN_STREAM_MAX sets stream_max).
// One connection and 8 connections write for 5 s after 2 s of warm-up;
// what reaches the sink counts. Each hop's TCP runs on loopback, so the
// only end-to-end flow control across the path is the tunnel's own
// (yamux's stream windows): what this measures. It prints, with tunneld's
// and tunnelc's peak RSS; it asserts nothing. `make bench-lfn` runs it.
func BenchmarkLongFatLink(b *testing.B) {
	mbit := 200.0
	if s := os.Getenv("LFN_MBIT"); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v <= 0 {
			b.Fatalf("LFN_MBIT: %q is not a rate in Mbit/s", s)
		}
		mbit = v
	}
	bin := tt.Binaries(b)
	out := fmt.Sprintf("\nLong fat links, %.0f Mbit/s each way, user-space delay (%s):\n", mbit, time.Now().Format("2006-01-02"))
	out += fmt.Sprintf("  %6s %12s %12s %7s %12s %12s %7s %12s %12s\n", "RTT", "plain, 1", "tunnel, 1", "ratio", "plain, 8", "tunnel, 8", "ratio", "tunneld RSS", "tunnelc RSS")
	for _, rtt := range []time.Duration{20 * time.Millisecond, 50 * time.Millisecond, 200 * time.Millisecond} {
		sink := newSink(b)
		rl := listen(b)
		plain := tt.NewDelayRelay(b, rl, sink.Addr(), rtt/2, mbit*1e6)
		p1 := sink.measure(b, plain.Addr(), 1)
		p8 := sink.measure(b, plain.Addr(), 8)
		plain.Close()

		pub, srv, cli := lfnTunnel(b, bin, sink.Addr(), rtt, mbit)
		t1 := sink.measure(b, pub, 1)
		t8 := sink.measure(b, pub, 8)
		srvRSS, cliRSS := srv.Mem(b, "VmHWM"), cli.Mem(b, "VmHWM")
		srv.Signal(b, os.Interrupt, 10*time.Second)
		cli.Signal(b, os.Interrupt, 10*time.Second)
		out += fmt.Sprintf("  %6s %7.0f Mb/s %7.0f Mb/s %6.0f%% %7.0f Mb/s %7.0f Mb/s %6.0f%% %8.1f MiB %8.1f MiB\n", rtt,
			p1/1e6, t1/1e6, 100*t1/p1, p8/1e6, t8/1e6, 100*t8/p8, float64(srvRSS)/(1<<20), float64(cliRSS)/(1<<20))
	}
	fmt.Fprint(os.Stdout, out)
	b.Log(out)
}

// lfnWindow is the daemons' [window]: the default unless LFN_STREAM_MAX
// sets stream_max ("4MiB": no growth).
var lfnWindow = func() string {
	if s := os.Getenv("LFN_STREAM_MAX"); s != "" {
		return fmt.Sprintf("\n[window]\nstream_max = %q\n", s)
	}
	return ""
}()

func listen(b *testing.B) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	return ln
}

// lfnTunnel starts tunneld and tunnelc (TLS on, defaults) with the session
// through a delaying relay, one tunnel to sink; it returns the public address.
func lfnTunnel(b *testing.B, bin, sink string, rtt time.Duration, mbit float64) (string, *tt.Proc, *tt.Proc) {
	dir := b.TempDir()
	port, pubPort := tt.FreePort(b), tt.FreePort(b)
	srvConf := filepath.Join(dir, "tunneld.toml")
	if err := os.WriteFile(srvConf, fmt.Appendf(nil, `listen = "127.0.0.1:%d"
token = "lfn-bench-token-0123456789"
bind_addr = "127.0.0.1"
state_dir = %q
%s`, port, filepath.Join(dir, "state"), lfnWindow), 0o600); err != nil {
		b.Fatal(err)
	}
	fp, err := exec.Command(filepath.Join(bin, "tunneld"), "fingerprint", "-c", srvConf).Output()
	if err != nil {
		b.Fatalf("tunneld fingerprint: %v", err)
	}
	srv := tt.Start(b, exec.Command(filepath.Join(bin, "tunneld"), "serve", "-c", srvConf))
	srv.WaitOutput(b, 10*time.Second, `listening for sessions`)
	relay := tt.NewDelayRelay(b, listen(b), fmt.Sprintf("127.0.0.1:%d", port), rtt/2, mbit*1e6)
	cliConf := filepath.Join(dir, "tunnel.toml")
	if err := os.WriteFile(cliConf, fmt.Appendf(nil, `server = %q
token = "lfn-bench-token-0123456789"
name = "lfn"

[tls]
fingerprint = %q

%s
[tunnels.bulk]
local = %q
remote_port = %d
`, relay.Addr(), strings.TrimSpace(string(fp)), lfnWindow, sink, pubPort), 0o600); err != nil {
		b.Fatal(err)
	}
	cli := tt.Start(b, exec.Command(filepath.Join(bin, "tunnelc"), "up", "-c", cliConf))
	cli.WaitOutput(b, 20*time.Second, `session up`)
	return fmt.Sprintf("127.0.0.1:%d", pubPort), srv, cli
}

// sink counts what it receives and discards it.
type sink struct {
	*tt.Service
	n atomic.Int64
}

func newSink(b *testing.B) *sink {
	s := &sink{}
	s.Service = tt.NewService(b, func(c *net.TCPConn, stop <-chan struct{}) {
		buf := make([]byte, 256<<10)
		for {
			k, err := c.Read(buf)
			s.n.Add(int64(k))
			if err != nil {
				return
			}
		}
	})
	return s
}

// measure has n connections to addr write for 2 s of warm-up and 5 s
// measured, and returns the bits per second the sink received meanwhile.
func (s *sink) measure(b *testing.B, addr string, n int) float64 {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			buf := make([]byte, 128<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(2 * time.Second)
	before, start := s.n.Load(), time.Now()
	time.Sleep(5 * time.Second)
	got, took := s.n.Load()-before, time.Since(start)
	close(stop)
	wg.Wait()
	// Let what is still on its way drain before the next measurement.
	for last := int64(-1); last != s.n.Load(); {
		last = s.n.Load()
		time.Sleep(500 * time.Millisecond)
	}
	return float64(got) * 8 / took.Seconds()
}
