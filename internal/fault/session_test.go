package fault

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/mux"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// 1. An idle session is black-holed: TCP keepalive on both ends finds it
// within idle + interval × count; the server closes the client's public
// listeners and connections; when the path returns the client takes its
// ports back.
func TestIdleSessionBlackHoled(t *testing.T) {
	t.Parallel()
	o := defaultOpts()
	o.hbInterval = time.Minute // keep the heartbeat out of it: this is TCP keepalive's case
	r := newRig(t, o)
	picked := r.picked
	open := r.dialPublic(r.fixed)
	if err := tt.Ping(open, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // idle
	sm, cm := r.server.Mark(), r.client.Mark()
	cm0 := cm
	cutFrom, cut := r.cut(r.cli, r.srv)
	bound := o.sessionKA.bound() + slack

	sl := r.server.WaitLine(t, sm, bound+time.Second, `msg="session lost".*client=faulty`)
	within(t, "server noticed", sl.At.Sub(cut), bound)
	cl := r.client.WaitLine(t, cm, bound+time.Second, `msg="session lost"`)
	within(t, "client noticed", cl.At.Sub(cut), bound)
	if d := sl.At.Sub(cutFrom); d < time.Duration(o.sessionKA.count)*o.sessionKA.intvl-500*time.Millisecond {
		t.Errorf("server noticed after only %s: not keepalive's doing?", d)
	}
	for _, l := range []tt.Line{sl, cl} {
		t.Log(l.Text)
		if !contains(l.Text, "keepalive") {
			t.Errorf("cause does not name keepalive: %s", l.Text)
		}
	}

	// The public connection of the lost session ends; it does not hang.
	d, err, ok := open.ends(cut, bound+time.Second)
	if !ok {
		t.Fatalf("public connection still open %s after the cut", d)
	}
	t.Logf("public connection ended %s after the cut: %v", d.Round(10*time.Millisecond), err)
	// Its listeners are closed: a new public connection is refused.
	if c, err := r.pub.Dial(r.fixed); err == nil {
		c.Close()
		t.Errorf("public port still accepting while the client is gone")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("public dial while the client is gone: %v, want connection refused", err)
	}

	cm = r.client.Mark()
	healed := time.Now()
	r.lab.Heal(r.cli, r.srv)
	up := r.waitUp(cm, o.maxDelay+5*time.Second)
	t.Log(r.client.WaitLine(t, cm0, 0, `msg=reconnecting`).Text)
	// Back within the reconnect delay plus one connection attempt: a dial
	// pending across the heal is replaced by a fresh one within
	// mux.ConnectAttempt, not left to the kernel's SYN retransmissions.
	within(t, "client back after heal", up.At.Sub(healed), o.maxDelay+mux.ConnectAttempt+slack)
	if r.picked != picked {
		t.Errorf("picked port moved from %s to %s", picked, r.picked)
	}
	r.works("after heal")
}

// 2. The session is black-holed while a bulk transfer runs: keepalive is
// suspended with data in flight, so TCP_USER_TIMEOUT and the heartbeat bound
// detection — nothing waits for the kernel's 15-minute retransmission limit.
func TestSessionBlackHoledWithDataInFlight(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		hb    time.Duration // heartbeat interval; 0 = off
		bound func(o opts) time.Duration
		// causes a side may report; the first must be reported by one.
		causes []string
	}{
		// UT counts from the first retransmission: UT plus up to ~0.6 s.
		// A side whose streams were all waiting for window at the cut has
		// nothing unacknowledged: TCP finds the loss by keepalive, and the
		// label says so from TCP_INFO, within the same bound here.
		{"user_timeout", 0, func(o opts) time.Duration { return max(o.userTimeout+600*time.Millisecond, o.sessionKA.bound()) },
			[]string{"user timeout", "keepalive timeout"}},
		{"heartbeat", time.Second, func(o opts) time.Duration { return o.hbBound() }, []string{"heartbeat timeout"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := defaultOpts()
			o.hbInterval = tc.hb
			r := newRig(t, o)
			stop := make(chan struct{})
			wait := r.bulk(r.fixed, 4, stop)
			time.Sleep(time.Second)
			sm, cm := r.server.Mark(), r.client.Mark()
			_, cut := r.cut(r.cli, r.srv)
			bound := tc.bound(o) + slack
			first := false
			for _, p := range []*tt.Proc{r.server, r.client} {
				mark := map[*tt.Proc]int{r.server: sm, r.client: cm}[p]
				l := p.WaitLine(t, mark, bound+2*time.Second, `msg="session lost"`)
				within(t, p.Name+" noticed", l.At.Sub(cut), bound)
				t.Log(l.Text)
				ok := false
				for _, c := range tc.causes {
					ok = ok || contains(l.Text, c)
				}
				if !ok {
					t.Errorf("%s: cause is none of %q: %s", p.Name, tc.causes, l.Text)
				}
				first = first || contains(l.Text, tc.causes[0])
			}
			if !first {
				t.Errorf("neither side reports %q", tc.causes[0])
			}
			close(stop)
			if moved, err := wait(); err == nil {
				t.Errorf("bulk connections survived a lost session (moved %d bytes)", moved)
			}
			cm = r.client.Mark()
			r.lab.Heal(r.cli, r.srv)
			r.waitUp(cm, o.maxDelay+5*time.Second)
			r.works("after heal")
		})
	}
}

