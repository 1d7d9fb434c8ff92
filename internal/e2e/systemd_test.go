package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// The units in configs/ pass systemd-analyze verify with no warning (it
// exits 0 on unknown keys, so any output fails the test).
func TestSystemdUnitsVerify(t *testing.T) {
	sa := systemdAnalyze(t)
	verifyUnits(t, sa, filepath.Join("..", "..", "configs"), "/usr/local/bin/", tt.Binaries(t))
}

// systemdAnalyze finds systemd-analyze, or fails (CI=true) or skips.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze not found: CI must install systemd (see .ci/run)")
		}
		t.Skip("systemd-analyze not installed")
	}
	return sa
}

// verifyUnits runs systemd-analyze verify on the three units in dir, with
// ExecStart's binDir pointed at bin (verify needs the binary to exist);
// the template is verified as an instance.
func verifyUnits(t *testing.T, sa, dir, binDir, bin string) {
	t.Helper()
	tmp := t.TempDir()
	for name, as := range map[string]string{"tunneld.service": "tunneld.service", "tunnelc.service": "tunnelc.service",
		"tunnelc@.service": "tunnelc@office.service"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		unit := strings.ReplaceAll(string(data), binDir, bin+"/")
		p := filepath.Join(tmp, as)
		if err := os.WriteFile(p, []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "verify", "--man=no", p).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", as, err, out)
		}
	}
}

// make install puts the binaries, units, example configs and completions
// where a packager expects them under DESTDIR, with the units' paths
// rewritten to PREFIX and SYSCONFDIR, keeps a config that is already
// there, and the installed units verify.
func TestMakeInstall(t *testing.T) {
	sa := systemdAnalyze(t)
	dest, build := t.TempDir(), t.TempDir()
	kept := filepath.Join(dest, "etc", "tunnel", "tunnel.toml")
	if err := os.MkdirAll(filepath.Dir(kept), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kept, []byte("# mine\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("make", "install", "DESTDIR="+dest, "PREFIX=/usr", "BIN="+build)
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	want := map[string]os.FileMode{
		"usr/bin/tunneld": 0o755, "usr/bin/tunnelc": 0o755,
		"usr/lib/systemd/system/tunneld.service": 0o644, "usr/lib/systemd/system/tunnelc.service": 0o644,
		"usr/lib/systemd/system/tunnelc@.service": 0o644,
		"etc/tunnel/tunneld.toml":                 0o644, "etc/tunnel/tunnel.toml": 0o600,
		"usr/share/bash-completion/completions/tunneld": 0o644, "usr/share/bash-completion/completions/tunnelc": 0o644,
		"usr/share/zsh/site-functions/_tunneld": 0o644, "usr/share/zsh/site-functions/_tunnelc": 0o644,
		"usr/share/fish/vendor_completions.d/tunneld.fish": 0o644, "usr/share/fish/vendor_completions.d/tunnelc.fish": 0o644,
	}
	var got []string
	_ = filepath.Walk(dest, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			rel, _ := filepath.Rel(dest, p)
			got = append(got, rel)
			if m, ok := want[rel]; !ok {
				t.Errorf("installed %s, which is not expected", rel)
			} else if fi.Mode().Perm()&^0o022 != m&^0o022 {
				t.Errorf("%s: mode %v, want %v", rel, fi.Mode().Perm(), m)
			} else if fi.Size() == 0 {
				t.Errorf("%s is empty", rel)
			}
		}
		return nil
	})
	if len(got) != len(want) {
		t.Errorf("installed %d files, want %d: %v", len(got), len(want), got)
	}
	if data, _ := os.ReadFile(kept); string(data) != "# mine\n" {
		t.Errorf("make install replaced an existing config: %q", data)
	}
	unit, _ := os.ReadFile(filepath.Join(dest, "usr/lib/systemd/system/tunnelc@.service"))
	if !strings.Contains(string(unit), "ExecStart=/usr/bin/tunnelc up -c /etc/tunnel/%i.toml") {
		t.Errorf("tunnelc@.service's ExecStart not rewritten to PREFIX:\n%s", unit)
	}
	verifyUnits(t, sa, filepath.Join(dest, "usr/lib/systemd/system"), "/usr/bin/", filepath.Join(dest, "usr/bin"))
}

// notifySocket plays systemd's side of sd_notify.
type notifySocket struct {
	path string
	c    *net.UnixConn
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	p := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	return &notifySocket{path: p, c: c}
}

// next returns the next message and its sender's pid.
func (n *notifySocket) next(t *testing.T, timeout time.Duration) (string, int) {
	t.Helper()
	buf, oob := make([]byte, 4096), make([]byte, 1024)
	_ = n.c.SetReadDeadline(time.Now().Add(timeout))
	m, oobn, _, _, err := n.c.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("no sd_notify message within %s: %v", timeout, err)
	}
	pid := 0
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, cm := range msgs {
			if cred, err := unix.ParseUnixCredentials(&cm); err == nil {
				pid = int(cred.Pid)
			}
		}
	}
	return string(buf[:m]), pid
}

