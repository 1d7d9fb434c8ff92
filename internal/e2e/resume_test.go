package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/protocol"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// resumeRig is a server and a client whose session runs through a relay
// the test can reset (the session's TCP dies as behind a rebooting NAT)
// and freeze (new attempts hang: an outage).
type resumeRig struct {
	srv   *tt.Server
	cl    *tt.Client
	relay *tt.Relay
	pub   map[string]string
	logs  *tt.Logs
}

func newResumeRig(t *testing.T, window time.Duration, tunnels map[string]*config.Tunnel, editS func(*config.Server)) *resumeRig {
	t.Helper()
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.ResumeWindow = config.Duration(window)
		if editS != nil {
			editS(c)
		}
	}))
	relay := loopbackRelay(t, srv.Addr().String())
	cfg := tt.ClientConfig(t, relay.Addr(), tunnels, func(c *config.Client) {
		c.ResumeWindow = config.Duration(window)
		// An attempt that hangs in the frozen relay gives up soon.
		c.HandshakeTimeout = config.Duration(time.Second)
	})
	cl := tt.StartClient(t, cfg)
	return &resumeRig{srv: srv, cl: cl, relay: relay, pub: cl.WaitUp(t, hangBound), logs: srv.Logs}
}

// loopbackRelay relays a listener on 127.0.0.1 to target; it stops at
// cleanup.
func loopbackRelay(t *testing.T, target string) *tt.Relay {
	t.Helper()
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return tt.NewRelay(t, rl, target, func(a string) (*net.TCPConn, error) {
		c, err := net.Dial("tcp", a)
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	})
}

// cut kills the session's TCP and, for outage, keeps the client from
// reaching the server that long; it returns once the client has resumed.
func (r *resumeRig) cut(t *testing.T, outage time.Duration) {
	t.Helper()
	before := r.cl.Status().Resumes
	if outage > 0 {
		r.relay.Freeze()
	}
	r.relay.Reset()
	if outage > 0 {
		time.Sleep(outage)
		r.relay.Thaw()
	}
	tt.Eventually(t, hangBound+outage, "the client to resume its session", func() bool {
		st := r.cl.Status()
		return st.Connected && st.Resumes == before+1
	})
}

