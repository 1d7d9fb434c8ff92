package e2e

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/tunnel-dev/tunnel/internal/config"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// webService is a local HTTP service that says who it is and what it got.
func webService(t *testing.T, name string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			h := sha256.New()
			n, _ := io.Copy(h, r.Body)
			fmt.Fprintf(w, "%s %d %x", name, n, h.Sum(nil))
			return
		case "/download":
			var n int64
			fmt.Sscan(r.URL.Query().Get("n"), &n)
			w.Header().Set("Content-Length", fmt.Sprint(n))
			io.CopyN(w, zeroes{}, n)
			return
		}
		fmt.Fprintf(w, "%s host=%s path=%s xff=%s proto=%s fwdhost=%s fwd=%s", name, r.Host, r.URL.Path,
			r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host"), r.Header.Get("Forwarded"))
	}))
	t.Cleanup(srv.Close)
	return srv
}

type zeroes struct{}

func (zeroes) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func webServer(t *testing.T, edit func(*config.Server)) *tt.Server {
	return tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.Web.HTTPAddr = "127.0.0.1:0"
		c.Web.Domains = []string{"tunnel.test"}
		if edit != nil {
			edit(c)
		}
	}))
}

// get sends one request to the shared port with Host host over c, or a
// new connection when c is nil, and returns the response.
func get(t *testing.T, client *http.Client, port, host, path string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://127.0.0.1:"+port+path, nil)
	req.Host = host
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s%s: %v", host, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Two http tunnels of two clients on one shared port, chosen by Host
// (any case, with a port), with the forwarded headers, Host rewritten
// for one, path routing, keep-alive on one connection, and the pages
// for an unknown name, a missing Host, and a tunnel gone offline.
func TestHTTPTunnelsShareAPort(t *testing.T) {
	tt.CheckLeaks(t)
	a, b, api := webService(t, "alpha"), webService(t, "beta"), webService(t, "api")
	srv := webServer(t, nil)
	_, port, _ := net.SplitHostPort(srv.HTTPAddr().String())
	ca := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"web": {Type: "http", Local: strings.TrimPrefix(a.URL, "http://"), Subdomain: "alpha"},
		"api": {Type: "http", Local: strings.TrimPrefix(api.URL, "http://"), Hostnames: []string{"alpha.tunnel.test"}, Locations: []string{"/api"}},
	}, func(c *config.Client) { c.Name = "client-a" }))
	cb := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"web": {Type: "http", Local: strings.TrimPrefix(b.URL, "http://"), Hostnames: []string{"beta.tunnel.test"}, HostHeader: "localhost:9"},
	}, func(c *config.Client) { c.Name = "client-b" }))
	pubA := ca.WaitUp(t, 5*time.Second)
	cb.WaitUp(t, 5*time.Second)
	if want := "http://alpha.tunnel.test:" + port; pubA["web"] != want {
		t.Errorf("public address %q, want %q", pubA["web"], want)
	}
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	defer client.CloseIdleConnections()

	code, body := get(t, client, port, "ALPHA.tunnel.test:"+port, "/x")
	if code != 200 || !strings.HasPrefix(body, "alpha host=ALPHA.tunnel.test:"+port+" path=/x xff=127.0.0.1 proto=http fwdhost=ALPHA.tunnel.test:"+port) ||
		!strings.Contains(body, `fwd=for=127.0.0.1;host="ALPHA.tunnel.test:`+port+`";proto=http`) {
		t.Errorf("alpha: %d %q", code, body)
	}
	if code, body := get(t, client, port, "alpha.tunnel.test", "/api/v1"); code != 200 || !strings.HasPrefix(body, "api ") {
		t.Errorf("alpha /api: %d %q", code, body)
	}
	if code, body := get(t, client, port, "beta.tunnel.test", "/y"); code != 200 || !strings.HasPrefix(body, "beta host=localhost:9 path=/y") {
		t.Errorf("beta: %d %q", code, body)
	}
	// Keep-alive: many requests on one connection reach the same tunnel.
	for i := range 20 {
		if code, body := get(t, client, port, "beta.tunnel.test", fmt.Sprintf("/k%d", i)); code != 200 || !strings.Contains(body, fmt.Sprintf("path=/k%d", i)) {
			t.Fatalf("keep-alive request %d: %d %q", i, code, body)
		}
	}
	if code, body := get(t, client, port, "nobody.tunnel.test", "/"); code != 404 || !strings.Contains(body, "No tunnel serves this name") {
		t.Errorf("unknown name: %d %q", code, body)
	}
	// No Host at all: HTTP/1.0 without one.
	c := tt.Dial(t, srv.HTTPAddr().String())
	fmt.Fprint(c, "GET / HTTP/1.0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 400 {
		t.Errorf("no Host: %v %v", resp, err)
	}
	// The tunnel's client goes: the name is offline now.
	cb.Stop(t)
	client.CloseIdleConnections()
	tt.Eventually(t, 5*time.Second, "beta offline", func() bool {
		code, _ := get(t, client, port, "beta.tunnel.test", "/")
		return code == 502
	})
}

