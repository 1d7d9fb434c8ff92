package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/crypto/bcrypt"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/server"
	"github.com/tunnel-dev/tunnel/internal/testcert"
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

func webServer(t testing.TB, edit func(*config.Server)) *tt.Server {
	return tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.Web.HTTPAddr = "127.0.0.1:0"
		c.Web.Domains = []string{"tunnel.test"}
		if edit != nil {
			edit(c)
		}
	}))
}

// webCounts reads tunneld's metrics of the shared ports: refused(port,
// reason) is how often a port answered a visitor itself, requests(client,
// tunnel) how many requests a web tunnel passed on (-1: no such series).
// Both count before the visitor sees the answer, so they need no wait.
func webCounts(t *testing.T, srv *tt.Server) (refused func(port, reason string) float64, requests func(client, tunnel string) float64) {
	gather := func() map[string]*dto.MetricFamily {
		t.Helper()
		fs, err := srv.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]*dto.MetricFamily{}
		for _, f := range fs {
			m[f.GetName()] = f
		}
		return m
	}
	refused = func(port, reason string) float64 {
		return value(gather(), "tunneld_web_refused_total", map[string]string{"port": port, "reason": reason})
	}
	requests = func(client, tunnel string) float64 {
		return value(gather(), "tunneld_http_requests_total", map[string]string{"client": client, "tunnel": tunnel})
	}
	return refused, requests
}

func fmtCount(n *uint64) string {
	if n == nil {
		return "none"
	}
	return fmt.Sprint(*n)
}

// tunnelStatus is client's tunnel in tunneld's status.
func tunnelStatus(t *testing.T, srv *tt.Server, client, tunnel string) server.TunnelStatus {
	t.Helper()
	for _, ss := range srv.Status("test").Sessions {
		for _, tn := range ss.Tunnels {
			if ss.Client == client && tn.Name == tunnel {
				return tn
			}
		}
	}
	t.Fatalf("no tunnel %s of %s in the status", tunnel, client)
	return server.TunnelStatus{}
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
	// Counted: each tunnel's requests, and each page tunneld answered.
	refused, requests := webCounts(t, srv)
	for _, w := range []struct {
		client, tunnel string
		n              float64
	}{{"client-a", "web", 1}, {"client-a", "api", 1}, {"client-b", "web", 21}} {
		if got := requests(w.client, w.tunnel); got != w.n {
			t.Errorf("tunneld_http_requests_total of %s/%s = %v, want %v", w.client, w.tunnel, got, w.n)
		}
		if got := tunnelStatus(t, srv, w.client, w.tunnel).Requests; got == nil || float64(*got) != w.n {
			t.Errorf("status requests of %s/%s = %s, want %v", w.client, w.tunnel, fmtCount(got), w.n)
		}
	}
	for reason, n := range map[string]float64{server.WebUnknownHost: 1, server.WebNoHost: 1, server.WebOffline: 0, server.WebAtLimit: 0} {
		if got := refused("http", reason); got != n {
			t.Errorf("tunneld_web_refused_total{port=http,reason=%s} = %v, want %v", reason, got, n)
		}
	}
	// The tunnel's client goes: the name is offline now.
	cb.Stop(t)
	client.CloseIdleConnections()
	tt.Eventually(t, 5*time.Second, "beta offline", func() bool {
		code, _ := get(t, client, port, "beta.tunnel.test", "/")
		return code == 502
	})
	if got := refused("http", server.WebOffline); got < 1 {
		t.Errorf("offline pages counted %v", got)
	}
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
	refused, requests := webCounts(t, srv)
	if u, r := refused("http", server.WebUnauthorized), requests("test-client", "b"); u != 2 || r != 2 {
		t.Errorf("counted %v refused without credentials and %v requests, want 2 and 2", u, r)
	}
}

