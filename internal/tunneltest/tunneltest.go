//go:build linux

package tunneltest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// CheckLeaks fails t if, once every cleanup registered after it has run,
// the process has more goroutines or open file descriptors than now. Call
// it first in a test that must not leak; such a test must not be parallel.
func CheckLeaks(t testing.TB) {
	t.Helper()
	// Start the network poller first: its descriptors stay for the process.
	if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		l.Close()
	}
	g0, fd0 := runtime.NumGoroutine(), countFDs()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			g, fd := runtime.NumGoroutine(), countFDs()
			if g <= g0 && fd <= fd0 {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("leak: goroutines %d -> %d, fds %d -> %d\nfds: %s\n%s", g0, g, fd0, fd, describeFDs(), buf)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func describeFDs() string {
	es, _ := os.ReadDir("/proc/self/fd")
	var b strings.Builder
	for _, e := range es {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		fmt.Fprintf(&b, "%s=%s ", e.Name(), l)
	}
	return b.String()
}

func countFDs() int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(es)
}

// Eventually polls cond until it holds or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WaitBlocked waits until a goroutine of this process is parked in the
// runtime's poller (a read or write waiting on its socket) with every one
// of funcs in its stack: a test's own writer blocked because every buffer
// on the way is full, say.
func WaitBlocked(t testing.TB, timeout time.Duration, funcs ...string) {
	t.Helper()
	buf := make([]byte, 8<<20)
	Eventually(t, timeout, fmt.Sprintf("a goroutine blocked in %q", funcs), func() bool {
	next:
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if !strings.Contains(g, "[IO wait") {
				continue
			}
			for _, f := range funcs {
				if !strings.Contains(g, f) {
					continue next
				}
			}
			return true
		}
		return false
	})
}

// Echo is a TCP echo service on 127.0.0.1 that honours half-close: on EOF
// it finishes writing what it read, then closes its write side.
type Echo = Service

// NewEcho starts an echo service; it stops at test cleanup.
func NewEcho(t testing.TB) *Echo { return NewService(t, echo) }

// NewEchoOn serves echo on ln (e.g. a listener in a lab namespace); it
// stops at test cleanup.
func NewEchoOn(t testing.TB, ln net.Listener) *Echo { return NewServiceOn(t, ln, echo) }

func echo(c *net.TCPConn, _ <-chan struct{}) {
	// Plain copying: Go's splice path would pool pipes that outlive the
	// connection and look like leaked descriptors.
	_, err := io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 32<<10))
	if err == nil {
		_ = c.CloseWrite()
		// Wait for the peer to finish before closing, so the last bytes
		// are never cut by a reset.
		_, _ = io.Copy(io.Discard, c)
	}
}

// Logs is a slog sink that writes every line to t.Log and keeps them to be
// searched. Lines after the test ended are kept but not passed to t.Log.
type Logs struct {
	t    testing.TB
	mu   sync.Mutex
	buf  bytes.Buffer
	done bool
}

// secrets are strings no log line may hold: the harness token, and what
// tests register with Secret.
var secrets = struct {
	sync.Mutex
	list []string
}{list: []string{Token}}

// Secret registers s as a credential: a test whose harness logs or
// daemons' output contain it fails. It returns s.
func Secret(s string) string {
	secrets.Lock()
	defer secrets.Unlock()
	if !slices.Contains(secrets.list, s) { // tests run again with -count
		secrets.list = append(secrets.list, s)
	}
	return s
}

// CheckSecrets fails t if text, the output of what, holds a registered
// secret.
func CheckSecrets(t testing.TB, what, text string) {
	t.Helper()
	secrets.Lock()
	defer secrets.Unlock()
	for _, s := range secrets.list {
		for _, line := range strings.Split(text, "\n") {
			if strings.Contains(line, s) {
				t.Errorf("a credential appears in %s: %s", what, line)
			}
		}
	}
}

// NewLogs returns a sink and a logger writing to it at debug level. At
// the test's end its lines are checked for credentials (CheckSecrets).
func NewLogs(t testing.TB) (*Logs, *slog.Logger) {
	l := &Logs{t: t}
	t.Cleanup(func() {
		l.mu.Lock()
		l.done = true
		text := l.buf.String()
		l.mu.Unlock()
		CheckSecrets(t, "the logs", text)
	})
	return l, slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Len is how many bytes of log the sink holds: memory the test process
// keeps for the test, which a heap measurement may need to discount.
func (l *Logs) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Cap()
}

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if !l.done {
		l.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// String is every line so far.
func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Contains reports whether any line so far contains every one of parts.
func (l *Logs) Contains(parts ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(l.buf.String(), "\n") {
		ok := true
		for _, p := range parts {
			if !strings.Contains(line, p) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// WaitFor waits until a line contains every one of parts.
func (l *Logs) WaitFor(t testing.TB, timeout time.Duration, parts ...string) {
	t.Helper()
	Eventually(t, timeout, fmt.Sprintf("a log line with %q", parts), func() bool { return l.Contains(parts...) })
}

// RoundTrip sends n random bytes over c while reading the echo, half-closes,
// and checks that exactly the same bytes (by sha256) came back before EOF.
func RoundTrip(c net.Conn, n int64) error {
	sent := sha256.New()
	got := sha256.New()
	errc := make(chan error, 1)
	var received int64
	go func() {
		var err error
		received, err = io.Copy(got, c)
		errc <- err
	}()
	if _, err := io.CopyN(io.MultiWriter(c, sent), rand.Reader, n); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		return fmt.Errorf("close write: %w", err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("receive after %d bytes: %w", received, err)
	}
	if received != n {
		return fmt.Errorf("received %d bytes, sent %d", received, n)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return errors.New("sha256 of the echo differs from what was sent")
	}
	return nil
}

// Ping writes a short message on c and expects it echoed back within d.
func Ping(c net.Conn, msg string, d time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// Dial connects to addr on 127.0.0.1 with a short timeout.
func Dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// DialEnded dials addr, a public address whose connections the far side
// is expected to end at once (its tunnel could not reach the local
// service), and returns how the connection ended: the first read's
// error, or connect's own when the reset came before connect's completion
// check (the kernel takes it while the dialing goroutine waits to be
// scheduled, which a loaded machine makes likely). Data, or no end within
// 5 s, fails the test.
func DialEnded(t testing.TB, addr string) error {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("dial %s: %v", addr, err)
		}
		return err
	}
	defer c.Close()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(5 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err == nil {
		t.Fatalf("%s answered: %d bytes, %v", addr, n, err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: connection still open after %s", addr, time.Since(start).Round(time.Millisecond))
	}
	return err
}

// Settled is the process's goroutine count and live heap after a
// collection: what a test compares against a baseline taken the same way.
func Settled() (goroutines int, heap uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), ms.HeapAlloc
}
