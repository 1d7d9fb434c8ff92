package admin_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/config"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// serve starts an endpoint for cfg with a status and an action, and stops
// it when the test ends.
func serve(t *testing.T, cfg config.Admin) *admin.Server {
	t.Helper()
	s := admin.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.Handle("GET /v1/status", func(*http.Request) (any, error) { return map[string]int{"sessions": 3}, nil })
	s.Handle("POST /v1/sessions/{name}/kick", func(r *http.Request) (any, error) {
		var body struct{ Reason string }
		if err := admin.Decode(r, &body); err != nil {
			return nil, err
		}
		if r.PathValue("name") != "alice" {
			return nil, admin.NotFound("no session of client %q", r.PathValue("name"))
		}
		return map[string]string{"kicked": "alice", "reason": body.Reason}, nil
	})
	notReady := errors.New("no session yet")
	s.Probes(func() error { return nil }, func() error { return notReady })
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

func TestSocketIsPrivateAndAnswers(t *testing.T) {
	tt.CheckLeaks(t)
	path := filepath.Join(t.TempDir(), "admin.sock")
	// A stale socket from a daemon that died is replaced.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	cfg := config.Admin{Socket: path}
	serve(t, cfg)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	// A second daemon on the same socket is refused, not allowed to
	// take it from the live one.
	second := admin.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := second.Start(); err == nil || !strings.Contains(err.Error(), "another daemon is serving") {
		t.Errorf("second Start on a live socket: %v", err)
	}

	c := admin.Dial(cfg)
	ctx := context.Background()
	var st map[string]int
	if err := c.Get(ctx, "/v1/status", &st); err != nil || st["sessions"] != 3 {
		t.Fatalf("status %v, %v", st, err)
	}
	var kicked map[string]string
	if err := c.Post(ctx, "/v1/sessions/alice/kick", map[string]string{"reason": "maintenance"}, &kicked); err != nil || kicked["reason"] != "maintenance" {
		t.Fatalf("kick: %v, %v", kicked, err)
	}
	err = c.Post(ctx, "/v1/sessions/bob/kick", nil, nil)
	var ae *admin.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || !strings.Contains(ae.Msg, `no session of client "bob"`) {
		t.Errorf("kick of an unknown client: %v", err)
	}
	// A body past the bound is refused, not read.
	err = c.Post(ctx, "/v1/sessions/alice/kick", map[string]string{"reason": strings.Repeat("x", 100<<10)}, nil)
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
		t.Errorf("huge body: %v", err)
	}
	if err := c.Get(ctx, "/v1/nothing", nil); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("unknown path: %v", err)
	}
}

func TestTokenAndProbes(t *testing.T) {
	tt.CheckLeaks(t)
	port := tt.FreePort(t)
	cfg := config.Admin{Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Token: "9c1e2f7a4b8d0e3c5a6f"}
	serve(t, cfg)
	ctx := context.Background()
	var ae *admin.Error
	for _, tok := range []string{"", "wrong-token-0123456789"} {
		c := admin.Dial(config.Admin{Address: cfg.Address, Token: tok})
		if err := c.Get(ctx, "/v1/status", nil); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
			t.Errorf("token %q: %v, want 401", tok, err)
		}
	}
	if err := admin.Dial(cfg).Get(ctx, "/v1/status", nil); err != nil {
		t.Errorf("right token: %v", err)
	}
	// Probes need no token: load balancers ask them.
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 503} {
		resp, err := http.Get("http://" + cfg.Address + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: %d %q, want %d", path, resp.StatusCode, body, want)
		}
		if want == 503 && !strings.Contains(string(body), "no session yet") {
			t.Errorf("%s says %q, not why", path, body)
		}
	}
}

