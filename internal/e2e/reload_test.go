package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/cli"
	"github.com/tunnel-dev/tunnel/internal/client"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

const reloadClientTOML = `server = "127.0.0.1:%d"
token = "%s"
name = "reloader"
drain_timeout = "%s"

[reconnect]
min_delay = "50ms"
max_delay = "500ms"

[tls]
insecure_skip_verify = true

[admin]
socket = %q
%s`

// runCmd runs one of the built binaries' commands and checks its exit code.
func runCmd(t *testing.T, want int, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if code != want {
		t.Fatalf("%s %v: exit %d, want %d\n%s", filepath.Base(bin), args, code, want, out)
	}
	return string(out)
}

// A reload of tunnelc with traffic on: one tunnel's transfer carries on
// byte for byte while another is removed (its open connection drains,
// then is reset) and a third added; a changed local address takes the
// next connection; an invalid config is refused and nothing changes; the
// session is the same throughout.
func TestReloadTunnelsWithLiveTraffic(t *testing.T) {
	bin := tt.Binaries(t)
	tunneld, tunnelc := filepath.Join(bin, "tunneld"), filepath.Join(bin, "tunnelc")
	dir := t.TempDir()
	echo := tt.NewEcho(t)
	banner := tt.NewService(t, func(c *net.TCPConn, _ <-chan struct{}) { io.WriteString(c, "other service\n") })
	ctrlPort, keepPort, gonePort, newPort := tt.FreePort(t), tt.FreePort(t), tt.FreePort(t), tt.FreePort(t)
	srvConf := writeFile(t, dir, "tunneld.toml", fmt.Sprintf(serverTOML, ctrlPort, tt.Token, filepath.Join(dir, "state")))
	sock := filepath.Join(dir, "tunnelc.sock")
	tunnels := func(keepLocal string, names ...string) string {
		var b strings.Builder
		for _, n := range names {
			local, port := echo.Addr(), map[string]int{"keep": keepPort, "gone": gonePort, "new": newPort}[n]
			if n == "keep" {
				local = keepLocal
			}
			fmt.Fprintf(&b, "[tunnels.%s]\nlocal = %q\nremote_port = %d\n", n, local, port)
		}
		return b.String()
	}
	cliConf := writeFile(t, dir, "tunnel.toml", fmt.Sprintf(reloadClientTOML, ctrlPort, tt.Token, "30s", sock, tunnels(echo.Addr(), "keep", "gone")))
	srv := tt.Start(t, exec.Command(tunneld, "serve", "-c", srvConf))
	srv.WaitOutput(t, 10*time.Second, `listening for sessions`)
	cl := tt.Start(t, exec.Command(tunnelc, "up", "-c", cliConf))
	cl.WaitOutput(t, 10*time.Second, `msg="session up"`)
	report := func() client.Report {
		var r client.Report
		if err := json.Unmarshal([]byte(runCmd(t, 0, tunnelc, "status", "--json", "-c", cliConf)), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	before := report()
	at := func(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

	// Half of a transfer through keep, and a connection open on gone.
	keep := tt.Dial(t, at(keepPort))
	sent, got := sha256.New(), sha256.New()
	move := func(n int) {
		buf := make([]byte, n)
		rand.Read(buf)
		sent.Write(buf)
		go keep.Write(buf)
		back := make([]byte, n)
		if _, err := io.ReadFull(keep, back); err != nil {
			t.Fatalf("keep transfer: %v", err)
		}
		got.Write(back)
	}
	move(4 << 20)
	gone := tt.Dial(t, at(gonePort))
	if err := tt.Ping(gone, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}

	// Remove gone (its connections may drain for 5 s: long enough for a
	// slow machine to see it open, short for the test), add new,
	// point keep at another service.
	writeFile(t, dir, "tunnel.toml", fmt.Sprintf(reloadClientTOML, ctrlPort, tt.Token, "5s", sock, tunnels(banner.Addr(), "keep", "new")))
	out := runCmd(t, 0, tunnelc, "reload", "-c", cliConf)
	t.Logf("tunnelc reload:\n%s", out)
	for _, want := range []string{"added          [new]", "removed        [gone]", "local changed  [keep]", "applied        [drain_timeout]"} {
		if !strings.Contains(out, want) {
			t.Errorf("reload output lacks %q", want)
		}
	}
	// The open connection on the removed tunnel drains, then is reset.
	if err := tt.Ping(gone, "draining", 5*time.Second); err != nil {
		t.Errorf("the removed tunnel's connection within its drain: %v", err)
	}
	_ = gone.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := gone.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the removed tunnel's connection after its drain: %v, want a reset", err)
	}
	if c, err := net.DialTimeout("tcp", at(gonePort), 5*time.Second); err == nil {
		c.Close()
		t.Error("the removed tunnel's port still takes connections")
	}
	tt.Eventually(t, 10*time.Second, "tunnel new up", func() bool {
		for _, tn := range report().Tunnels {
			if tn.Name == "new" && tn.State == "up" {
				return true
			}
		}
		return false
	})
	if err := tt.Ping(tt.Dial(t, at(newPort)), "new tunnel", 5*time.Second); err != nil {
		t.Errorf("the added tunnel: %v", err)
	}
	// keep's next connection reaches the new local address; the open one
	// still its old service, byte for byte.
	line := make([]byte, 14)
	if _, err := io.ReadFull(tt.Dial(t, at(keepPort)), line); err != nil || string(line) != "other service\n" {
		t.Errorf("a new connection on keep read %q, %v: want the new local service", line, err)
	}
	move(4 << 20)
	if string(sent.Sum(nil)) != string(got.Sum(nil)) {
		t.Fatal("the transfer through keep differs across the reload")
	}

	// An invalid config is refused with where and what, and changes
	// nothing.
	writeFile(t, dir, "tunnel.toml", fmt.Sprintf(reloadClientTOML, ctrlPort, tt.Token, "1s", sock, tunnels(echo.Addr(), "new")+"[tunnels.bad]\nlocal = \"nowhere\"\n"))
	out = runCmd(t, cli.ExitConfig, tunnelc, "reload", "-c", cliConf)
	if !regexp.MustCompile(`tunnel\.toml:\d+: tunnels\.bad\.local: "nowhere" has no port`).MatchString(out) || !strings.Contains(out, "the running config stays") {
		t.Errorf("invalid reload: %s", out)
	}
	cl.WaitOutput(t, 5*time.Second, `config reload refused; the running config stays`)
	after := report()
	if after.Session != before.Session || after.Sessions != 1 {
		t.Errorf("the session changed: %s -> %s (%d sessions)", before.Session, after.Session, after.Sessions)
	}
	names := []string{}
	for _, tn := range after.Tunnels {
		names = append(names, tn.Name+"="+tn.State)
	}
	if strings.Join(names, " ") != "keep=up new=up" {
		t.Errorf("tunnels after the refused reload: %v", names)
	}
	if err := tt.RoundTrip(keep, 1<<20); err != nil {
		t.Errorf("keep after the refused reload: %v", err)
	}
}