// 3. A relay on the session path freezes: both TCP connections stay open and
// the relay's kernel answers keepalive probes, so only the heartbeat can
// notice. The client gets back when the relay recovers.
func TestFrozenRelay(t *testing.T) {
	t.Parallel()
	o := defaultOpts()
	o.viaRelay = true
	r := newRig(t, o)
	open := r.dialPublic(r.fixed)
	if err := tt.Ping(open, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	sm, cm := r.server.Mark(), r.client.Mark()
	frozen := time.Now()
	r.relay.Freeze()
	bound := o.hbBound() + slack
	for _, p := range []*tt.Proc{r.server, r.client} {
		mark := map[*tt.Proc]int{r.server: sm, r.client: cm}[p]
		l := p.WaitLine(t, mark, bound+2*time.Second, `msg="session lost"`)
		within(t, p.Name+" noticed", l.At.Sub(frozen), bound)
		t.Log(l.Text)
		if !contains(l.Text, "heartbeat timeout") {
			t.Errorf("%s: cause is not the heartbeat: %s", p.Name, l.Text)
		}
	}
	if d, err, ok := open.ends(frozen, bound+time.Second); !ok {
		t.Errorf("public connection still open %s after the freeze", d)
	} else {
		t.Logf("public connection ended %s after the freeze: %v", d.Round(10*time.Millisecond), err)
	}
	// Attempts through the frozen relay fail on the handshake timeout.
	r.client.WaitLine(t, cm, 10*time.Second, `msg=reconnecting.*attempt=2`)
	cm = r.client.Mark()
	thawed := time.Now()
	r.relay.Thaw()
	// An attempt stuck in the frozen relay when it thaws may still finish.
	up := r.waitUp(cm, 10*time.Second)
	t.Logf("client back %s after the relay recovered", up.At.Sub(thawed).Round(10*time.Millisecond))
	r.works("after the relay recovered")
}

// 6. tunneld is killed with SIGKILL and started again: the client reconnects
// within its backoff bound and every tunnel works on the same ports.
func TestServerKilledAndRestarted(t *testing.T) {
	t.Parallel()
	o := defaultOpts()
	r := newRig(t, o)
	fixed, picked := r.fixed, r.picked
	cm := r.client.Mark()
	killed := time.Now()
	if err := r.server.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	l := r.client.WaitLine(t, cm, 5*time.Second, `msg="session lost"`)
	within(t, "client noticed the kill", l.At.Sub(killed), slack)
	time.Sleep(2 * time.Second) // down for a while; the client backs off
	cm = r.client.Mark()
	r.startServer()
	back := time.Now()
	up := r.waitUp(cm, 10*time.Second)
	// The next attempt comes within max_delay; the handshake is quick.
	within(t, "client back after the restart", up.At.Sub(back), o.maxDelay+slack)
	if r.fixed != fixed || r.picked != picked {
		t.Errorf("ports moved: fixed %s -> %s, picked %s -> %s", fixed, r.fixed, picked, r.picked)
	}
	r.works("after the restart")
}

// 7. The path flaps for a minute: short holes the session rides out and
// long ones that kill it. The client never holds two sessions, the server
// never leaks listeners, goroutines or descriptors, and the final state
// serves traffic.
func TestFlappingPath(t *testing.T) {
	t.Parallel()
	o := defaultOpts()
	r := newRig(t, o)
	r.works("before")
	time.Sleep(time.Second)
	before := r.server.Status(t)
	srvPid := r.server.Cmd.Process.Pid
	wantListeners := listeners(t, srvPid) // session + 2 tunnels
	if wantListeners != 3 {
		t.Fatalf("server has %d listeners before flapping, want 3", wantListeners)
	}
	end := time.Now().Add(time.Minute)
	holes := []time.Duration{1500 * time.Millisecond, 4 * time.Second, 700 * time.Millisecond, 6 * time.Second}
	for i := 0; time.Now().Before(end); i++ {
		r.lab.Cut(r.cli, r.srv)
		time.Sleep(holes[i%len(holes)])
		r.lab.Heal(r.cli, r.srv)
		time.Sleep(2 * time.Second)
		if n := listeners(t, srvPid); n > wantListeners {
			t.Errorf("server has %d listeners during flapping (want at most %d)", n, wantListeners)
		}
		if st := r.server.Status(t); atoi(t, st["sessions"]) > 1 {
			t.Errorf("server holds %s sessions for one client", st["sessions"])
		}
	}
	// Settle: the client is connected and the server has one session.
	tt.Eventually(t, 15*time.Second, "one session and both tunnels", func() bool {
		return r.client.Status(t)["connected"] == "true" && r.server.Status(t)["sessions"] == "1" && listeners(t, srvPid) == wantListeners
	})
	r.works("after flapping")
	// Until the connections closed above have finished on the server.
	g0 := atoi(t, before["goroutines"])
	tt.Eventually(t, 10*time.Second, "the server's goroutines back to their count before flapping", func() bool {
		return atoi(t, r.server.Status(t)["goroutines"]) <= g0+2
	})
	after := r.server.Status(t)
	t.Logf("server before: goroutines=%s fds=%s; after: goroutines=%s fds=%s",
		before["goroutines"], before["fds"], after["goroutines"], after["fds"])
	if g0, g1 := atoi(t, before["goroutines"]), atoi(t, after["goroutines"]); g1 > g0+2 {
		t.Errorf("server goroutines grew from %d to %d", g0, g1)
	}
	if f0, f1 := atoi(t, before["fds"]), atoi(t, after["fds"]); f1 > f0 {
		t.Errorf("server descriptors grew from %d to %d", f0, f1)
	}
	ups := strings.Count(r.client.Output(), `msg="session up"`)
	t.Logf("the client established %d sessions during the minute", ups)
}

// 8. A long idle spell on a healthy path: several keepalive and heartbeat
// periods pass and nothing that should stay open is closed.
func TestLongIdle(t *testing.T) {
	t.Parallel()
	o := defaultOpts()
	r := newRig(t, o)
	conns := []*netConn{r.dialPublic(r.fixed), r.dialPublic(r.picked)}
	for _, c := range conns {
		if err := tt.Ping(c, "before", 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	sm, cm := r.server.Mark(), r.client.Mark()
	idle := 4 * max(o.sessionKA.bound(), o.publicKA.bound(), o.localKA.bound())
	time.Sleep(idle)
	for i, c := range conns {
		if err := tt.Ping(c, "after", 5*time.Second); err != nil {
			t.Errorf("connection %d after %s idle: %v", i, idle, err)
		}
	}
	if n := r.echo.Active(); n != 2 {
		t.Errorf("local service has %d connections, want 2", n)
	}
	r.server.NoLine(t, sm, 0, `msg="session lost"|aborted`)
	r.client.NoLine(t, cm, 0, `msg="session lost"|aborted|reconnecting`)
}