// tlsService is a local HTTPS service presenting cert.
func tlsService(t *testing.T, name string, cert testcert.Cert) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s over tls, sni=%s", name, r.TLS.ServerName)
	}))
	cfg, _ := cert.Configs(t)
	srv.TLS = cfg
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// Two https tunnels with their own certificates on one shared port,
// chosen by SNI and passed through (the visitor verifies the local
// service's certificate end to end), and a third terminated at the
// server with a wildcard certificate and served as http; a name nobody
// serves, and no name at all, get unrecognized_name.
func TestHTTPSByServerName(t *testing.T) {
	tt.CheckLeaks(t)
	ca, cb := testcert.NewFor(t, "a", "a.tunnel.test"), testcert.NewFor(t, "b", "b.tunnel.test")
	wild := testcert.NewFor(t, "wild", "*.tunnel.test")
	certFile, keyFile := wild.Write(t, t.TempDir(), "wild")
	sa, sb, plain := tlsService(t, "alpha", ca), tlsService(t, "beta", cb), webService(t, "gamma")
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.Web.HTTPSAddr = "127.0.0.1:0"
		c.Web.Domains = []string{"tunnel.test"}
		c.Web.CertFile, c.Web.KeyFile = certFile, keyFile
	}))
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"a": {Type: "https", Local: strings.TrimPrefix(sa.URL, "https://"), Hostnames: []string{"a.tunnel.test"}},
		"b": {Type: "https", Local: strings.TrimPrefix(sb.URL, "https://"), Subdomain: "b"},
		"g": {Type: "https", Local: strings.TrimPrefix(plain.URL, "http://"), Subdomain: "g", TLSTermination: "server"},
	}, nil))
	cl.WaitUp(t, 5*time.Second)
	addr := srv.HTTPSAddr().String()
	pool := x509.NewCertPool()
	for _, c := range []testcert.Cert{ca, cb, wild} {
		x, _ := x509.ParseCertificate(c.DER)
		pool.AddCert(x)
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		}}}
	defer client.CloseIdleConnections()
	for host, want := range map[string]string{"a": "alpha over tls, sni=a.tunnel.test", "b": "beta over tls, sni=b.tunnel.test"} {
		resp, err := client.Get("https://" + host + ".tunnel.test/")
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != want || resp.TLS.PeerCertificates[0].Subject.CommonName != host {
			t.Errorf("%s: %q from %q", host, b, resp.TLS.PeerCertificates[0].Subject.CommonName)
		}
	}
	resp, err := client.Get("https://g.tunnel.test/t")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(b), "gamma host=g.tunnel.test path=/t xff=127.0.0.1 proto=https") || resp.TLS.PeerCertificates[0].Subject.CommonName != "wild" {
		t.Errorf("terminated: %q", b)
	}
	for _, name := range []string{"nobody.tunnel.test", ""} {
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: name, InsecureSkipVerify: true})
		if err == nil {
			c.Close()
			t.Errorf("SNI %q: handshake succeeded", name)
		} else if !strings.Contains(err.Error(), "unrecognized name") {
			t.Errorf("SNI %q: %v, want unrecognized_name", name, err)
		}
	}
	// Requests are counted where tunneld reads them: terminated here,
	// not passed through.
	refused, requests := webCounts(t, srv)
	if got := refused("https", server.WebUnknownName); got != 2 {
		t.Errorf("unknown names counted %v, want 2", got)
	}
	if got := requests("test-client", "g"); got != 1 {
		t.Errorf("requests of the terminated tunnel: %v, want 1", got)
	}
	for _, name := range []string{"a", "b"} {
		if got := requests("test-client", name); got != -1 {
			t.Errorf("a passed-through tunnel has a request count: %v", got)
		}
		if got := tunnelStatus(t, srv, "test-client", name).Requests; got != nil {
			t.Errorf("status of passed-through %s counts requests: %d", name, *got)
		}
	}
}