// A session cut under every kind of connection is resumed, and every
// connection goes on as if nothing happened: bulk both ways through
// several cuts and an outage (SHA-256 both ways), an interactive loop
// that only pauses, a half-closed request whose response still arrives
// whole, idle connections, a public side half-closed toward a silent
// service, and connections opened during the outage.
func TestResumeCarriesEveryConnection(t *testing.T) {
	tt.CheckLeaks(t)
	echo := tt.NewEcho(t)
	silent := tt.NewService(t, tt.Silent)
	r := newResumeRig(t, 30*time.Second, map[string]*config.Tunnel{
		"echo":   {Local: echo.Addr()},
		"silent": {Local: silent.Addr()},
	}, nil)
	id := r.cl.Status().Session

	idle := make([]*net.TCPConn, 8)
	for i := range idle {
		idle[i] = tt.Dial(t, r.pub["echo"])
		if err := tt.Ping(idle[i], fmt.Sprint("idle", i), hangBound); err != nil {
			t.Fatal(err)
		}
	}
	half := tt.Dial(t, r.pub["silent"])
	if _, err := half.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	_ = half.CloseWrite()

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	stop := make(chan struct{})
	const bulk = 32 << 20
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", r.pub["echo"])
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := tt.RoundTrip(c, bulk); err != nil {
				errs <- fmt.Errorf("bulk %d: %w", i, err)
			}
		}()
	}
	// The interactive loop: each message answered, however long it waits.
	var pings int
	var longest time.Duration
	interactive := make(chan struct{})
	go func() {
		defer close(interactive)
		c, err := net.Dial("tcp", r.pub["echo"])
		if err != nil {
			errs <- err
			return
		}
		defer c.Close()
		for i := 0; ; i++ {
			select {
			case <-stop:
				pings = i
				return
			default:
			}
			t0 := time.Now()
			if err := tt.Ping(c, fmt.Sprintf("ping %d;", i), 30*time.Second); err != nil {
				errs <- fmt.Errorf("interactive, message %d: %w", i, err)
				return
			}
			longest = max(longest, time.Since(t0))
			time.Sleep(5 * time.Millisecond)
		}
	}()

	time.Sleep(200 * time.Millisecond)
	r.cut(t, 0)
	time.Sleep(300 * time.Millisecond)

	// An outage, and connections that arrive during it: each sends its
	// request at once and gets it echoed once the client is back.
	r.relay.Freeze()
	r.relay.Reset()
	fresh := make([]net.Conn, 20)
	for i := range fresh {
		c, err := net.Dial("tcp", r.pub["echo"])
		if err != nil {
			t.Fatalf("public port closed while the client is away: %v", err)
		}
		defer c.Close()
		if _, err := fmt.Fprintf(c, "new %02d", i); err != nil {
			t.Fatal(err)
		}
		fresh[i] = c
	}
	time.Sleep(time.Second)
	before := r.cl.Status().Resumes
	r.relay.Thaw()
	tt.Eventually(t, 2*hangBound, "the client to resume after the outage", func() bool {
		st := r.cl.Status()
		return st.Connected && st.Resumes == before+1
	})
	for i, c := range fresh {
		_ = c.SetReadDeadline(time.Now().Add(hangBound))
		buf := make([]byte, 6)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != fmt.Sprintf("new %02d", i) {
			t.Fatalf("connection %d opened during the outage: %q, %v", i, buf, err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	r.cut(t, 0)

	// A request half-closed before a cut: the whole response arrives.
	req := tt.Dial(t, r.pub["echo"])
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := tt.RoundTrip(req, 4<<20); err != nil {
			errs <- fmt.Errorf("half-closed request: %w", err)
		}
	}()
	time.Sleep(50 * time.Millisecond)
	r.cut(t, 0)

	wg.Wait()
	close(stop)
	<-interactive
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i, c := range idle {
		if err := tt.Ping(c, fmt.Sprint("again", i), hangBound); err != nil {
			t.Errorf("idle connection %d after the resumes: %v", i, err)
		}
	}
	if st, err := tt.TCPState(half); err != nil || st == tt.TCPClose {
		t.Errorf("half-closed connection toward a silent service: state %v, %v", st, err)
	}
	if silent.Active() != 1 {
		t.Errorf("silent service has %d connections, want its one", silent.Active())
	}
	if got := r.cl.Status().Session; got != id {
		t.Errorf("session id %q after resumes, want %q", got, id)
	}
	t.Logf("%d interactive messages across 4 cuts, the longest wait %s", pings, longest.Round(time.Millisecond))
	r.logs.WaitFor(t, hangBound, "session resumed", "held_new=20")
}

// A session not resumed within its window ends as one without
// resumption does: every connection reset on both sides within the
// window and a second, the port released, nothing held; the client comes
// back on a new session.
func TestResumeWindowPasses(t *testing.T) {
	tt.CheckLeaks(t)
	echo := tt.NewEcho(t)
	const window = time.Second
	r := newResumeRig(t, window, map[string]*config.Tunnel{"echo": {Local: echo.Addr()}}, nil)
	g0, h0 := runtime.NumGoroutine(), liveHeap()
	logs0 := r.logs.Len() + r.cl.Logs.Len()
	conns := make([]*net.TCPConn, 4)
	for i := range conns {
		conns[i] = tt.Dial(t, r.pub["echo"])
		if err := tt.Ping(conns[i], "x", hangBound); err != nil {
			t.Fatal(err)
		}
	}
	r.relay.Freeze()
	cut := time.Now()
	r.relay.Reset()
	for i, c := range conns {
		tt.Eventually(t, window+hangBound, fmt.Sprint("connection ", i, " reset"), func() bool {
			st, err := tt.TCPState(c)
			return err == nil && st == tt.TCPClose
		})
	}
	ended := time.Since(cut)
	tt.Eventually(t, hangBound, "the local connections to end", func() bool { return echo.Active() == 0 })
	t.Logf("connections reset %s after the cut (window %s)", ended.Round(time.Millisecond), window)
	if ended > window+time.Second+hangBound {
		t.Errorf("connections reset %s after the cut, window %s", ended, window)
	}
	// The port is free: nothing listens on it.
	tt.Eventually(t, hangBound, "the public port released", func() bool {
		c, err := net.Dial("tcp", r.pub["echo"])
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	r.logs.WaitFor(t, hangBound, "did not resume within resume_window")
	r.relay.Thaw()
	tt.Eventually(t, 2*hangBound, "the client on a new session", func() bool {
		st := r.cl.Status()
		return st.Connected && st.Sessions == 2 && st.Resumes == 0
	})
	c := tt.Dial(t, r.cl.Status().Public["echo"])
	if err := tt.RoundTrip(c, 1<<20); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// Nothing of the old session is left: no goroutine, no kept buffer.
	backToBaselineLogs(t, "after the window passed", g0, h0, []*tt.Logs{r.logs, r.cl.Logs}, logs0)
}

// Someone with the right token but not the session's secret cannot take
// a held session: the attempt is refused and logged, the session stays
// held, and the real client then resumes it with every connection.
func TestResumeNeedsTheSecret(t *testing.T) {
	tt.CheckLeaks(t)
	echo := tt.NewEcho(t)
	r := newResumeRig(t, 30*time.Second, map[string]*config.Tunnel{"echo": {Local: echo.Addr()}}, nil)
	c := tt.Dial(t, r.pub["echo"])
	if err := tt.Ping(c, "before", hangBound); err != nil {
		t.Fatal(err)
	}
	st := r.cl.Status()
	r.relay.Freeze()
	r.relay.Reset()
	r.logs.WaitFor(t, hangBound, "holding it for the client to resume")
	for _, secret := range []string{"", "not-the-secret"} {
		hello := &protocol.Hello{Version: protocol.Version, Client: "test-client", Token: tt.Token, ResumeWindow: 30000,
			Tunnels: []protocol.TunnelRequest{{Name: "echo", Type: "tcp"}},
			Resume:  &protocol.ResumeRequest{Session: st.Session, Secret: secret}}
		raw := rawControl(t, r.srv.Addr().String(), protocol.Control{Type: protocol.TypeHello, Hello: hello})
		if raw.err == nil || raw.err.Code != protocol.CodeResume {
			t.Fatalf("resume with secret %q: answer %+v / %+v, want a refusal with code %q", secret, raw.welcome, raw.err, protocol.CodeResume)
		}
		t.Logf("refused: %s", raw.err.Message)
	}
	// The public port is still the client's, and the connection still open.
	if err := tt.Ping(c, "during", 50*time.Millisecond); err == nil || !isTimeout(errors.Unwrap(err)) {
		t.Fatalf("ping while the client is away: %v, want a wait", err)
	}
	r.relay.Thaw()
	tt.Eventually(t, 2*hangBound, "the real client to resume", func() bool {
		s := r.cl.Status()
		return s.Connected && s.Resumes == 1 && s.Session == st.Session
	})
	// What was sent while it was away arrives now, then the rest.
	_ = c.SetReadDeadline(time.Now().Add(hangBound))
	buf := make([]byte, len("during"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "during" {
		t.Fatalf("the message sent while the client was away: %q, %v", buf, err)
	}
	if err := tt.Ping(c, "after", hangBound); err != nil {
		t.Fatal(err)
	}
}

// resume_window = 0 on either side turns resumption off: a lost
// session's connections end at once, as they always did.
func TestResumeOffOnEitherSide(t *testing.T) {
	for _, side := range []string{"server", "client"} {
		t.Run(side, func(t *testing.T) {
			tt.CheckLeaks(t)
			echo := tt.NewEcho(t)
			srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
				if side == "server" {
					c.ResumeWindow = 0
				}
			}))
			relay := loopbackRelay(t, srv.Addr().String())
			cl := tt.StartClient(t, tt.ClientConfig(t, relay.Addr(), map[string]*config.Tunnel{"echo": {Local: echo.Addr()}},
				func(c *config.Client) {
					if side == "client" {
						c.ResumeWindow = 0
					}
				}))
			pub := cl.WaitUp(t, hangBound)["echo"]
			c := tt.Dial(t, pub)
			if err := tt.Ping(c, "x", hangBound); err != nil {
				t.Fatal(err)
			}
			relay.Reset()
			tt.Eventually(t, hangBound, "the connection reset with its session", func() bool {
				st, err := tt.TCPState(c)
				return err == nil && st == tt.TCPClose
			})
			tt.Eventually(t, hangBound, "the client on a new session", func() bool {
				st := cl.Status()
				return st.Connected && st.Sessions == 2 && st.Resumes == 0
			})
			if srv.Logs.Contains("resume_window") {
				t.Error("the server logged a resume window although resumption is off")
			}
		})
	}
}

// Fifty resumes with traffic leave nothing behind: goroutines and live
// heap return to where they were after the first five, and every message
// written across the cuts arrives once, in order.
func TestFiftyResumesLeaveNothing(t *testing.T) {
	tt.CheckLeaks(t)
	echo := tt.NewEcho(t)
	r := newResumeRig(t, 30*time.Second, map[string]*config.Tunnel{"echo": {Local: echo.Addr()}}, nil)
	c := tt.Dial(t, r.pub["echo"])
	var want string
	var g0 int
	var h0 uint64
	var logs0 int
	logs := []*tt.Logs{r.logs, r.cl.Logs}
	for i := range 50 {
		if i == 5 {
			g0, h0 = runtime.NumGoroutine(), liveHeap()
			logs0 = r.logs.Len() + r.cl.Logs.Len()
		}
		x := make(chan error, 1)
		go func() {
			bc, err := net.Dial("tcp", r.pub["echo"])
			if err != nil {
				x <- err
				return
			}
			defer bc.Close()
			x <- tt.RoundTrip(bc, 2<<20)
		}()
		msg := fmt.Sprintf("cycle %d;", i)
		want += msg
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
		r.cut(t, 0)
		if err := <-x; err != nil {
			t.Fatalf("cycle %d: transfer: %v", i, err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(hangBound))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
		t.Fatalf("messages across the cuts: %q, %v", got, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	// Two goroutines of slack: a relay's pipes and a session's send loop
	// come and go with the traffic; a leak per cycle would be 45.
	backToBaselineLogs(t, "after 45 more resumes", g0+2, h0, logs, logs0)
}

// A daemon stopped while its session is away stops at once: it does not
// wait out the window, and leaves nothing running.
func TestShutdownWhileAway(t *testing.T) {
	for _, side := range []string{"tunneld", "tunnelc"} {
		t.Run(side, func(t *testing.T) {
			tt.CheckLeaks(t)
			echo := tt.NewEcho(t)
			r := newResumeRig(t, time.Minute, map[string]*config.Tunnel{"echo": {Local: echo.Addr()}}, nil)
			c := tt.Dial(t, r.pub["echo"])
			if err := tt.Ping(c, "x", hangBound); err != nil {
				t.Fatal(err)
			}
			r.relay.Freeze()
			r.relay.Reset()
			r.logs.WaitFor(t, hangBound, "holding it for the client to resume")
			r.cl.Logs.WaitFor(t, hangBound, "holding its connections to resume it")
			start := time.Now()
			if side == "tunneld" {
				r.srv.Stop(t)
				tt.Eventually(t, hangBound, "the public connection reset", func() bool {
					st, err := tt.TCPState(c)
					return err == nil && st == tt.TCPClose
				})
			} else {
				_ = r.cl.Stop(t)
				tt.Eventually(t, hangBound, "the local connection closed", func() bool { return echo.Active() == 0 })
			}
			t.Logf("%s stopped in %s with its session away", side, time.Since(start).Round(time.Millisecond))
			r.relay.Thaw()
		})
	}
}

// A client that resumes with the right secret but then lies about its
// connections (an impossible offset, garbage for an answer, an error)
// gets exactly those connections reset, and tunneld returns to its
// baseline once the session ends.
func TestResumeWithLyingAnswers(t *testing.T) {
	tt.CheckLeaks(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) { c.ResumeWindow = config.Duration(time.Second) }))
	addr := srv.Addr().String()
	// The baseline once the server serves (its accept loop and sweeper
	// run from its first connection on).
	probe, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	probe.Close()
	srv.Logs.WaitFor(t, hangBound, "session refused")
	g0, h0 := runtime.NumGoroutine(), liveHeap()
	hello := &protocol.Hello{Version: protocol.Version, Client: "liar", Token: tt.Token, ResumeWindow: 1000,
		Tunnels: []protocol.TunnelRequest{{Name: "echo", Type: "tcp"}}}
	first, err := dialRaw(addr, protocol.Control{Type: protocol.TypeHello, Hello: hello})
	if err != nil {
		t.Fatal(err)
	}
	if first.welcome == nil || first.welcome.Resume == nil {
		t.Fatalf("welcome %+v / %+v: no resume grant", first.welcome, first.err)
	}
	pub := first.welcome.Tunnels[0].Public
	var publics []*net.TCPConn
	for range 3 {
		c := tt.Dial(t, pub)
		st, err := first.ys.Accept()
		if err != nil {
			t.Fatal(err)
		}
		var h protocol.StreamHeader
		if err := protocol.ReadFrame(st, &h); err != nil || !h.Resumable {
			t.Fatalf("stream header %+v, %v: want a resumable one", h, err)
		}
		if _, err := st.Write([]byte{protocol.DialOK}); err != nil {
			t.Fatal(err)
		}
		publics = append(publics, c)
	}
	first.ys.Close()
	srv.Logs.WaitFor(t, hangBound, "holding it for the client to resume")

	hello.Resume = &protocol.ResumeRequest{Session: first.welcome.Session, Secret: first.welcome.Resume.Secret}
	second, err := dialRaw(addr, protocol.Control{Type: protocol.TypeHello, Hello: hello})
	if err != nil {
		t.Fatal(err)
	}
	defer second.ys.Close()
	if second.welcome == nil || !second.welcome.Resumed {
		t.Fatalf("resume: %+v / %+v", second.welcome, second.err)
	}
	lies := []func(st io.Writer){
		func(st io.Writer) { _ = protocol.WriteFrame(st, protocol.ResumeReply{Offset: 1 << 40}) },
		func(st io.Writer) { _, _ = st.Write([]byte("\x00\x00\x00\x05nojsn")) },
		func(st io.Writer) { _ = protocol.WriteFrame(st, protocol.ResumeReply{Error: "never heard of it"}) },
	}
	for _, lie := range lies {
		st, err := second.ys.Accept()
		if err != nil {
			t.Fatal(err)
		}
		var h protocol.StreamHeader
		if err := protocol.ReadFrame(st, &h); err != nil || !h.Resume {
			t.Fatalf("resume stream header %+v, %v", h, err)
		}
		lie(st)
	}
	for i, c := range publics {
		tt.Eventually(t, hangBound, fmt.Sprint("public connection ", i, " reset"), func() bool {
			st, err := tt.TCPState(c)
			return err == nil && st == tt.TCPClose
		})
	}
	for _, want := range []string{"offset is impossible", "did not answer", "no longer has it"} {
		srv.Logs.WaitFor(t, hangBound, "connection not resumed", want)
	}
	second.ys.Close()
	srv.Logs.WaitFor(t, hangBound, "did not resume within resume_window")
	backToBaselineLogs(t, "after the lying client's session ended", g0, h0, []*tt.Logs{srv.Logs}, 0)
}