// A later request on a kept-alive connection that names another tunnel
// never reaches the first one: once the first has answered what came
// before, the connection is routed afresh, to the other tunnel, or to a
// 404 for a name nobody serves.
func TestHTTPRequestForAnotherTunnel(t *testing.T) {
	tt.CheckLeaks(t)
	a, b := webService(t, "alpha"), webService(t, "beta")
	srv := webServer(t, nil)
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"a": {Type: "http", Local: strings.TrimPrefix(a.URL, "http://"), Subdomain: "alpha"},
		"b": {Type: "http", Local: strings.TrimPrefix(b.URL, "http://"), Subdomain: "beta"},
	}, nil))
	cl.WaitUp(t, 5*time.Second)
	c := tt.Dial(t, srv.HTTPAddr().String())
	// Pipelined: the second names the other tunnel, the third nobody's.
	fmt.Fprint(c, "GET /one HTTP/1.1\r\nHost: alpha.tunnel.test\r\n\r\nGET /two HTTP/1.1\r\nHost: beta.tunnel.test\r\n\r\n"+
		"GET /three HTTP/1.1\r\nHost: beta.tunnel.test\r\n\r\nGET /four HTTP/1.1\r\nHost: gamma.tunnel.test\r\n\r\n")
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	r1, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b1, _ := io.ReadAll(r1.Body)
	if !strings.HasPrefix(string(b1), "alpha host=alpha.tunnel.test path=/one") {
		t.Errorf("first answer %q", b1)
	}
	for _, want := range []string{"beta host=beta.tunnel.test path=/two", "beta host=beta.tunnel.test path=/three"} {
		r, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		if !strings.HasPrefix(string(b), want) {
			t.Errorf("answer %q, want %q", b, want)
		}
	}
	r4, err := http.ReadResponse(br, nil)
	if err != nil || r4.StatusCode != http.StatusNotFound {
		t.Fatalf("fourth answer: %v %v, want 404", r4, err)
	}
	io.ReadAll(r4.Body)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the 404: %v, want the connection closed", err)
	}
}

// Basic auth in front of a tunnel; 256 MiB up and down, hashed.
func TestHTTPAuthAndBulk(t *testing.T) {
	tt.CheckLeaks(t)
	svc := webService(t, "bulk")
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	srv := webServer(t, nil)
	_, port, _ := net.SplitHostPort(srv.HTTPAddr().String())
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"b": {Type: "http", Local: strings.TrimPrefix(svc.URL, "http://"), Subdomain: "bulk", BasicAuth: []string{"ann:" + string(hash)}},
	}, nil))
	cl.WaitUp(t, 5*time.Second)
	client := &http.Client{}
	defer client.CloseIdleConnections()
	if code, body := get(t, client, port, "bulk.tunnel.test", "/"); code != 401 || !strings.Contains(body, "needs a user name") {
		t.Errorf("without credentials: %d %q", code, body)
	}
	auth := func(r *http.Request) { r.Host = "bulk.tunnel.test"; r.SetBasicAuth("ann", "s3cret") }
	bad, _ := http.NewRequest("GET", "http://127.0.0.1:"+port+"/", nil)
	bad.Host = "bulk.tunnel.test"
	bad.SetBasicAuth("ann", "wrong")
	if resp, err := client.Do(bad); err != nil || resp.StatusCode != 401 {
		t.Errorf("wrong password: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	const size = 256 << 20
	up := io.LimitReader(rand.Reader, size)
	h := sha256.New()
	req, _ := http.NewRequest("POST", "http://127.0.0.1:"+port+"/upload", io.TeeReader(up, h))
	auth(req)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("bulk %d %x", size, h.Sum(nil)); string(body) != want {
		t.Errorf("upload: %q, want %q", body, want)
	}
	req, _ = http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%s/download?n=%d", port, size), nil)
	auth(req)
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got := sha256.New()
	n, err := io.Copy(got, resp.Body)
	resp.Body.Close()
	zh := sha256.New()
	io.CopyN(zh, zeroes{}, size)
	if err != nil || n != size || string(got.Sum(nil)) != string(zh.Sum(nil)) {
		t.Errorf("download: %d bytes, %v", n, err)
	}
}