// Bad input on the shared ports: each is answered or closed promptly,
// and nothing of it reaches a tunnel.
func TestWebBadInput(t *testing.T) {
	tt.CheckLeaks(t)
	a, b := webService(t, "alpha"), webService(t, "beta")
	srv := webServer(t, func(c *config.Server) {
		c.Web.HTTPSAddr = "127.0.0.1:0"
		c.Web.HeaderTimeout = config.Duration(time.Second)
	})
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"a": {Type: "http", Local: strings.TrimPrefix(a.URL, "http://"), Subdomain: "alpha"},
		"b": {Type: "http", Local: strings.TrimPrefix(b.URL, "http://"), Subdomain: "beta"},
	}, nil))
	cl.WaitUp(t, 5*time.Second)
	httpAddr, httpsAddr := srv.HTTPAddr().String(), srv.HTTPSAddr().String()
	closedWithin := func(c net.Conn, d time.Duration) string {
		_ = c.SetReadDeadline(time.Now().Add(d))
		b, err := io.ReadAll(c)
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("connection still open after %s", d)
		}
		return string(b)
	}
	// A 1 MiB header.
	big := tt.Dial(t, httpAddr)
	go fmt.Fprintf(big, "GET / HTTP/1.1\r\nHost: alpha.tunnel.test\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 1<<20))
	if got := closedWithin(big, 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 431") {
		t.Errorf("1 MiB header: %.40q", got)
	}
	// Headers at a byte a tenth of a second: cut at header_timeout.
	slow := tt.Dial(t, httpAddr)
	go func() {
		for _, ch := range []byte("GET / HTTP/1.1\r\nHost: alpha.tunnel.test\r\n") {
			if _, err := slow.Write([]byte{ch}); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	start := time.Now()
	if got := closedWithin(slow, 5*time.Second); got != "" {
		t.Errorf("slow headers answered %.60q, want a close", got) // too slow is no bad request
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("slow headers held the connection %s (header_timeout 1s)", d)
	}
	// The same for a second request on a kept-alive connection.
	kept := tt.Dial(t, httpAddr)
	fmt.Fprint(kept, "GET /one HTTP/1.1\r\nHost: alpha.tunnel.test\r\n\r\n")
	kbr := bufio.NewReader(kept)
	_ = kept.SetReadDeadline(time.Now().Add(5 * time.Second))
	if r, err := http.ReadResponse(kbr, nil); err != nil {
		t.Fatal(err)
	} else {
		io.ReadAll(r.Body)
	}
	go func() {
		for _, ch := range []byte("GET /two HTTP/1.1\r\nHost: alpha.tunnel.test\r\n") {
			if _, err := kept.Write([]byte{ch}); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	start = time.Now()
	_ = kept.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.ReadAll(kbr)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("slow headers of a second request held the connection %s (header_timeout 1s)", d)
	}
	// TLS to the HTTP port, plain HTTP to the HTTPS port, a ClientHello
	// cut in the middle.
	tc, _ := tls.Dial("tcp", httpAddr, &tls.Config{ServerName: "alpha.tunnel.test", InsecureSkipVerify: true})
	if tc != nil {
		tc.Close()
		t.Error("a TLS handshake on the HTTP port succeeded")
	}
	c := tt.Dial(t, httpsAddr)
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: alpha.tunnel.test\r\n\r\n")
	if got := closedWithin(c, 5*time.Second); strings.Contains(got, "alpha") {
		t.Errorf("plain HTTP to the HTTPS port: %q", got)
	}
	c = tt.Dial(t, httpsAddr)
	c.Write([]byte{22, 3, 1, 2, 0, 1, 0, 1, 252, 3, 3}) // a ClientHello's start
	c.CloseWrite()
	closedWithin(c, 5*time.Second)
	// Smuggling: Content-Length and Transfer-Encoding both, and a second
	// request hidden in the body for beta. Each reaches the tunnel its
	// own Host names, or none: never alpha's service as a second request.
	c = tt.Dial(t, httpAddr)
	fmt.Fprint(c, "POST /first HTTP/1.1\r\nHost: alpha.tunnel.test\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: beta.tunnel.test\r\n\r\n")
	c.CloseWrite()
	got := closedWithin(c, 5*time.Second)
	if strings.Contains(got, "alpha host=alpha.tunnel.test path=/smuggled") {
		t.Errorf("the smuggled request reached alpha: %q", got)
	}
	t.Logf("smuggling attempt answered:\n%s", got)
	refused, _ := webCounts(t, srv)
	for _, w := range []struct {
		port, reason string
		min, max     float64
	}{
		{"http", server.WebHeaderTooLarge, 1, 1},
		{"http", server.WebHeaderTimeout, 2, 3}, // the slow headers of a first and a later request; perhaps the ClientHello, which has no line end
		{"http", server.WebNoRequest, 0, 0},
		{"https", server.WebNotTLS, 2, 2}, // plain HTTP, and the ClientHello cut short
		{"https", server.WebUnknownName, 0, 0},
	} {
		if got := refused(w.port, w.reason); got < w.min || got > w.max {
			t.Errorf("tunneld_web_refused_total{port=%s,reason=%s} = %v, want %v to %v", w.port, w.reason, got, w.min, w.max)
		}
	}
}

// A WebSocket echo through an http tunnel: the Upgrade passes untouched
// and the connection carries frames both ways after it.
func TestHTTPWebSocket(t *testing.T) {
	tt.CheckLeaks(t)
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(4 << 20)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	}))
	t.Cleanup(ws.Close)
	srv := webServer(t, nil)
	_, port, _ := net.SplitHostPort(srv.HTTPAddr().String())
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"ws": {Type: "http", Local: strings.TrimPrefix(ws.URL, "http://"), Subdomain: "ws"},
	}, nil))
	cl.WaitUp(t, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", "127.0.0.1:"+port)
	}}}
	defer hc.CloseIdleConnections()
	c, _, err := websocket.Dial(ctx, "ws://ws.tunnel.test:"+port+"/", &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(4 << 20)
	big := make([]byte, 1<<20)
	rand.Read(big)
	for i, msg := range [][]byte{[]byte("hello"), big, []byte("bye")} {
		if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil || string(got) != "echo: "+string(msg) {
			t.Fatalf("message %d: %d bytes, %v", i, len(got), err)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
}

var carolToken = tt.Secret("carol-token-6e0b4d2f9a13c857")

// A name another client holds leaves the tunnel pending, told who holds
// it, until that client lets go; [[clients]] allow_hostnames decides
// which names a client may take at all.
func TestHTTPNamesPerClient(t *testing.T) {
	tt.CheckLeaks(t)
	a, b := webService(t, "alpha"), webService(t, "beta")
	srv := webServer(t, func(c *config.Server) {
		c.Token = ""
		c.Clients = []config.ClientEntry{
			{Name: "alice", Token: aliceToken},
			{Name: "bob", Token: bobToken, AllowHostnames: []string{"*.bob.example.org", "shared.tunnel.test"}},
			{Name: "carol", Token: carolToken},
		}
	})
	_, port, _ := net.SplitHostPort(srv.HTTPAddr().String())
	alice := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"w": {Type: "http", Local: strings.TrimPrefix(a.URL, "http://"), Subdomain: "shared"},
	}, func(c *config.Client) { c.Name, c.Token = "alice", aliceToken }))
	alice.WaitUp(t, 5*time.Second)
	bob := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"w": {Type: "http", Local: strings.TrimPrefix(b.URL, "http://"), Hostnames: []string{"shared.tunnel.test"}},
		"x": {Type: "http", Local: strings.TrimPrefix(b.URL, "http://"), Hostnames: []string{"www.bob.example.org"}},
	}, func(c *config.Client) { c.Name, c.Token = "bob", bobToken }))
	tt.Eventually(t, 5*time.Second, "bob's session", func() bool { return bob.Status().Connected })
	if why := bob.Status().Pending["w"]; !strings.Contains(why, `held by client "alice"`) {
		t.Errorf("bob's tunnel for alice's name: pending %q", why)
	}
	client := &http.Client{}
	defer client.CloseIdleConnections()
	if code, body := get(t, client, port, "shared.tunnel.test", "/"); code != 200 || !strings.HasPrefix(body, "alpha") {
		t.Errorf("the held name: %d %q", code, body)
	}
	if code, body := get(t, client, port, "www.bob.example.org", "/"); code != 200 || !strings.HasPrefix(body, "beta") {
		t.Errorf("bob's own name: %d %q", code, body)
	}
	alice.Stop(t)
	tt.Eventually(t, 10*time.Second, "the name passed to bob", func() bool { return bob.Status().Public["w"] != "" })
	client.CloseIdleConnections()
	if code, body := get(t, client, port, "shared.tunnel.test", "/"); code != 200 || !strings.HasPrefix(body, "beta") {
		t.Errorf("the name after alice left: %d %q", code, body)
	}
	// A name outside what carol may take (under the server's domains,
	// as she has no allow_hostnames) is refused for good.
	carol := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"w": {Type: "http", Local: strings.TrimPrefix(b.URL, "http://"), Hostnames: []string{"www.alice.example.org"}},
	}, func(c *config.Client) { c.Name, c.Token = "carol", carolToken }))
	if err := carol.Wait(t, 10*time.Second); err == nil || !strings.Contains(err.Error(), "host name www.alice.example.org is not one this client may take") {
		t.Errorf("a name outside allow_hostnames: %v", err)
	}
}

