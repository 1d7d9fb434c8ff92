//go:build linux

package tunneltest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var build struct {
	once sync.Once
	dir  string
	err  error
}

// Binaries builds tunneld and tunnelc once per test process (with the race
// detector when the tests run with it) and returns the directory holding
// them. Call RemoveBinaries from TestMain.
func Binaries(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		build.dir, build.err = os.MkdirTemp("", "tunnel-bin-")
		if build.err != nil {
			return
		}
		args := []string{"build", "-o", build.dir}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "-ldflags", "-X github.com/tunnel-dev/tunnel/internal/cli.Version=test -X github.com/tunnel-dev/tunnel/internal/cli.Commit="+Commit(),
			"github.com/tunnel-dev/tunnel/cmd/tunneld", "github.com/tunnel-dev/tunnel/cmd/tunnelc")
		cmd := exec.Command("go", args...)
		cmd.Dir = moduleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.dir
}

// Commit is the checkout's commit as the Makefile stamps it (12 hex
// digits), "" outside a git checkout.
func Commit() string {
	cmd := exec.Command("git", "rev-parse", "--short=12", "HEAD")
	cmd.Dir = moduleRoot()
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// RemoveBinaries deletes what Binaries built.
func RemoveBinaries() {
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Proc is a running binary whose stderr is captured.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	out  syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Start runs bin with args. At cleanup the process is killed if still
// running, and its output is logged when the test failed.
func Start(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	name := filepath.Base(cmd.Path)
	if name == "ip" && len(cmd.Args) > 4 && cmd.Args[1] == "netns" {
		name = filepath.Base(cmd.Args[4]) // ip netns exec NS bin ...
	}
	p := &Proc{Name: name, Cmd: cmd, done: make(chan struct{})}
	cmd.Stdout = &p.out
	cmd.Stderr = &p.out
	// A test binary killed by its timeout must not leave daemons behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if raceEnabled {
		// The race runtime sleeps 1 s at exit by default, which would hide
		// how fast a daemon really stops.
		if cmd.Env == nil {
			cmd.Env = os.Environ()
		}
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=0")
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.Name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if strings.Contains(p.Output(), "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race", p.Name)
		}
		CheckSecrets(t, "the output of "+p.Name, p.Output())
		if t.Failed() {
			t.Logf("--- output of %s:\n%s", p.Name, p.Output())
		}
	})
	return p
}

// Output is everything the process wrote so far.
func (p *Proc) Output() string { return p.out.String() }

// WaitOutput waits until a line of the output matches re and returns the
// submatches.
func (p *Proc) WaitOutput(t testing.TB, timeout time.Duration, re string) []string {
	t.Helper()
	return p.WaitLine(t, 0, timeout, re).Match
}

// Signal sends sig and waits up to timeout for the exit; it returns the
// exit code.
func (p *Proc) Signal(t testing.TB, sig os.Signal, timeout time.Duration) int {
	t.Helper()
	if err := p.Cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s: %v", p.Name, err)
	}
	return p.Wait(t, timeout)
}

// Wait waits up to timeout for the exit and returns the exit code.
func (p *Proc) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s still running after %s", p.Name, timeout)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("%s: %v", p.Name, p.err)
	}
	return 0
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Mark is the current length of the output, to wait for lines after it.
func (p *Proc) Mark() int { return len(p.Output()) }

// Line is one matched log line.
type Line struct {
	Text  string
	At    time.Time // the line's time= field; when it was seen if absent
	Match []string
}

var logTime = regexp.MustCompile(`(?:^|\s)time=(\S+)`)

// WaitLine waits for a line after mark that matches re.
func (p *Proc) WaitLine(t testing.TB, mark int, timeout time.Duration, re string) Line {
	t.Helper()
	l, ok := p.waitLine(mark, timeout, re)
	if !ok {
		t.Fatalf("%s did not log %q within %s", p.Name, re, timeout)
	}
	return l
}

// NoLine fails if a line after mark matches re within d.
func (p *Proc) NoLine(t testing.TB, mark int, d time.Duration, re string) {
	t.Helper()
	if l, ok := p.waitLine(mark, d, re); ok {
		t.Fatalf("%s logged %q: %s", p.Name, re, l.Text)
	}
}

func (p *Proc) waitLine(mark int, timeout time.Duration, re string) (Line, bool) {
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(timeout)
	for {
		out := p.Output()
		if mark > len(out) {
			mark = len(out)
		}
		for _, line := range strings.Split(out[mark:], "\n") {
			if m := rx.FindStringSubmatch(line); m != nil {
				at := time.Now()
				if tm := logTime.FindStringSubmatch(line); tm != nil {
					if v, err := time.Parse(time.RFC3339Nano, tm[1]); err == nil {
						at = v
					}
				}
				return Line{Text: line, At: at, Match: m}, true
			}
		}
		if time.Now().After(deadline) {
			return Line{}, false
		}
		select {
		case <-p.done:
			if time.Now().After(deadline) {
				return Line{}, false
			}
			time.Sleep(20 * time.Millisecond)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Status asks p for its status line (SIGUSR1) and returns its key=value
// pairs.
func (p *Proc) Status(t testing.TB) map[string]string {
	t.Helper()
	mark := p.Mark()
	if err := p.Cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	l := p.WaitLine(t, mark, 5*time.Second, `msg=status`)
	kv := map[string]string{}
	for _, f := range strings.Fields(l.Text) {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		}
	}
	return kv
}

// Mem is a size the kernel keeps for the process, in bytes: field is a
// line of /proc/PID/status such as "VmRSS" (resident now) or "VmHWM"
// (the peak).
func (p *Proc) Mem(t testing.TB, field string) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("/proc status %s: %v", field, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc status", field)
	return 0
}

// CPUTime is the user and system CPU time the process has used so far.
func (p *Proc) CPUTime(t testing.TB) time.Duration {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name may hold spaces; the fields after it are fixed.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / hz
}
