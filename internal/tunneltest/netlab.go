//go:build linux

package tunneltest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A Lab is a small network of hosts in network namespaces that the test
// creates and removes itself: every host hangs off one router namespace on
// its own veth link, 198.18.N.2/24 with the router at 198.18.N.1 (RFC 2544
// benchmarking space, never routed). A link between two hosts can be cut
// silently — packets vanish, sockets stay open — with a blackhole policy
// rule in the router, which needs nothing beyond iproute2.
type Lab struct {
	t      testing.TB
	prefix string
	router string
	hosts  []*Host
}

// Host is one namespace of a Lab.
type Host struct {
	Name string // as given to NewLab
	NS   string // namespace name, for `ip netns exec`
	IP   string // its address
	lab  *Lab
	rif  string // router-side interface of its link
}

// nsPrefix marks our namespaces; the owner's PID follows, so a sweeper can
// remove the namespaces of a test binary that died before its cleanups ran
// (go test -timeout panics without running them).
const nsPrefix = "tnl"

// RequireLab fails (CI=true) or skips the test unless it can build a Lab:
// root, and `ip` from iproute2.
func RequireLab(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		missing = append(missing, "the ip command (apt-get install iproute2)")
	}
	if len(missing) == 0 {
		return
	}
	msg := "fault test prerequisites missing: " + strings.Join(missing, ", ")
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: this is a failure, not a skip)")
	}
	t.Skip(msg)
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// NewLab creates a router and one host per name. Everything is removed at
// cleanup.
func NewLab(t testing.TB, names ...string) *Lab {
	t.Helper()
	RequireLab(t)
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	l := &Lab{t: t, prefix: fmt.Sprintf("%s%xx%s", nsPrefix, os.Getpid(), hex.EncodeToString(rnd[:]))}
	l.router = l.prefix + "-r"
	t.Cleanup(l.remove)
	must := func(args ...string) {
		t.Helper()
		if err := run(args...); err != nil {
			t.Fatal(err)
		}
	}
	must("ip", "netns", "add", l.router)
	must("ip", "-n", l.router, "link", "set", "lo", "up")
	must("ip", "netns", "exec", l.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	for i, name := range names {
		n := i + 1
		h := &Host{Name: name, NS: fmt.Sprintf("%s-%d", l.prefix, n), IP: fmt.Sprintf("198.18.%d.2", n), lab: l, rif: fmt.Sprintf("h%d", n)}
		l.hosts = append(l.hosts, h)
		gw := fmt.Sprintf("198.18.%d.1", n)
		must("ip", "netns", "add", h.NS)
		must("ip", "-n", h.NS, "link", "set", "lo", "up")
		must("ip", "-n", l.router, "link", "add", h.rif, "type", "veth", "peer", "name", "eth0", "netns", h.NS)
		must("ip", "-n", l.router, "addr", "add", gw+"/24", "dev", h.rif)
		must("ip", "-n", l.router, "link", "set", h.rif, "up")
		must("ip", "-n", h.NS, "addr", "add", h.IP+"/24", "dev", "eth0")
		must("ip", "-n", h.NS, "link", "set", "eth0", "up")
		must("ip", "-n", h.NS, "route", "add", "default", "via", gw)
	}
	return l
}

func (l *Lab) remove() {
	for _, h := range l.hosts {
		_ = run("ip", "netns", "del", h.NS)
	}
	_ = run("ip", "netns", "del", l.router)
}

// Host returns the host called name.
func (l *Lab) Host(name string) *Host {
	for _, h := range l.hosts {
		if h.Name == name {
			return h
		}
	}
	l.t.Fatalf("no host %q in the lab", name)
	return nil
}

// Addr is h's address with a port.
func (h *Host) Addr(port int) string { return net.JoinHostPort(h.IP, strconv.Itoa(port)) }

// Cut black-holes all packets between a and b in both directions; their
// sockets are not told. Heal undoes it.
//
// Both directions go in one ip invocation: as two, on a loaded machine
// the second could land a second after the first, and one side would
// hear the other for that long after the cut, which a test timing
// detection from the cut would charge to the daemon.
func (l *Lab) Cut(a, b *Host) {
	l.t.Helper()
	l.rules("add", a, b)
}

// Heal removes the black hole Cut put between a and b, both directions at
// once.
func (l *Lab) Heal(a, b *Host) {
	l.t.Helper()
	l.rules("del", a, b)
}

func (l *Lab) rules(op string, a, b *Host) {
	l.t.Helper()
	batch := fmt.Sprintf("rule %s from %s to %s blackhole\nrule %s from %s to %s blackhole\n", op, a.IP, b.IP, op, b.IP, a.IP)
	cmd := exec.Command("ip", "-n", l.router, "-batch", "-")
	cmd.Stdin = strings.NewReader(batch)
	if out, err := cmd.CombinedOutput(); err != nil {
		l.t.Fatalf("ip -n %s -batch: %s: %v: %s", l.router, strings.TrimSpace(batch), err, bytes.TrimSpace(out))
	}
}

// Renumber moves h to another address on its link (198.18.N.3 for host
// N, then back), as a client whose DHCP lease or mobile network gives it a
// new address: sockets bound to the old one are left with an address
// that no longer exists, and new ones use the new address.
func (l *Lab) Renumber(h *Host) {
	l.t.Helper()
	prefix := h.IP[:strings.LastIndexByte(h.IP, '.')+1]
	next := prefix + "3"
	if strings.HasSuffix(h.IP, ".3") {
		next = prefix + "2"
	}
	for _, args := range [][]string{
		{"ip", "-n", h.NS, "addr", "del", h.IP + "/24", "dev", "eth0"},
		{"ip", "-n", h.NS, "addr", "add", next + "/24", "dev", "eth0"},
		// The default route went with the old address.
		{"ip", "-n", h.NS, "route", "replace", "default", "via", prefix + "1"},
	} {
		if err := run(args...); err != nil {
			l.t.Fatal(err)
		}
	}
	h.IP = next
}

// Shape caps h's link in both directions with a token bucket (rate like
// "20mbit"), to model a slow uplink.
func (l *Lab) Shape(h *Host, rate string) {
	l.t.Helper()
	for _, dev := range [][2]string{{l.router, h.rif}, {h.NS, "eth0"}} {
		if err := run("ip", "netns", "exec", dev[0], "tc", "qdisc", "add", "dev", dev[1], "root", "tbf",
			"rate", rate, "burst", "32kb", "latency", "100ms"); err != nil {
			l.t.Fatal(err)
		}
	}
}

// Command runs bin inside h's namespace, as a user would with ip netns exec.
func (h *Host) Command(bin string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, bin}, args...)...)
}

