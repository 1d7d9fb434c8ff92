package mux

import (
	"io"
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/sockopt"
)

// heartbeatOptions is a session whose heartbeat is all that watches it.
func heartbeatOptions(interval time.Duration) Options {
	return Options{
		KeepAlive:         sockopt.KeepAlive{Idle: time.Hour, Interval: time.Hour, Count: 1},
		HeartbeatInterval: interval,
		HeartbeatTimeout:  4 * interval,
		HandshakeTimeout:  5 * time.Second,
		Logger:            slog.New(slog.DiscardHandler),
	}
}

// An idle session's two ends share the heartbeat: whoever has heard
// nothing for an interval pings, and the other hears the ping, so the pair
// exchanges about one ping and one answer per interval, not a ping and an
// answer each way (a thousand idle sessions on one server pay for every
// one). Both ends stay up.
func TestIdleSessionSharesTheHeartbeat(t *testing.T) {
	const interval = 50 * time.Millisecond
	o := heartbeatOptions(interval)
	cli, srv, _, _ := pair(t, o)

	rx0 := cli.conn.rx.Load() + srv.conn.rx.Load()
	start := time.Now()
	time.Sleep(40 * interval)
	frames := (cli.conn.rx.Load() + srv.conn.rx.Load() - rx0) / headerSize
	elapsed := time.Since(start)
	if cli.IsClosed() || srv.IsClosed() {
		t.Fatal("an idle healthy session was closed")
	}
	// One ping and one answer per interval; both ends pinging on their
	// own make two of each. Late timers on a busy machine only lower it.
	perInterval := float64(frames) / (float64(elapsed) / float64(interval))
	t.Logf("%d frames in %s: %.2f per interval", frames, elapsed.Round(time.Millisecond), perInterval)
	if perInterval > 3 {
		t.Errorf("%.2f frames per heartbeat interval on an idle session, want about 2 (a ping and its answer)", perInterval)
	}
	if frames == 0 {
		t.Error("no heartbeat at all")
	}
}

// headerSize is a yamux frame header: a ping or its answer.
const headerSize = 12

// The monitors of many idle sessions run together on a shared grid, so an
// idle server wakes a few times per grid slot, not once per session: a
// run lands at the start of its slot (timer latency aside), where runs
// at each session's own phase would spread over the whole slot.
func TestMonitorsShareAGrid(t *testing.T) {
	const interval, sessions = time.Second, 30
	o := heartbeatOptions(interval)
	grid := monitorGrid(o)
	if grid != interval/20 {
		t.Fatalf("grid %v for a %v heartbeat", grid, interval)
	}
	var mu sync.Mutex
	ours := map[*Session]bool{}
	var runs []time.Duration // each run's offset into its grid slot
	ran := func(s *Session, now time.Time) {
		mu.Lock()
		if ours[s] {
			runs = append(runs, now.Sub(gridEpoch)%grid)
		}
		mu.Unlock()
	}
	monitorRan.Store(&ran)
	defer monitorRan.Store(nil)

	for i := 0; i < sessions; i++ {
		cli, srv, _, _ := pair(t, o)
		mu.Lock()
		ours[cli], ours[srv] = true, true
		mu.Unlock()
		// Stagger the sessions' phases, as clients arriving over time.
		time.Sleep(time.Duration(i) * grid / sessions)
	}
	time.Sleep(3 * interval)
	mu.Lock()
	defer mu.Unlock()
	early := 0
	for _, d := range runs {
		if d < grid/2 {
			early++
		}
	}
	// Timer latency under -race on a busy machine moves some runs later,
	// by up to tens of milliseconds when every core is taken: the bound
	// is half a slot (25 ms). Without the grid, runs spread evenly and
	// about half would be this early; of a hundred-odd runs, three
	// quarters is then far out of reach.
	if len(runs) < sessions || early < len(runs)*3/4 {
		t.Fatalf("%d of %d monitor runs in the first half of their %v grid slot", early, len(runs), grid)
	}
}

// A burst that a reader fell behind on leaves the stream's receive buffer
// at up to a window; once the stream has been quiet for a sample period or
// two the monitor gives it back, so an open idle connection does not keep
// megabytes for its life.
func TestQuietStreamGivesBackItsBuffer(t *testing.T) {
	const window = 4 << 20
	o := heartbeatOptions(time.Second)
	o.UserTimeout = time.Second // samples, and so shrinks, every 250 ms
	o.StreamWindow = window
	cli, srv, _, _ := pair(t, o)
	a, sa := openPair(t, cli, srv, "x")
	if _, err := io.ReadFull(sa, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	data := make([]byte, window-1)
	base := heap()
	if _, err := a.Write(data); err != nil {
		t.Fatal(err)
	}
	// Nobody reads until it has all arrived: it is all buffered.
	for !sa.Readable() {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := io.ReadFull(sa, make([]byte, len(data))); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		after := heap()
		if after < base+window/8 {
			t.Logf("heap %d KiB before the burst, %d KiB once the stream was quiet", base>>10, after>>10)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("heap %d KiB before the burst, still %d KiB 5 s after it was read", base>>10, after>>10)
		}
		time.Sleep(50 * time.Millisecond)
	}
	runtime.KeepAlive(data)
	if cli.IsClosed() || srv.IsClosed() {
		t.Fatal("the session ended")
	}
}

// A stream whose reader acknowledges: what a window update does not
// cover (less than half a window read) is acknowledged at the monitor's
// next sample, so the writer learns it can drop what it kept; a stream
// that did not ask acknowledges nothing.
func TestMonitorAcknowledgesWhatWasRead(t *testing.T) {
	o := heartbeatOptions(time.Second)
	o.UserTimeout = time.Second // samples every 250 ms
	cli, srv, _, _ := pair(t, o)
	a, sa := openPair(t, cli, srv, "x")
	b, sb := openPair(t, cli, srv, "y")
	sa.EnableAcks()
	for _, st := range []*Stream{a, b} {
		if _, err := st.Write(make([]byte, 100<<10)); err != nil {
			t.Fatal(err)
		}
	}
	for _, st := range []*Stream{sa, sb} {
		if _, err := io.ReadFull(st, make([]byte, 1+100<<10)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for a.Acked() != a.Sent() {
		if time.Now().After(deadline) {
			t.Fatalf("acknowledged %d of %d bytes read 5 s ago", a.Acked(), a.Sent())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if a.Sent() != 1+100<<10 {
		t.Fatalf("sent %d, wrote %d", a.Sent(), 1+100<<10)
	}
	if b.Acked() != 0 {
		t.Fatalf("a stream that did not ask acknowledged %d bytes", b.Acked())
	}
}
