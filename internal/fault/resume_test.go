package fault

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

var heldNewRe = regexp.MustCompile(`held_new=(\d+)`)

// resumeOpts are the rig's defaults with resumption on: heartbeat 1 s /
// 2 s, so a black-holed session is declared dead after about 3 s.
func resumeOpts(window time.Duration) opts {
	o := defaultOpts()
	o.resumeWindow = window
	return o
}

// transfer sends n random bytes from the public host through addr's echo
// and reads them back, checking both ways by SHA-256; moved counts what
// came back so far.
type transfer struct {
	moved atomic.Int64
	done  chan error
}

// wait returns the transfer's outcome, or an error once d has passed.
func (x *transfer) wait(d time.Duration) error {
	select {
	case err := <-x.done:
		return err
	case <-time.After(d):
		return fmt.Errorf("not done after %s (%d bytes back)", d, x.moved.Load())
	}
}

func (r *rig) transfer(addr string, n int64) *transfer {
	x := &transfer{done: make(chan error, 1)}
	c, err := r.pub.Dial(addr)
	if err != nil {
		x.done <- err
		return x
	}
	go func() {
		defer c.Close()
		sent, got := sha256.New(), sha256.New()
		werr := make(chan error, 1)
		go func() {
			_, err := io.CopyN(io.MultiWriter(c, sent), rand.Reader, n)
			if err == nil {
				err = c.CloseWrite()
			}
			werr <- err
		}()
		buf := make([]byte, 64<<10)
		for {
			k, err := c.Read(buf)
			got.Write(buf[:k])
			x.moved.Add(int64(k))
			if err == io.EOF {
				break
			}
			if err != nil {
				x.done <- fmt.Errorf("read after %d bytes: %w", x.moved.Load(), err)
				return
			}
		}
		if err := <-werr; err != nil {
			x.done <- fmt.Errorf("write: %w", err)
			return
		}
		switch {
		case x.moved.Load() != n:
			x.done <- fmt.Errorf("%d bytes back, %d sent", x.moved.Load(), n)
		case !bytes.Equal(sent.Sum(nil), got.Sum(nil)):
			x.done <- errors.New("SHA-256 of what came back differs from what was sent")
		default:
			x.done <- nil
		}
	}()
	return x
}

// 12. The session is black-holed for 10 s and resumed: idle connections
// still echo, four 64 MiB transfers each way complete byte for byte, an
// interactive loop only pauses, a half-closed request gets its whole
// response, and 20 connections opened during the outage are served after
// it.
func TestSessionBlackHoledAndResumed(t *testing.T) {
	t.Parallel()
	o := resumeOpts(30 * time.Second)
	r := newRig(t, o)
	idle := make([]*netConn, 8)
	for i := range idle {
		idle[i] = r.dialPublic(r.fixed)
		if err := tt.Ping(idle[i], fmt.Sprint("idle ", i), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	const bulk = 64 << 20
	var xs []*transfer
	for i := range 4 {
		addr := r.fixed
		if i%2 == 1 {
			addr = r.picked
		}
		xs = append(xs, r.transfer(addr, bulk))
	}
	// The interactive loop, every 20 ms; it records its longest wait.
	stop := make(chan struct{})
	var longest time.Duration
	var sent int
	interactive := make(chan error, 1)
	ic := r.dialPublic(r.fixed)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				sent = i
				interactive <- nil
				return
			default:
			}
			t0 := time.Now()
			if err := tt.Ping(ic, fmt.Sprintf("m%d;", i), 40*time.Second); err != nil {
				interactive <- fmt.Errorf("message %d: %w", i, err)
				return
			}
			longest = max(longest, time.Since(t0))
			time.Sleep(20 * time.Millisecond)
		}
	}()
	// Cut while the transfers run.
	tt.Eventually(t, 30*time.Second, "the transfers under way", func() bool {
		var m int64
		for _, x := range xs {
			m += x.moved.Load()
		}
		return m > bulk/2
	})
	// The half-closed request: sent and half-closed just before the cut.
	req := r.transfer(r.fixed, 4<<20)
	time.Sleep(20 * time.Millisecond)
	sm, cm := r.server.Mark(), r.client.Mark()
	r.lab.Cut(r.cli, r.srv)
	cut := time.Now()
	at := make([]int64, len(xs))
	for i, x := range xs {
		at[i] = x.moved.Load()
	}
	r.server.WaitLine(t, sm, o.hbBound()+slack+time.Second, `msg="session lost; holding it for the client to resume"`)
	r.client.WaitLine(t, cm, o.hbBound()+slack+time.Second, `msg="session lost; holding its connections`)
	// New connections while the client is away: each sends its request
	// at once.
	fresh := make([]*netConn, 20)
	for i := range fresh {
		fresh[i] = r.dialPublic(r.fixed)
		if _, err := fmt.Fprintf(fresh[i], "new %02d", i); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(10*time.Second - time.Since(cut))
	healed := time.Now()
	r.lab.Heal(r.cli, r.srv)
	back := r.server.WaitLine(t, sm, 10*time.Second, `msg="session resumed"`)
	t.Logf("resumed %s after the heal: %s", back.At.Sub(healed).Round(10*time.Millisecond), back.Text)
	// At least the 20: a connection accepted just before the cut waits
	// to open its stream (the session's SYNs are unanswered) and is
	// held as well.
	if m := heldNewRe.FindStringSubmatch(back.Text); m == nil || atoi(t, m[1]) < 20 {
		t.Errorf("the resume did not hand over the 20 connections taken while away: %s", back.Text)
	}
	for i, c := range fresh {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 6)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != fmt.Sprintf("new %02d", i) {
			t.Errorf("connection %d opened during the outage: %q, %v", i, buf, err)
		}
	}
	for i, x := range xs {
		if err := x.wait(time.Minute); err != nil {
			t.Errorf("transfer %d (%d of %d bytes back at the cut): %v", i, at[i], bulk, err)
		}
	}
	if err := req.wait(time.Minute); err != nil {
		t.Errorf("half-closed request: %v", err)
	}
	close(stop)
	if err := <-interactive; err != nil {
		t.Errorf("interactive loop: %v", err)
	}
	t.Logf("interactive: %d messages, the longest wait %s (outage 10 s)", sent, longest.Round(10*time.Millisecond))
	for i, c := range idle {
		if err := tt.Ping(c, fmt.Sprint("again ", i), 5*time.Second); err != nil {
			t.Errorf("idle connection %d after the resume: %v", i, err)
		}
	}
	r.works("after the resume")
}

