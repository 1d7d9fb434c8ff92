//go:build linux

package tunneltest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Socket is one TCP socket of a process as the kernel sees it.
type Socket struct {
	FD          int
	Local, Peer netip.AddrPort // Peer is zero for a listener
	KeepAlive   bool
	Idle        time.Duration
	Interval    time.Duration
	Count       int
	UserTimeout time.Duration
}

func (s Socket) String() string {
	return fmt.Sprintf("fd %d %s->%s keepalive=%v idle=%s intvl=%s cnt=%d user_timeout=%s",
		s.FD, s.Local, s.Peer, s.KeepAlive, s.Idle, s.Interval, s.Count, s.UserTimeout)
}

// Sockets lists the IPv4 TCP sockets of process pid (0 = this process) and
// reads their liveness options with getsockopt, so a test checks what the
// kernel applies rather than what a config struct says. Another process's
// sockets are borrowed with pidfd_getfd, which needs ptrace rights over it
// (a parent running as root, or as the same user, has them here).
func Sockets(pid int) ([]Socket, error) {
	dir := "/proc/self/fd"
	pidfd := -1
	if pid != 0 {
		dir = fmt.Sprintf("/proc/%d/fd", pid)
		var err error
		if pidfd, err = unix.PidfdOpen(pid, 0); err != nil {
			return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
		}
		defer unix.Close(pidfd)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Socket
	for _, e := range ents {
		target, err := os.Readlink(dir + "/" + e.Name())
		if err != nil || !strings.HasPrefix(target, "socket:") {
			continue
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd := n
		if pidfd >= 0 {
			if fd, err = unix.PidfdGetfd(pidfd, n, 0); err != nil {
				return nil, fmt.Errorf("pidfd_getfd %d/%d: %w", pid, n, err)
			}
		}
		s, ok := inspect(fd)
		if pidfd >= 0 {
			unix.Close(fd)
		}
		if ok {
			s.FD = n
			out = append(out, s)
		}
	}
	return out, nil
}

func inspect(fd int) (Socket, bool) {
	var s Socket
	if t, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || t != unix.SOCK_STREAM {
		return s, false
	}
	sa, err := unix.Getsockname(fd)
	in4, ok := sa.(*unix.SockaddrInet4)
	if err != nil || !ok {
		return s, false
	}
	s.Local = netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port))
	if sa, err := unix.Getpeername(fd); err == nil {
		if p, ok := sa.(*unix.SockaddrInet4); ok {
			s.Peer = netip.AddrPortFrom(netip.AddrFrom4(p.Addr), uint16(p.Port))
		}
	}
	get := func(level, opt int) int { v, _ := unix.GetsockoptInt(fd, level, opt); return v }
	s.KeepAlive = get(unix.SOL_SOCKET, unix.SO_KEEPALIVE) != 0
	s.Idle = time.Duration(get(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)) * time.Second
	s.Interval = time.Duration(get(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)) * time.Second
	s.Count = get(unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
	s.UserTimeout = time.Duration(get(unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)) * time.Millisecond
	return s, true
}

// Find returns the socket with the given local and peer addresses (either may
// be the zero value to match anything).
func Find(socks []Socket, local, peer string) (Socket, error) {
	var l, p netip.AddrPort
	var err error
	if local != "" {
		if l, err = netip.ParseAddrPort(local); err != nil {
			return Socket{}, err
		}
	}
	if peer != "" {
		if p, err = netip.ParseAddrPort(peer); err != nil {
			return Socket{}, err
		}
	}
	var found []Socket
	for _, s := range socks {
		if (local == "" || s.Local == l) && (peer == "" || s.Peer == p) {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		return Socket{}, fmt.Errorf("%d sockets match %s->%s", len(found), local, peer)
	}
	return found[0], nil
}

// TCPClose is the kernel's TCP_CLOSE state, where a socket lands when a
// reset arrives.
const TCPClose = 7

// TCPState is the kernel's TCP state of c (TCP_INFO's tcpi_state), e.g.
// TCPClose once a reset arrived, even for a socket that already read EOF.
func TCPState(c *net.TCPConn) (uint8, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) { info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return info.State, nil
}

// RefusingAddr returns a 127.0.0.1 address where connections are refused
// for the whole test: a socket bound to it that never listens. Binding a
// port and closing it is not enough, because the kernel may hand the
// same port to the next listener the test starts (a "dead" local service
// once turned out to be the tunnel server itself).
func RefusingAddr(t testing.TB) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	// No SO_REUSEADDR: no other socket, listening or not, may share it.
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
}