// expect reads messages until one starts with prefix.
func (n *notifySocket) expect(t *testing.T, pid int, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		msg, from := n.next(t, time.Until(deadline))
		if from != pid {
			t.Errorf("sd_notify message %q from pid %d, want %d", msg, from, pid)
		}
		if strings.HasPrefix(msg, prefix) {
			return msg
		}
	}
	t.Fatalf("no %q from pid %d within %s", prefix, pid, timeout)
	return ""
}

// Both daemons tell systemd READY, pet the watchdog at half its interval,
// and say STOPPING on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	bin := tt.Binaries(t)
	echo := tt.NewEcho(t)
	ctrl := fmt.Sprintf("127.0.0.1:%d", tt.FreePort(t))
	env := func(n *notifySocket) []string {
		return append(os.Environ(), "NOTIFY_SOCKET="+n.path, "WATCHDOG_USEC=400000", "TUNNEL_TOKEN="+tt.Token)
	}

	sn := newNotifySocket(t)
	cmd := exec.Command(filepath.Join(bin, "tunneld"), "serve", "--listen", ctrl, "--bind-addr", "127.0.0.1")
	cmd.Env = env(sn)
	srv := tt.Start(t, cmd)
	pid := srv.Cmd.Process.Pid
	if msg := sn.expect(t, pid, "READY=1", 10*time.Second); !strings.Contains(msg, "STATUS=0 sessions, 0 tunnels, 0 connections") {
		t.Errorf("tunneld READY message %q lacks its status", msg)
	}
	// Watchdog pings every 200 ms: several within a second.
	start := time.Now()
	for range 3 {
		sn.expect(t, pid, "WATCHDOG=1", time.Second)
	}
	t.Logf("tunneld: 3 watchdog pings in %s (WATCHDOG_USEC=400ms)", time.Since(start).Round(time.Millisecond))

	// The embedded defaults make a certificate for this run and log it.
	fp := srv.WaitOutput(t, time.Second, `fingerprint=(sha256:[0-9a-f]{64})`)[1]
	conf := writeFile(t, t.TempDir(), "tunnel.toml", fmt.Sprintf("server = %q\n[tunnels.echo]\nlocal = %q\n[tls]\nfingerprint = %q\n", ctrl, echo.Addr(), fp))
	cn := newNotifySocket(t)
	cmd = exec.Command(filepath.Join(bin, "tunnelc"), "up", "-c", conf)
	cmd.Env = env(cn)
	cl := tt.Start(t, cmd)
	cpid := cl.Cmd.Process.Pid
	cn.expect(t, cpid, "READY=1", 10*time.Second)
	cn.expect(t, cpid, "WATCHDOG=1", time.Second)
	// STATUS= follows the live state on both.
	if msg := cn.expect(t, cpid, "STATUS=connected to "+ctrl, 5*time.Second); !strings.Contains(msg, "1 tunnel, 0 connections") {
		t.Errorf("tunnelc status %q", msg)
	}
	sn.expect(t, pid, "STATUS=1 session, 1 tunnel, 0 connections", 5*time.Second)

	// A reload, asked by SIGHUP, is RELOADING=1 with the monotonic
	// clock, then READY=1 with the status, in that order.
	for _, d := range []struct {
		name string
		n    *notifySocket
		p    *tt.Proc
	}{{"tunneld", sn, srv}, {"tunnelc", cn, cl}} {
		before := monotonicNow(t)
		if err := d.p.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		msg := d.n.expect(t, d.p.Cmd.Process.Pid, "RELOADING=1", 5*time.Second)
		m := regexp.MustCompile(`\nMONOTONIC_USEC=(\d+)$`).FindStringSubmatch(msg)
		if m == nil {
			t.Fatalf("%s: %q lacks MONOTONIC_USEC", d.name, msg)
		}
		if us, _ := strconv.ParseInt(m[1], 10, 64); us < before || us > monotonicNow(t) {
			t.Errorf("%s: MONOTONIC_USEC=%d is not the monotonic clock now (%d)", d.name, us, before)
		}
		if ready := d.n.expect(t, d.p.Cmd.Process.Pid, "READY=1", 5*time.Second); !strings.Contains(ready, "\nSTATUS=") {
			t.Errorf("%s: READY after the reload without a status: %q", d.name, ready)
		}
		d.p.WaitOutput(t, 5*time.Second, `msg="config reloaded"`)
	}

	if err := cl.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	cn.expect(t, cpid, "STOPPING=1", 5*time.Second)
	if code := cl.Wait(t, 5*time.Second); code != 0 {
		t.Errorf("tunnelc exit %d", code)
	}
	if err := srv.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sn.expect(t, pid, "STOPPING=1", 5*time.Second)
	if code := srv.Wait(t, 5*time.Second); code != 0 {
		t.Errorf("tunneld exit %d", code)
	}
}

// monotonicNow is CLOCK_MONOTONIC in microseconds.
func monotonicNow(t *testing.T) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Sec*1_000_000 + int64(ts.Nsec)/1000
}