func TestRefusals(t *testing.T) {
	tt.CheckLeaks(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// Off loopback without a token: refused even if validation was skipped.
	if err := admin.New(config.Admin{Address: "0.0.0.0:0"}, log).Start(); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("public address without a token: %v", err)
	}
	file := filepath.Join(t.TempDir(), "plain")
	os.WriteFile(file, nil, 0o644)
	if err := admin.New(config.Admin{Socket: file}, log).Start(); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("socket path on a regular file: %v", err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("the regular file was removed: %v", err)
	}
	err := admin.Dial(config.Admin{Socket: filepath.Join(t.TempDir(), "none.sock")}).Get(context.Background(), "/v1/status", nil)
	if !errors.Is(err, admin.ErrUnreachable) || !strings.Contains(err.Error(), "is the daemon running") {
		t.Errorf("no daemon: %v", err)
	}
}

// Peers that say nothing, send a huge header, or flood: each is bounded,
// and once they are gone the endpoint's goroutines and heap are back to
// where they were, while it keeps serving.
func TestHostilePeers(t *testing.T) {
	tt.CheckLeaks(t)
	old := admin.SetHeaderTimeout(300 * time.Millisecond)
	defer admin.SetHeaderTimeout(old)
	path := filepath.Join(t.TempDir(), "admin.sock")
	serve(t, config.Admin{Socket: path})
	g0, h0 := tt.Settled()

	// Silent peers are closed after the header timeout.
	var silent []net.Conn
	for range 100 {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	for _, c := range silent {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a silent peer was not closed by the endpoint: %v", err)
		}
		c.Close()
	}
	// A header past the bound is refused, not buffered.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 1<<20))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 1 MiB header: %v %v", resp, err)
	}
	c.Close()
	// A flood of requests.
	api := admin.Dial(config.Admin{Socket: path})
	for range 500 {
		if err := api.Get(context.Background(), "/v1/status", nil); err != nil {
			t.Fatal(err)
		}
	}
	api.Close()
	tt.Eventually(t, 5*time.Second, "goroutines and heap back to their baseline", func() bool {
		g, h := tt.Settled()
		return g <= g0 && h < h0+1<<20
	})
	if err := api.Get(context.Background(), "/v1/status", nil); err != nil {
		t.Fatalf("the endpoint after the peers: %v", err)
	}
}

// Go's profiles: behind the token when on; when off, the path says how to
// turn them on. The heap profile with gc=1 is what a leak hunt reads: the
// live heap after a collection.
func TestProfiles(t *testing.T) {
	tt.CheckLeaks(t)
	ctx := context.Background()
	off := config.Admin{Socket: filepath.Join(t.TempDir(), "off.sock")}
	serve(t, off)
	var ae *admin.Error
	if err := admin.Dial(off).Get(ctx, "/debug/pprof/heap", nil); !errors.As(err, &ae) || ae.Status != http.StatusNotFound || !strings.Contains(ae.Msg, "pprof = true") {
		t.Errorf("profiles while off: %v", err)
	}

	cfg := config.Admin{Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(tt.FreePort(t))), Token: "9c1e2f7a4b8d0e3c5a6f", Pprof: true}
	serve(t, cfg)
	get := func(path, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+cfg.Address+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, _ := get("/debug/pprof/heap?debug=1", ""); code != http.StatusUnauthorized {
		t.Errorf("a profile without the token: %d", code)
	}
	for path, want := range map[string]string{
		"/debug/pprof/":                    "goroutine",
		"/debug/pprof/goroutine?debug=1":   "goroutine profile: total ",
		"/debug/pprof/heap?gc=1&debug=1":   "# HeapAlloc = ",
		"/debug/pprof/profile?seconds=1":   "", // a binary CPU profile
		"/debug/pprof/cmdline":             "admin.test",
		"/debug/pprof/trace?seconds=0.1":   "",
		"/debug/pprof/symbol":              "num_symbols",
		"/debug/pprof/allocs?debug=1":      "heap profile",
		"/debug/pprof/nothing-of-the-kind": "Unknown profile",
	} {
		code, body := get(path, cfg.Token)
		wantCode := http.StatusOK
		if strings.Contains(path, "nothing") {
			wantCode = http.StatusNotFound
		}
		if code != wantCode || !strings.Contains(body, want) || len(body) == 0 {
			t.Errorf("%s: %d, %d bytes, want %d and %q", path, code, len(body), wantCode, want)
		}
	}
}
