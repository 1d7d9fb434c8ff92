package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/cli"
	"github.com/tunnel-dev/tunnel/internal/client"
	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/server"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// adminRig is an in-process server with its admin endpoint on a socket,
// a client with tunnels "echo" and "other" to one echo service.
type adminRig struct {
	srv  *tt.Server
	cl   *tt.Client
	api  *admin.Client
	pub  map[string]string
	sock string
	cfg  config.Admin
	echo *tt.Echo
	ctx  context.Context
}

func newAdminRig(t *testing.T, editS func(*config.Server)) *adminRig {
	t.Helper()
	r := &adminRig{echo: tt.NewEcho(t), ctx: context.Background()}
	r.sock = filepath.Join(t.TempDir(), "admin.sock")
	r.cfg = config.Admin{Socket: r.sock}
	r.srv = tt.StartServer(t, tt.ServerConfig(t, editS))
	a := admin.New(r.cfg, slog.New(slog.NewTextHandler(r.srv.Logs, nil)))
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	r.srv.ServeAdmin(a, "test")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("admin: %v", err)
		}
	})
	r.cl = tt.StartClient(t, tt.ClientConfig(t, r.srv.Addr().String(),
		map[string]*config.Tunnel{"echo": {Local: r.echo.Addr()}, "other": {Local: r.echo.Addr()}}, nil))
	r.pub = r.cl.WaitUp(t, 5*time.Second)
	r.api = admin.Dial(r.cfg)
	return r
}

