package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze not found: CI must install systemd (see .ci/run)")
		}
		t.Skip("systemd-analyze not installed")
	}
	bin := tt.Binaries(t)
	dir := t.TempDir()
	for _, name := range []string{"tunneld", "tunnelc"} {
		data, err := os.ReadFile(filepath.Join("..", "..", "configs", name+".service"))
		if err != nil {
			t.Fatal(err)
		}
		// verify needs ExecStart to exist: point it at the built binary.
		unit := strings.ReplaceAll(string(data), "/usr/local/bin/", bin+"/")
		p := filepath.Join(dir, name+".service")
		if err := os.WriteFile(p, []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "verify", "--man=no", p).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("systemd-analyze verify %s.service: %v\n%s", name, err, out)
		}
	}
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
	if msg := sn.expect(t, pid, "READY=1", 10*time.Second); !strings.Contains(msg, "STATUS=listening on "+ctrl) {
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