// A session lost under a kept-alive HTTP connection resumes, and the
// connection carries on: the next request on it is answered, and a
// visitor who connects while the client is away is held and answered
// after the resume.
func TestHTTPTunnelResumes(t *testing.T) {
	tt.CheckLeaks(t)
	svc := webService(t, "alpha")
	r := newResumeRig(t, 10*time.Second, map[string]*config.Tunnel{
		"w": {Type: "http", Local: strings.TrimPrefix(svc.URL, "http://"), Subdomain: "alpha"},
	}, func(c *config.Server) {
		c.Web.HTTPAddr = "127.0.0.1:0"
		c.Web.Domains = []string{"tunnel.test"}
	})
	addr := r.srv.HTTPAddr().String()
	c := tt.Dial(t, addr)
	br := bufio.NewReader(c)
	ask := func(path string) string {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: alpha.tunnel.test\r\n\r\n", path)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return string(b)
	}
	if got := ask("/before"); !strings.Contains(got, "path=/before") {
		t.Fatalf("before: %q", got)
	}
	r.relay.Freeze()
	r.relay.Reset()
	// A visitor arriving while the client is away is held.
	late := make(chan string, 1)
	go func() {
		lc, err := net.Dial("tcp", addr)
		if err != nil {
			late <- err.Error()
			return
		}
		defer lc.Close()
		_ = lc.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprint(lc, "GET /late HTTP/1.1\r\nHost: alpha.tunnel.test\r\nConnection: close\r\n\r\n")
		b, _ := io.ReadAll(lc)
		late <- string(b)
	}()
	time.Sleep(500 * time.Millisecond)
	before := r.cl.Status().Resumes
	r.relay.Thaw()
	tt.Eventually(t, 15*time.Second, "the resume", func() bool { return r.cl.Status().Resumes > before })
	if got := ask("/after"); !strings.Contains(got, "path=/after") {
		t.Errorf("after the resume, on the same connection: %q", got)
	}
	if got := <-late; !strings.Contains(got, "path=/late") {
		t.Errorf("the visitor who came while the client was away: %q", got)
	}
}