func (r *adminRig) status(t *testing.T) server.Status {
	t.Helper()
	var st server.Status
	if err := r.api.Get(r.ctx, "/v1/status", &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// tunnel is the status of one tunnel of the rig's only session.
func (r *adminRig) tunnel(t *testing.T, name string) server.TunnelStatus {
	t.Helper()
	st := r.status(t)
	if len(st.Sessions) != 1 {
		t.Fatalf("%d sessions in the status, want 1: %+v", len(st.Sessions), st)
	}
	for _, tn := range st.Sessions[0].Tunnels {
		if tn.Name == name {
			return tn
		}
	}
	t.Fatalf("no tunnel %q in the status: %+v", name, st.Sessions[0])
	return server.TunnelStatus{}
}

// The status's counts are what a test moved: bytes each way while the
// connection is open and after it closed, and the connection counts.
func TestAdminStatusCountsATransfer(t *testing.T) {
	tt.CheckLeaks(t)
	r := newAdminRig(t, nil)
	fi, err := os.Stat(r.sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	c := tt.Dial(t, r.pub["echo"])
	const size = 3<<20 + 12345
	buf := make([]byte, size)
	rand.Read(buf)
	go c.Write(buf)
	back := make([]byte, size)
	if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(back, buf) {
		t.Fatalf("echo: %v, same bytes %v", err, bytes.Equal(back, buf))
	}
	// Open, and everything echoed: the tunnel counts it all (each count
	// is added as its write returns, a moment after the bytes arrive).
	var tn server.TunnelStatus
	tt.Eventually(t, 5*time.Second, "the counts mid-transfer", func() bool {
		tn = r.tunnel(t, "echo")
		return tn.BytesIn == size && tn.BytesOut == size
	})
	if tn.Connections != 1 || tn.ConnectionsTotal != 1 || tn.State != "up" || tn.Public != r.pub["echo"] {
		t.Fatalf("mid-transfer: %+v, want 1 connection and %d bytes each way", tn, size)
	}
	st := r.status(t)
	ss := st.Sessions[0]
	if ss.Client != "test-client" || ss.State != "up" || ss.Connections != 1 || ss.BytesIn != size || ss.BytesOut != size || ss.Remote == "" || ss.RTTMillis <= 0 {
		t.Fatalf("session mid-transfer: %+v", ss)
	}
	var conns []server.ConnStatus
	if err := r.api.Get(r.ctx, "/v1/connections", &conns); err != nil || len(conns) != 1 || conns[0].BytesIn != size || conns[0].Peer != c.LocalAddr().String() {
		t.Fatalf("connections %+v, %v", conns, err)
	}
	if err := tt.RoundTrip(c, 1<<20); err != nil {
		t.Fatal(err)
	}
	tt.Eventually(t, 5*time.Second, "the closed connection counted", func() bool {
		tn = r.tunnel(t, "echo")
		return tn.Connections == 0
	})
	if tn.ConnectionsTotal != 1 || tn.BytesIn != size+1<<20 || tn.BytesOut != size+1<<20 {
		t.Fatalf("after close: %+v", tn)
	}
	if other := r.tunnel(t, "other"); other.ConnectionsTotal != 0 || other.BytesIn != 0 {
		t.Fatalf("the other tunnel counted the transfer: %+v", other)
	}
}

// An operator closes one connection; the others, and the session, carry
// on. A connection id that is not open is a 404.
func TestAdminClosesOneConnection(t *testing.T) {
	tt.CheckLeaks(t)
	r := newAdminRig(t, nil)
	a, b := tt.Dial(t, r.pub["echo"]), tt.Dial(t, r.pub["echo"])
	for _, c := range []net.Conn{a, b} {
		if err := tt.Ping(c, "hello", 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	var conns []server.ConnStatus
	if err := r.api.Get(r.ctx, "/v1/connections?tunnel=echo", &conns); err != nil || len(conns) != 2 {
		t.Fatalf("connections %+v, %v", conns, err)
	}
	victim := conns[0]
	if victim.Peer != a.LocalAddr().String() {
		victim = conns[1]
	}
	if err := r.api.Post(r.ctx, fmt.Sprintf("/v1/connections/%d/close", victim.ID), nil, nil); err != nil {
		t.Fatal(err)
	}
	_ = a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("closed connection read %v, want a reset", err)
	}
	if err := tt.Ping(b, "still here", 5*time.Second); err != nil {
		t.Fatalf("the other connection: %v", err)
	}
	r.srv.Logs.WaitFor(t, 5*time.Second, "public connection closed by the operator", fmt.Sprintf("conn=%d", victim.ID))
	var ae *admin.Error
	err := r.api.Post(r.ctx, fmt.Sprintf("/v1/connections/%d/close", victim.ID), nil, nil)
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Fatalf("closing it again: %v, want 404", err)
	}
	if err := r.api.Post(r.ctx, "/v1/connections/x/close", nil, nil); !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
		t.Fatalf("a bad id: %v, want 400", err)
	}
	if !r.cl.Status().Connected || r.cl.Status().Sessions != 1 {
		t.Fatalf("the session did not carry on: %+v", r.cl.Status())
	}
}

// A drained tunnel refuses new connections and keeps its open ones; the
// client's other tunnel is untouched.
func TestAdminDrainsATunnel(t *testing.T) {
	tt.CheckLeaks(t)
	r := newAdminRig(t, nil)
	open := tt.Dial(t, r.pub["echo"])
	if err := tt.Ping(open, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	var tn server.TunnelStatus
	if err := r.api.Post(r.ctx, "/v1/sessions/test-client/tunnels/echo/drain", nil, &tn); err != nil || tn.State != "draining" || tn.Connections != 1 {
		t.Fatalf("drain: %+v, %v", tn, err)
	}
	if c, err := net.DialTimeout("tcp", r.pub["echo"], 5*time.Second); err == nil {
		c.Close()
		t.Fatal("a drained tunnel took a new connection")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial a drained tunnel: %v, want refused", err)
	}
	if err := tt.RoundTrip(open, 1<<20); err != nil {
		t.Fatalf("the open connection, after the drain: %v", err)
	}
	if err := tt.Ping(tt.Dial(t, r.pub["other"]), "other", 5*time.Second); err != nil {
		t.Fatalf("the other tunnel: %v", err)
	}
	if got := r.tunnel(t, "echo"); got.State != "draining" {
		t.Fatalf("status after the drain: %+v", got)
	}
	var ae *admin.Error
	if err := r.api.Post(r.ctx, "/v1/sessions/test-client/tunnels/nope/drain", nil, nil); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Fatalf("drain of an unknown tunnel: %v", err)
	}
}

// A kicked session ends with the operator's reason, which the client
// logs; it reconnects and gets its tunnels back.
func TestAdminKick(t *testing.T) {
	tt.CheckLeaks(t)
	r := newAdminRig(t, nil)
	before := r.status(t).Sessions[0]
	var kicked server.SessionStatus
	if err := r.api.Post(r.ctx, "/v1/sessions/test-client/kick", map[string]string{"reason": "maintenance at 10:00"}, &kicked); err != nil {
		t.Fatal(err)
	}
	if kicked.ID != before.ID {
		t.Fatalf("kicked %+v, want session %s", kicked, before.ID)
	}
	r.cl.Logs.WaitFor(t, 5*time.Second, "session closed by server", "kicked by the server's operator: maintenance at 10:00")
	r.srv.Logs.WaitFor(t, 5*time.Second, "session kicked by the operator", "maintenance at 10:00")
	tt.Eventually(t, 10*time.Second, "the client back", func() bool {
		st := r.cl.Status()
		return st.Connected && st.Sessions == 2
	})
	if err := tt.Ping(tt.Dial(t, r.pub["echo"]), "back", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	var ae *admin.Error
	if err := r.api.Post(r.ctx, "/v1/sessions/nobody/kick", nil, nil); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Fatalf("kick of nobody: %v", err)
	}

	// A ban keeps the client out, which keeps trying, until it is lifted.
	if err := r.api.Post(r.ctx, "/v1/sessions/test-client/kick", map[string]string{"reason": "abuse", "ban": "1h"}, nil); err != nil {
		t.Fatal(err)
	}
	r.cl.Logs.WaitFor(t, 10*time.Second, "server refused us for now: banned by the server's operator until", "abuse")
	if st := r.cl.Status(); st.Connected {
		t.Fatalf("a banned client is connected: %+v", st)
	}
	if st := r.status(t); len(st.Bans) != 1 || st.Bans[0].Client != "test-client" || len(st.Sessions) != 0 {
		t.Fatalf("status with the ban: %+v", st)
	}
	if err := r.api.Post(r.ctx, "/v1/sessions/test-client/kick", map[string]string{"ban": "soon"}, nil); !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
		t.Errorf("a ban that is no duration: %v", err)
	}
	if err := r.api.Post(r.ctx, "/v1/bans/test-client/lift", nil, nil); err != nil {
		t.Fatal(err)
	}
	tt.Eventually(t, 10*time.Second, "the client back after the ban", func() bool { return r.cl.Status().Connected })
	if err := tt.Ping(tt.Dial(t, r.pub["echo"]), "unbanned", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := r.api.Post(r.ctx, "/v1/bans/test-client/lift", nil, nil); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("lifting a ban twice: %v", err)
	}
}

// The commands an operator types, against the built binaries: status as
// a table and as JSON, kick, drain and close-conn by the socket the
// config names, and a config without [admin] refused with what to do.
func TestAdminCommands(t *testing.T) {
	bin := tt.Binaries(t)
	dir := t.TempDir()
	echo := tt.NewEcho(t)
	ctrlPort, fixedPort := tt.FreePort(t), tt.FreePort(t)
	sock := filepath.Join(dir, "run", "admin.sock")
	if err := os.Mkdir(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	bare := writeFile(t, dir, "bare.toml", fmt.Sprintf(serverTOML, ctrlPort, tt.Token, filepath.Join(dir, "state")))
	srvConf := writeFile(t, dir, "tunneld.toml", fmt.Sprintf(serverTOML, ctrlPort, tt.Token, filepath.Join(dir, "state"))+
		fmt.Sprintf("\n[admin]\nsocket = %q\n", sock))
	csock := filepath.Join(dir, "run", "tunnelc.sock")
	cliConf := writeFile(t, dir, "tunnel.toml", fmt.Sprintf(clientTOML, ctrlPort, tt.Token, echo.Addr(), fixedPort, echo.Addr(), "")+
		fmt.Sprintf("insecure_skip_verify = true\n[admin]\nsocket = %q\n", csock))
	srv := tt.Start(t, exec.Command(filepath.Join(bin, "tunneld"), "serve", "-c", srvConf))
	srv.WaitOutput(t, 10*time.Second, `listening for sessions`)
	cl := tt.Start(t, exec.Command(filepath.Join(bin, "tunnelc"), "up", "-c", cliConf))
	cl.WaitOutput(t, 10*time.Second, `msg="session up"`)
	fixed := fmt.Sprintf("127.0.0.1:%d", fixedPort)

	run := func(want int, args ...string) string {
		t.Helper()
		return runCmd(t, want, filepath.Join(bin, "tunneld"), args...)
	}
	c := tt.Dial(t, fixed)
	if err := tt.RoundTrip(c, 1<<20); err != nil {
		t.Fatal(err)
	}
	open := tt.Dial(t, fixed)
	if err := tt.Ping(open, "open", 5*time.Second); err != nil {
		t.Fatal(err)
	}

	// The round trip's connection is counted as closed a moment after
	// its last byte.
	api := admin.Dial(config.Admin{Socket: sock})
	defer api.Close()
	tt.Eventually(t, 5*time.Second, "one connection open", func() bool {
		var st server.Status
		return api.Get(context.Background(), "/v1/status", &st) == nil && len(st.Sessions) == 1 && st.Sessions[0].Connections == 1
	})
	table := run(0, "status", "-c", srvConf)
	t.Logf("tunneld status:\n%s", table)
	for _, re := range []string{`1 sessions, 2 tunnels, 1 connections`, `(?m)^binary-test\s+[0-9a-f]{12}\s+127\.0\.0\.1:\d+\s+up\s`,
		`(?m)^binary-test\s+fixed\s+127\.0\.0\.1:` + fmt.Sprint(fixedPort) + `\s+up\s+1\s+2\s+-\s+1\.0MiB\s+1\.0MiB\s`} {
		if !regexp.MustCompile(re).MatchString(table) {
			t.Errorf("status table lacks %s", re)
		}
	}
	res := []*regexp.Regexp{regexp.MustCompile(`connected to 127\.0\.0\.1:\d+, session [0-9a-f]{12} for .*; 2 tunnels, 1 connections`),
		regexp.MustCompile(`(?m)^fixed\s+127\.0\.0\.1:` + fmt.Sprint(fixedPort) + `\s+127\.0\.0\.1:\d+\s+up\s+1\s+2\s+1\.0MiB\s+1\.0MiB\s+0$`)}
	var out []byte
	// tunnelc, too, counts the round trip's connection closed a moment
	// after its last byte.
	tt.Eventually(t, 5*time.Second, "tunnelc status with one connection open", func() bool {
		var err error
		out, err = exec.Command(filepath.Join(bin, "tunnelc"), "status", "-c", cliConf).CombinedOutput()
		return err == nil && res[0].Match(out) && res[1].Match(out)
	})
	t.Logf("tunnelc status:\n%s", out)
	var st server.Status
	if err := json.Unmarshal([]byte(run(0, "status", "--json", "-c", srvConf)), &st); err != nil || len(st.Sessions) != 1 {
		t.Fatalf("status --json: %v %+v", err, st)
	}
	var cs []server.ConnStatus
	if err := json.Unmarshal([]byte(run(0, "status", "--connections", "--json", "--admin", sock)), &cs); err != nil || len(cs) != 1 {
		t.Fatalf("status --connections --json: %v %+v", err, cs)
	}
	if out := run(0, "close-conn", "-c", srvConf, fmt.Sprint(cs[0].ID)); !strings.Contains(out, "closed connection") {
		t.Errorf("close-conn: %s", out)
	}
	_ = open.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := open.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the closed connection read %v, want a reset", err)
	}
	if out := run(1, "close-conn", "-c", srvConf, fmt.Sprint(cs[0].ID)); !strings.Contains(out, "no open connection with id") {
		t.Errorf("close-conn of a closed connection: %s", out)
	}
	if out := run(0, "drain", "-c", srvConf, "binary-test", "picked"); !strings.Contains(out, "draining binary-test/picked") {
		t.Errorf("drain: %s", out)
	}
	if out := run(0, "kick", "-c", srvConf, "--reason", "moving hosts", "binary-test"); !strings.Contains(out, "kicked binary-test") {
		t.Errorf("kick: %s", out)
	}
	cl.WaitOutput(t, 10*time.Second, `session closed by server.*kicked by the server's operator: moving hosts`)
	if out := run(1, "kick", "-c", srvConf, "nobody"); !strings.Contains(out, `no session of a client named "nobody"`) {
		t.Errorf("kick nobody: %s", out)
	}
	if out := run(cli.ExitConfig, "status", "-c", bare); !strings.Contains(out, "has no [admin] socket or address") {
		t.Errorf("status without [admin]: %s", out)
	}
	// The probes, with a plain HTTP client over the socket.
	hc := tt.UnixHTTP(t, sock)
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := tt.GetText(t, hc, "http://tunneld"+p); code != 200 {
			t.Errorf("%s: %d %q", p, code, body)
		}
	}
	hc.CloseIdleConnections() // tunneld's shutdown would wait for it
	if code := srv.Signal(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("tunneld exit %d", code)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the admin socket outlived tunneld: %v", err)
	}
}

