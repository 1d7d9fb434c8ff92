// Command demo shows a request going through the tunnel on one machine: it
// starts a small HTTP service, tunneld with its embedded defaults, and
// tunnelc, sends a request to the public port, prints the reply, and stops
// everything it started. `make demo` runs it after building the binaries.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding tunneld and tunnelc")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	dir, err := os.MkdirTemp("", "tunnel-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// 1. The local service: the thing behind NAT we want to reach.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	web := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the local service at %s: you asked for %s %s (via %s)\n",
			ln.Addr(), r.Method, r.URL.Path, r.RemoteAddr)
	}), ReadHeaderTimeout: 5 * time.Second}
	go web.Serve(ln)
	defer web.Close()
	step("local service listening on %s", ln.Addr())

	// 2. tunneld with its embedded defaults, on loopback only. No token is
	// configured, so it generates one and prints it.
	ctrl, err := freeAddr()
	if err != nil {
		return err
	}
	srv := start(ctx, "tunneld", filepath.Join(bin, "tunneld"), nil,
		"serve", "--listen", ctrl, "--bind-addr", "127.0.0.1")
	defer srv.stop()
	token, err := srv.wait(ctx, regexp.MustCompile(`token: (\S+)`))
	if err != nil {
		return err
	}
	// No state_dir either: the TLS certificate is made for this run, and
	// the client pins the fingerprint tunneld printed.
	fingerprint, err := srv.wait(ctx, regexp.MustCompile(`fingerprint = "(sha256:[0-9a-f]+)"`))
	if err != nil {
		return err
	}
	step("tunneld listening for sessions on %s, generated token %s…, TLS certificate %s…", ctrl, token[:8], fingerprint[:19])

	// 3. tunnelc with a one-tunnel config; the server picks the public port.
	conf := filepath.Join(dir, "tunnel.toml")
	content := fmt.Sprintf(`server = %q
name = "demo"

[tunnels.web]
local = %q
remote_port = 0

[tls]
fingerprint = %q
`, ctrl, ln.Addr().String(), fingerprint)
	if err := os.WriteFile(conf, []byte(content), 0o600); err != nil {
		return err
	}
	step("tunnel.toml (token passed in TUNNEL_TOKEN):\n%s", indent(content))
	cl := start(ctx, "tunnelc", filepath.Join(bin, "tunnelc"), []string{"TUNNEL_TOKEN=" + token}, "up", "-c", conf)
	defer cl.stop()
	public, err := cl.wait(ctx, regexp.MustCompile(`"tunnel ready".* public=(\S+)`))
	if err != nil {
		return err
	}
	step("tunnel up: public address %s", public)

	// 4. A request from "the public" to the server's public port.
	url := "http://" + public + "/hello"
	step("GET %s", url)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Close = true // one request; the connection ends with it
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("request through the tunnel: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	step("reply through the tunnel: %s\n\n    %s", resp.Status, strings.TrimSpace(string(body)))

	// 5. Stop everything, the way systemd would.
	time.Sleep(100 * time.Millisecond) // let the closed connection's log lines land first
	if err := cl.stop(); err != nil {
		return err
	}
	if err := srv.stop(); err != nil {
		return err
	}
	step("stopped tunnelc and tunneld (SIGTERM, both exited 0); demo done")
	return nil
}

func step(f string, a ...any) { fmt.Printf("\n==> "+f+"\n", a...) }

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// proc is a daemon whose log lines are echoed with a prefix and searched.
type proc struct {
	name  string
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	news  chan struct{}
	done  chan struct{}
	err   error
	once  sync.Once
}

func start(ctx context.Context, name, path string, env []string, args ...string) *proc {
	p := &proc{name: name, cmd: exec.Command(path, args...), news: make(chan struct{}, 1), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.SysProcAttr = dieWithParent()
	out, err := p.cmd.StderrPipe()
	if err != nil {
		p.err = err
		close(p.done)
		return p
	}
	p.cmd.Stdout = os.Stdout
	fmt.Printf("\n==> starting %s %s\n", path, strings.Join(args, " "))
	if err := p.cmd.Start(); err != nil {
		p.err = err
		close(p.done)
		return p
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			fmt.Printf("    [%s] %s\n", name, line)
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
			select {
			case p.news <- struct{}{}:
			default:
			}
		}
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p
}

// wait returns the first submatch of re in the process's output.
func (p *proc) wait(ctx context.Context, re *regexp.Regexp) (string, error) {
	seen := 0
	for {
		p.mu.Lock()
		for ; seen < len(p.lines); seen++ {
			if m := re.FindStringSubmatch(p.lines[seen]); m != nil {
				p.mu.Unlock()
				return m[1], nil
			}
		}
		p.mu.Unlock()
		select {
		case <-p.news:
		case <-p.done:
			return "", fmt.Errorf("%s exited before printing %q: %v", p.name, re, p.err)
		case <-ctx.Done():
			return "", fmt.Errorf("%s did not print %q: %w", p.name, re, ctx.Err())
		}
	}
}

// stop sends SIGTERM, waits up to 5 s, and reports a non-zero exit.
func (p *proc) stop() error {
	var err error
	p.once.Do(func() {
		if p.cmd.Process == nil {
			err = p.err
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
			err = fmt.Errorf("%s did not stop within 5s of SIGTERM", p.name)
			return
		}
		var ee *exec.ExitError
		if errors.As(p.err, &ee) {
			err = fmt.Errorf("%s exited %d", p.name, ee.ExitCode())
		}
	})
	return err
}