// Connections to a shared port that say nothing hold at most
// handshake_limit_per_address slots for header_timeout; the rest are
// closed at accept. Once they are gone the port serves again, and the
// server's goroutines and heap are back to where they were.
func TestWebSilentFlood(t *testing.T) {
	tt.CheckLeaks(t)
	svc := webService(t, "alpha")
	srv := webServer(t, func(c *config.Server) {
		c.HandshakeLimitPerAddress = 8
		c.Web.HeaderTimeout = config.Duration(time.Second)
	})
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"w": {Type: "http", Local: strings.TrimPrefix(svc.URL, "http://"), Subdomain: "alpha"},
	}, nil))
	cl.WaitUp(t, 5*time.Second)
	_, port, _ := net.SplitHostPort(srv.HTTPAddr().String())
	g0, h0 := tt.Settled()
	var conns []net.Conn
	closedAtOnce := 0
	for range 200 {
		c, err := net.Dial("tcp", srv.HTTPAddr().String())
		if err != nil {
			closedAtOnce++ // reset before connect returned
			continue
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			closedAtOnce++
		}
	}
	if closedAtOnce < 200-8 {
		t.Errorf("%d of 200 silent connections closed at once; want all but 8", closedAtOnce)
	}
	for _, c := range conns {
		c.Close()
	}
	client := &http.Client{}
	defer client.CloseIdleConnections()
	tt.Eventually(t, 5*time.Second, "the port serving again", func() bool {
		req, _ := http.NewRequest("GET", "http://127.0.0.1:"+port+"/", nil)
		req.Host = "alpha.tunnel.test"
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	client.CloseIdleConnections()
	tt.Eventually(t, 5*time.Second, "goroutines and heap back to their baseline", func() bool {
		g, h := tt.Settled()
		return g <= g0+2 && h < h0+4<<20
	})
}

// A visitor of an http tunnel whose local service is down gets a 502
// page, not a reset; the reason stays in the logs.
func TestHTTPServiceDown(t *testing.T) {
	tt.CheckLeaks(t)
	srv := webServer(t, nil)
	_, port, _ := net.SplitHostPort(srv.HTTPAddr().String())
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"w": {Type: "http", Local: fmt.Sprintf("127.0.0.1:%d", tt.FreePort(t)), Subdomain: "down"},
	}, nil))
	cl.WaitUp(t, 5*time.Second)
	client := &http.Client{}
	defer client.CloseIdleConnections()
	code, body := get(t, client, port, "down.tunnel.test", "/")
	if code != http.StatusBadGateway || !strings.Contains(body, "did not answer") || strings.Contains(body, "127.0.0.1") {
		t.Errorf("service down: %d %q", code, body)
	}
	srv.Logs.WaitFor(t, 5*time.Second, "client could not reach the local service", "connection refused")
	if refused, _ := webCounts(t, srv); refused("http", server.WebUnreachable) != 1 {
		t.Errorf("service_unreachable counted %v, want 1", refused("http", server.WebUnreachable))
	}
}