// tunnelc's endpoint: not ready while it has no session, and says why;
// then ready, with its tunnels' counts, and local dials that failed
// counted by reason.
func TestClientAdminReport(t *testing.T) {
	tt.CheckLeaks(t)
	echo := tt.NewEcho(t)
	dead := tt.FreePort(t) // nothing listens there
	// A session port with nothing behind it yet: the client cannot connect.
	srvPort := tt.FreePort(t)
	sock := filepath.Join(t.TempDir(), "tunnelc.sock")
	cfg := tt.ClientConfig(t, fmt.Sprintf("127.0.0.1:%d", srvPort), map[string]*config.Tunnel{
		"echo": {Local: echo.Addr()}, "dead": {Local: fmt.Sprintf("127.0.0.1:%d", dead)}}, nil)
	cl := tt.StartClient(t, cfg)
	a := admin.New(config.Admin{Socket: sock}, slog.New(slog.NewTextHandler(cl.Logs, nil)))
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	cl.ServeAdmin(a, "test")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	hc := tt.UnixHTTP(t, sock)
	probe := func(path string) (int, string) { return tt.GetText(t, hc, "http://tunnelc"+path) }
	tt.Eventually(t, 5*time.Second, "a failed attempt", func() bool { return cl.Logs.Contains("reconnecting") })
	if code, body := probe("/readyz"); code != 503 || !strings.Contains(body, "cannot reach server") {
		t.Fatalf("readyz without a session: %d %q", code, body)
	}
	if code, _ := probe("/healthz"); code != 200 {
		t.Fatalf("healthz: %d", code)
	}
	api := admin.Dial(config.Admin{Socket: sock})
	var r client.Report
	if err := api.Get(ctx, "/v1/status", &r); err != nil || r.Connected || !strings.Contains(r.LastError, "cannot reach server") || len(r.Tunnels) != 2 || r.Tunnels[0].State != "down" {
		t.Fatalf("report without a server: %+v, %v", r, err)
	}

	tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) { c.Listen = fmt.Sprintf("127.0.0.1:%d", srvPort) }))
	pub := cl.WaitUp(t, 10*time.Second)
	if code, body := probe("/readyz"); code != 200 {
		t.Fatalf("readyz with a session: %d %q", code, body)
	}
	if err := tt.RoundTrip(tt.Dial(t, pub["echo"]), 2<<20); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		tt.DialEnded(t, pub["dead"])
	}
	tt.Eventually(t, 5*time.Second, "the counts", func() bool {
		if err := api.Get(ctx, "/v1/status", &r); err != nil {
			t.Fatal(err)
		}
		return r.Tunnels[1].Connections == 0 && r.Tunnels[1].ConnectionsTotal == 1 && r.Tunnels[0].DialFailed["refused"] == 2
	})
	dt, et := r.Tunnels[0], r.Tunnels[1]
	if !r.Connected || r.Session == "" || r.Since == nil || r.RTTMillis <= 0 || r.Sessions != 1 {
		t.Errorf("session in the report: %+v", r)
	}
	if et.Name != "echo" || et.State != "up" || et.Public != pub["echo"] || et.BytesIn != 2<<20 || et.BytesOut != 2<<20 {
		t.Errorf("echo tunnel: %+v", et)
	}
	if dt.Name != "dead" || dt.ConnectionsTotal != 0 || len(dt.DialFailed) != 1 {
		t.Errorf("dead tunnel: %+v", dt)
	}
	m := scrape(t, sock)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"tunnelc_connected", nil, 1},
		{"tunnelc_sessions_total", nil, 1},
		{"tunnelc_tunnel_up", map[string]string{"tunnel": "dead"}, 1},
		{"tunnelc_bytes_total", map[string]string{"tunnel": "echo", "direction": "in"}, 2 << 20},
		{"tunnelc_bytes_total", map[string]string{"tunnel": "echo", "direction": "out"}, 2 << 20},
		{"tunnelc_connections_total", map[string]string{"tunnel": "echo"}, 1},
		{"tunnelc_connections_active", map[string]string{"tunnel": "echo"}, 0},
		{"tunnelc_local_dial_failures_total", map[string]string{"tunnel": "dead", "reason": "refused"}, 2},
		{"tunnelc_local_dial_failures_total", map[string]string{"tunnel": "dead", "reason": "timeout"}, 0},
	} {
		if got := value(m, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if n := value(m, "tunnelc_sessions_ended_total", map[string]string{"cause": "unreachable"}); n < 1 || value(m, "tunnelc_reconnect_attempts_total", nil) < n {
		t.Errorf("failed attempts %v, reconnects %v", n, value(m, "tunnelc_reconnect_attempts_total", nil))
	}
}