// 13. The client's address changes under a transfer (a new DHCP lease, a
// mobile network): its old session is dead, it reconnects from the new
// address and resumes, and the transfer completes byte for byte.
func TestClientAddressChangesMidTransfer(t *testing.T) {
	t.Parallel()
	o := resumeOpts(30 * time.Second)
	// The service on the client host's loopback: a local leg across the
	// renumbered link would die with the old address, as the session does.
	o.localLoopback = true
	r := newRig(t, o)
	xs := []*transfer{r.transfer(r.fixed, 64<<20), r.transfer(r.picked, 64<<20)}
	tt.Eventually(t, 30*time.Second, "the transfers under way", func() bool {
		return xs[0].moved.Load()+xs[1].moved.Load() > 16<<20
	})
	sm, cm := r.server.Mark(), r.client.Mark()
	old := r.cli.IP
	r.lab.Renumber(r.cli)
	moved := time.Now()
	l := r.server.WaitLine(t, sm, 20*time.Second, `msg="session resumed"`)
	t.Logf("resumed %s after the move from %s to %s: %s", l.At.Sub(moved).Round(10*time.Millisecond), old, r.cli.IP, l.Text)
	if !contains(l.Text, "remote_now="+r.cli.IP+":") {
		t.Errorf("resumed from another address than the new one: %s", l.Text)
	}
	t.Log(r.client.WaitLine(t, cm, 5*time.Second, `msg="session resumed"`).Text)
	for i, x := range xs {
		if err := x.wait(time.Minute); err != nil {
			t.Errorf("transfer %d: %v", i, err)
			r.server.Signal(t, syscall.SIGQUIT, 5*time.Second)
			r.client.Signal(t, syscall.SIGQUIT, 5*time.Second)
			t.FailNow()
		}
	}
	r.works("after the move")
}