// inNS runs f on an OS thread switched into namespace ns. Sockets created by
// f stay in ns for life, whichever goroutine uses them later.
func inNS(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), syscall.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(orig.Fd()), syscall.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime discards it with the goroutine.
			errc <- fmt.Errorf("setns back: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a TCP listener on h (port 0 picks one); it is closed at cleanup.
func (h *Host) Listen(t testing.TB, port int) net.Listener {
	return h.listen(t, h.Addr(port))
}

// ListenLoopback opens a TCP listener on 127.0.0.1 inside h, for a
// service only h's own programs reach; it is closed at cleanup.
func (h *Host) ListenLoopback(t testing.TB, port int) net.Listener {
	return h.listen(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
}

func (h *Host) listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := inNS(h.NS, func() (err error) {
		// Keepalive off: the listener under test decides its own liveness,
		// and a helper must not mask a missing keepalive on the far side.
		lc := net.ListenConfig{KeepAlive: -1}
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Dial connects from h to addr, with keepalive off (the test's "public
// client" must not detect anything itself).
func (h *Host) Dial(addr string) (*net.TCPConn, error) {
	var c net.Conn
	err := inNS(h.NS, func() (err error) {
		d := net.Dialer{KeepAlive: -1, Timeout: 5e9}
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// SweepNamespaces removes lab namespaces whose owning test process is gone.
// Call it from TestMain.
func SweepNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, nsPrefix)
		if !ok {
			continue
		}
		pidHex, _, ok := strings.Cut(rest, "x")
		if !ok {
			continue
		}
		pid, err := strconv.ParseInt(pidHex, 16, 32)
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(int(pid), 0); err == syscall.ESRCH {
			_ = run("ip", "netns", "del", name)
		}
	}
}

// TCPStat reads one TcpExt counter of h's namespace (as nstat names
// them, e.g. "ListenOverflows") from /proc/net/netstat.
func (h *Host) TCPStat(name string) (int64, error) {
	out, err := exec.Command("ip", "netns", "exec", h.NS, "cat", "/proc/net/netstat").Output()
	if err != nil {
		return 0, fmt.Errorf("read netstat of %s: %w", h.Name, err)
	}
	lines := strings.Split(string(out), "\n")
	for i := 0; i+1 < len(lines); i++ {
		keys, ok := strings.CutPrefix(lines[i], "TcpExt:")
		vals, ok2 := strings.CutPrefix(lines[i+1], "TcpExt:")
		if !ok || !ok2 {
			continue
		}
		ks, vs := strings.Fields(keys), strings.Fields(vals)
		for j, k := range ks {
			if k == name && j < len(vs) {
				return strconv.ParseInt(vs[j], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("netstat of %s has no TcpExt %s", h.Name, name)
}

// Router runs `ip -n <router> args...`, e.g. to add a blackhole route.
func (l *Lab) Router(args ...string) error {
	return run(append([]string{"ip", "-n", l.router}, args...)...)
}
