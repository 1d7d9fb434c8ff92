package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/cli"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

func TestMain(m *testing.M) {
	defer tt.RemoveBinaries() // the test wrapper exits with m.Run's code
	m.Run()
}

const serverTOML = `# as configs/tunneld.toml, on loopback
listen = "127.0.0.1:%d"
token = "%s"
bind_addr = "127.0.0.1"
allow_ports = ["1024-65535"]
state_dir = "%s"

[log]
level = "debug"
`

const clientTOML = `# as configs/tunnel.toml
server = "127.0.0.1:%d"
token = "%s"
name = "binary-test"

[log]
level = "debug"

[reconnect]
min_delay = "50ms"
max_delay = "500ms"

[tunnels.fixed]
local = "%s"
remote_port = %d

[tunnels.picked]
local = "%s"
remote_port = 0

[tls]
fingerprint = "%s"
`

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The built binaries, started from config files as a user would: checks,
// traffic on two tunnels, the keepalive defaults on the real sockets, a
// refused client, and a clean exit on SIGTERM.
func TestBinariesEndToEnd(t *testing.T) {
	bin := tt.Binaries(t)
	dir := t.TempDir()
	echo := tt.NewEcho(t)
	ctrlPort, fixedPort := tt.FreePort(t), tt.FreePort(t)
	srvConf := writeFile(t, dir, "tunneld.toml", fmt.Sprintf(serverTOML, ctrlPort, tt.Token, filepath.Join(dir, "state")))
	// The automatic certificate, made before the first start as an
	// operator would, to hand its fingerprint to the client.
	out, err := exec.Command(filepath.Join(bin, "tunneld"), "fingerprint", "-c", srvConf).Output()
	if err != nil {
		t.Fatalf("tunneld fingerprint: %v", err)
	}
	fingerprint := strings.TrimSpace(string(out))
	cliConf := writeFile(t, dir, "tunnel.toml", fmt.Sprintf(clientTOML, ctrlPort, tt.Token, echo.Addr(), fixedPort, echo.Addr(), fingerprint))

	for _, c := range [][]string{
		{"tunneld", "check", "-c", srvConf},
		{"tunnelc", "check", "-c", cliConf},
	} {
		out, err := exec.Command(filepath.Join(bin, c[0]), c[1:]...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), ": ok") {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
		t.Logf("%s check:\n%s", c[0], out)
	}

	srv := tt.Start(t, exec.Command(filepath.Join(bin, "tunneld"), "serve", "-c", srvConf))
	srv.WaitOutput(t, 10*time.Second, `listening for sessions`)
	if !strings.Contains(srv.Output(), "fingerprint="+fingerprint) {
		t.Errorf("tunneld does not present the certificate `tunneld fingerprint` printed (%s):\n%s", fingerprint, srv.Output())
	}
	cl := tt.Start(t, exec.Command(filepath.Join(bin, "tunnelc"), "up", "-c", cliConf))
	cl.WaitOutput(t, 10*time.Second, `msg="session up"`)
	fixed := fmt.Sprintf("127.0.0.1:%d", fixedPort)
	picked := cl.WaitOutput(t, time.Second, `tunnel ready.* tunnel=picked public=(\S+)`)[1]
	t.Logf("tunnels: fixed %s, picked %s", fixed, picked)

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		addr := fixed
		if i%2 == 1 {
			addr = picked
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := tt.RoundTrip(tt.Dial(t, addr), 4<<20); err != nil {
				errs <- fmt.Errorf("%s: %w", addr, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// The README's keepalive defaults, read back from the binaries' sockets while
	// a connection is open on every leg.
	c := tt.Dial(t, fixed)
	if err := tt.Ping(c, "keepalive", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	ss, err := tt.Sockets(srv.Cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := tt.Sockets(cl.Cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	ctrl := fmt.Sprintf("127.0.0.1:%d", ctrlPort)
	if s, err := tt.Find(ss, fixed, c.LocalAddr().String()); err != nil {
		t.Errorf("tunneld public socket: %v", err)
	} else {
		checkLeg(t, "tunneld public", s, legWant{30 * time.Second, 10 * time.Second, 3, 0})
	}
	if s, err := tt.Find(cs, "", ctrl); err != nil {
		t.Errorf("tunnelc session socket: %v", err)
	} else {
		checkLeg(t, "tunnelc session", s, legWant{15 * time.Second, 5 * time.Second, 3, 30 * time.Second})
		if s, err := tt.Find(ss, ctrl, s.Local.String()); err != nil {
			t.Errorf("tunneld session socket: %v", err)
		} else {
			checkLeg(t, "tunneld session", s, legWant{15 * time.Second, 5 * time.Second, 3, 30 * time.Second})
		}
	}
	if s, err := tt.Find(cs, "", echo.Addr()); err != nil {
		t.Errorf("tunnelc local socket: %v", err)
	} else {
		checkLeg(t, "tunnelc local", s, legWant{30 * time.Second, 10 * time.Second, 3, 0})
	}

	// A client with a wrong token exits non-zero and says what to fix; the
	// running session is not disturbed.
	bad := writeFile(t, dir, "bad.toml", strings.Replace(
		fmt.Sprintf(clientTOML, ctrlPort, "wrong-token", echo.Addr(), fixedPort, echo.Addr(), fingerprint),
		`name = "binary-test"`, `name = "intruder"`, 1))
	intruder := tt.Start(t, exec.Command(filepath.Join(bin, "tunnelc"), "up", "-c", bad))
	if code := intruder.Wait(t, 10*time.Second); code != cli.ExitRefused {
		t.Errorf("tunnelc with a wrong token exited %d, want %d", code, cli.ExitRefused)
	}
	if out := intruder.Output(); !strings.Contains(out, "token") {
		t.Errorf("wrong-token exit does not mention the token:\n%s", out)
	}
	// A client whose pin does not match exits 77 at once, printing the
	// fingerprint it expected and the one it was shown.
	wrongPin := "sha256:" + strings.Repeat("0f", 32)
	mispinned := writeFile(t, dir, "mispinned.toml", strings.Replace(
		fmt.Sprintf(clientTOML, ctrlPort, tt.Token, echo.Addr(), fixedPort, echo.Addr(), wrongPin),
		`name = "binary-test"`, `name = "mispinned"`, 1))
	mp := tt.Start(t, exec.Command(filepath.Join(bin, "tunnelc"), "up", "-c", mispinned))
	if code := mp.Wait(t, 10*time.Second); code != cli.ExitRefused {
		t.Errorf("tunnelc with a wrong pin exited %d, want %d", code, cli.ExitRefused)
	}
	if out := mp.Output(); !strings.Contains(out, fingerprint) || !strings.Contains(out, wrongPin) {
		t.Errorf("wrong-pin exit does not give both fingerprints:\n%s", out)
	}
	if err := tt.Ping(c, "still here", 5*time.Second); err != nil {
		t.Errorf("open connection after the refused clients: %v", err)
	}

	// Bulk both ways through the session while the client stops: the frames
	// in flight then meet closed sockets, and a planned shutdown must still
	// read as one (a goodbye), not as yamux write errors at warn level.
	bulk := tt.Dial(t, fixed)
	go func() { _, _ = io.Copy(bulk, zeros{}) }()
	// Until bulk flows both ways (4 MiB back through the tunnel).
	_ = bulk.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.CopyN(io.Discard, bulk, 4<<20); err != nil {
		t.Fatalf("bulk through the tunnel: %v", err)
	}
	_ = bulk.SetReadDeadline(time.Time{})
	go func() { _, _ = io.Copy(io.Discard, bulk) }()

	// SIGTERM: both exit 0 within a few seconds and say so.
	start := time.Now()
	if code := cl.Signal(t, syscall.SIGTERM, 5*time.Second); code != 0 {
		t.Errorf("tunnelc exit code %d after SIGTERM", code)
	}
	t.Logf("tunnelc stopped %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if code := srv.Signal(t, syscall.SIGTERM, 5*time.Second); code != 0 {
		t.Errorf("tunneld exit code %d after SIGTERM", code)
	}
	t.Logf("tunneld stopped %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(cl.Output(), "tunnelc stopped") || !strings.Contains(srv.Output(), "tunneld stopped") {
		t.Errorf("missing stop lines")
	}
	if !strings.Contains(srv.Output(), `reason="client said goodbye: client shutting down"`) {
		t.Errorf("tunneld did not see the client's goodbye")
	}
	for name, out := range map[string]string{"tunneld": srv.Output(), "tunnelc": cl.Output()} {
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "level=WARN msg=yamux") || strings.Contains(line, "level=ERROR msg=yamux") {
				t.Errorf("%s logged a yamux warning during a planned shutdown: %s", name, line)
			}
		}
	}
}

// Config mistakes exit 78 (EX_CONFIG) with the file, line and key; --version prints the
// build's version and commit.
func TestBinariesConfigErrorsAndVersion(t *testing.T) {
	bin := tt.Binaries(t)
	dir := t.TempDir()
	for _, name := range []string{"tunneld", "tunnelc"} {
		out, err := exec.Command(filepath.Join(bin, name), "--version").CombinedOutput()
		// The build, and that it carries our yamux fork, not upstream's release.
		// The commit: the binaries are built from this checkout.
		if err != nil || !strings.Contains(string(out), "test") || !regexp.MustCompile(`yamux v\d+\.\d+\.\d+ \+ \d+ local patches`).Match(out) ||
			(tt.Commit() != "" && !strings.Contains(string(out), "commit "+tt.Commit()+",")) {
			t.Errorf("%s --version: %v %q", name, err, out)
		}
	}
	cases := []struct {
		bin, file, content string
		want               []string
	}{
		{"tunneld", "tunneld.toml", "listen = \"127.0.0.1:7835\"\nlisten_port = 3\n",
			[]string{"tunneld.toml:2", "listen_port", "unknown key"}},
		{"tunnelc", "tunnel.toml", "server = \"127.0.0.1:7835\"\ntoken = \"x\"\n[tunnels.web]\nlocal = \"127.0.0.1:80\"\nremote_port = 70000\n",
			[]string{"tunnel.toml:5", "tunnels.web.remote_port", "out of range"}},
		{"tunnelc", "tunnel.toml", "server = \"127.0.0.1:7835\"\ntoken = \"x\"\n",
			[]string{"tunnel.toml", "tunnels"}},
		{"tunnelc", "syntax.toml", "server = \"127.0.0.1:7835\n",
			[]string{"syntax.toml:1:", "newlines"}},
		// check and serve alike find a certificate that is not there.
		{"tunneld", "tls.toml", "listen = \"127.0.0.1:0\"\n[tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
			[]string{"tls.toml:3", "tls.cert_file", "/nonexistent/cert.pem", "tls.toml:4", "tls.key_file"}},
		{"tunneld", "range.toml", "listen = \"127.0.0.1:0\"\nhandshake_timeout = \"2562047h\"\n",
			[]string{"range.toml:2", "handshake_timeout", "out of range"}},
	}
	for _, c := range cases {
		p := writeFile(t, dir, c.file, c.content)
		for _, sub := range []string{"check", map[string]string{"tunneld": "serve", "tunnelc": "up"}[c.bin]} {
			cmd := exec.Command(filepath.Join(bin, c.bin), sub, "-c", p)
			out, err := cmd.CombinedOutput()
			if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != cli.ExitConfig {
				t.Errorf("%s %s with %q: exit %v, want %d\n%s", c.bin, sub, c.content, err, cli.ExitConfig, out)
				continue
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("%s %s: error does not mention %q:\n%s", c.bin, sub, w, out)
				}
			}
		}
	}
}