// 14. An outage longer than the window: every held connection is reset
// within the window (and a second) of the loss being noticed, the ports
// are released, and the descriptors tunneld held for them are closed.
// When the path returns, the client comes back on a new session.
func TestOutageLongerThanTheWindow(t *testing.T) {
	t.Parallel()
	const window = 3 * time.Second
	o := resumeOpts(window)
	r := newRig(t, o)
	fds0 := openFDs(t, r.server.Cmd.Process.Pid)
	conns := make([]*netConn, 8)
	for i := range conns {
		conns[i] = r.dialPublic(r.fixed)
		if err := tt.Ping(conns[i], "x", 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	sm, cm := r.server.Mark(), r.client.Mark()
	r.lab.Cut(r.cli, r.srv)
	lost := r.server.WaitLine(t, sm, o.hbBound()+slack+time.Second, `msg="session lost; holding it`)
	for i, c := range conns {
		d, err, ok := c.ends(lost.At, window+time.Second)
		if !ok {
			t.Fatalf("connection %d still open %s after the loss was noticed (window %s)", i, d, window)
		}
		if i == 0 {
			t.Logf("connections ended %s after the loss was noticed (window %s): %v", d.Round(10*time.Millisecond), window, err)
		}
	}
	t.Log(r.server.WaitLine(t, sm, time.Second, `did not resume within resume_window`).Text)
	t.Log(r.client.WaitLine(t, cm, 2*time.Second, `session not resumed within resume_window`).Text)
	// The port is free again, and nothing of the session is held open.
	tt.Eventually(t, 2*time.Second, "the public port released", func() bool {
		c, err := r.pub.Dial(r.fixed)
		if err == nil {
			c.Close()
			return false
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
	tt.Eventually(t, 2*time.Second, "tunneld's descriptors back to before", func() bool {
		return openFDs(t, r.server.Cmd.Process.Pid) <= fds0-3 // the session and its two listeners
	})
	cm = r.client.Mark()
	r.lab.Heal(r.cli, r.srv)
	l := r.waitUp(cm, o.maxDelay+10*time.Second)
	if contains(l.Text, "resumed") {
		t.Errorf("a session past its window was resumed: %s", l.Text)
	}
	r.works("after the heal")
}

// openFDs counts a process's open descriptors.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// 15. Fifty black-hole cycles with traffic, each resumed: nothing lost,
// and tunneld's and tunnelc's memory and goroutines flat.
func TestFiftyResumes(t *testing.T) {
	t.Parallel()
	o := resumeOpts(30 * time.Second)
	// A faster heartbeat keeps fifty cycles short; the path is the same.
	o.hbInterval, o.hbTimeout = 200*time.Millisecond, 400*time.Millisecond
	o.maxDelay = 200 * time.Millisecond
	o.profiles = true
	r := newRig(t, o)
	c := r.dialPublic(r.fixed)
	daemons := map[string]*tt.Proc{"tunneld": r.server, "tunnelc": r.client}
	// Every ten cycles, per daemon: live heap after a collection,
	// goroutines, and RSS (logged only: it moves by megabytes with the
	// collector's pacing and, under the race detector, shadow memory).
	var heap, gors, rss = map[string][]int64{}, map[string][]int64{}, map[string][]int64{}
	for i := range 50 {
		x := r.transfer(r.fixed, 2<<20)
		sm := r.server.Mark()
		r.lab.Cut(r.cli, r.srv)
		// Written across the cut; read back, in order, at the end.
		if _, err := fmt.Fprintf(c, "cycle %d", i); err != nil {
			t.Fatal(err)
		}
		r.server.WaitLine(t, sm, o.hbBound()+slack+time.Second, `msg="session lost; holding it`)
		r.lab.Heal(r.cli, r.srv)
		r.server.WaitLine(t, sm, 10*time.Second, `msg="session resumed"`)
		if err := x.wait(time.Minute); err != nil {
			t.Fatalf("cycle %d: transfer: %v", i, err)
		}
		if i%10 == 9 {
			for name, p := range daemons {
				h, g := r.runtime(name)
				heap[name] = append(heap[name], h)
				gors[name] = append(gors[name], g)
				rss[name] = append(rss[name], p.Mem(t, "VmRSS"))
			}
		}
	}
	// The pings of the cycles, in order, each exactly once.
	want := ""
	for i := range 50 {
		want += fmt.Sprintf("cycle %d", i)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
		t.Fatalf("the interactive connection's echo: %q, %v", got, err)
	}
	r.works("after fifty resumes")
	// A leak grows with the cycles: the median of the last three samples
	// against the first (cycle 10, after the first sessions' one-time
	// allocations). 1 MiB over forty cycles is 26 KiB a cycle, far less
	// than one held connection's buffers.
	late := func(s []int64) int64 {
		l := []int64{s[2], s[3], s[4]}
		slices.Sort(l)
		return l[1]
	}
	for name := range daemons {
		t.Logf("%s every ten cycles: live heap (KiB) %v, goroutines %v, RSS (KiB) %v", name, kib(heap[name]), gors[name], kib(rss[name]))
		if grown := late(heap[name]) - heap[name][0]; grown > 1<<20 {
			t.Errorf("%s's live heap grew %d KiB from cycle 10 to cycles 30-50 (median)", name, grown>>10)
		}
		if grown := late(gors[name]) - gors[name][0]; grown > 2 {
			t.Errorf("%s's goroutines grew by %d from cycle 10 to cycles 30-50 (median)", name, grown)
		}
	}
}

func kib(s []int64) []int64 {
	k := make([]int64, len(s))
	for i := range s {
		k[i] = s[i] >> 10
	}
	return k
}

var _ net.Conn = (*netConn)(nil)
