package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/testcert"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// proxyAware is a local service behind go-proxyproto's listener, as a
// PROXY-aware server is: each connection answers with the client address
// the PROXY header gave, and what it read next.
func proxyAware(t *testing.T) net.Listener {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &proxyproto.Listener{Listener: raw, ReadHeaderTimeout: 5 * time.Second,
		ConnPolicy: func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) { return proxyproto.REQUIRE, nil }}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					fmt.Fprintf(c, "error %v\n", err)
					return
				}
				fmt.Fprintf(c, "from %s said %s", c.RemoteAddr(), line)
			}()
		}
	}()
	return ln
}

func ask(t *testing.T, addr, first, line string) string {
	t.Helper()
	c := tt.Dial(t, addr)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(c, first+line)
	b, _ := io.ReadAll(c)
	return string(b)
}

// tunnelc sends its local service a PROXY header, v1 or v2, with the
// public client's address; tunneld takes the client's address from a
// PROXY header only when it comes from trusted_proxies, and passes any
// other as data.
func TestProxyProtocol(t *testing.T) {
	tt.CheckLeaks(t)
	svc := proxyAware(t)
	echo := tt.NewEcho(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) { c.TrustedProxies = []string{"127.0.0.1/32"} }))
	plain := tt.StartServer(t, tt.ServerConfig(t, nil))
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"v1": {Local: svc.Addr().String(), ProxyProtocol: "v1"},
		"v2": {Local: svc.Addr().String(), ProxyProtocol: "v2"},
	}, nil))
	pub := cl.WaitUp(t, 5*time.Second)
	cl2 := tt.StartClient(t, tt.ClientConfig(t, plain.Addr().String(), map[string]*config.Tunnel{
		"v1":   {Local: svc.Addr().String(), ProxyProtocol: "v1"},
		"v2":   {Local: svc.Addr().String(), ProxyProtocol: "v2"},
		"echo": {Local: echo.Addr()},
	}, func(c *config.Client) { c.Name = "untrusting" }))
	pub2 := cl2.WaitUp(t, 5*time.Second)

	for _, name := range []string{"v1", "v2"} {
		c := tt.Dial(t, pub2[name])
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprint(c, "hello\n")
		b, _ := io.ReadAll(c)
		if want := "from " + c.LocalAddr().String() + " said hello\n"; string(b) != want {
			t.Errorf("%s: the service heard %q, want %q", name, b, want)
		}
	}
	// A trusted proxy names its client (a documentation address in the
	// header's text; nothing is sent there), v1 and v2.
	hdr := "PROXY TCP4 198.18.0.7 127.0.0.1 5555 80\r\n"
	if got := ask(t, pub["v1"], hdr, "via v1\n"); got != "from 198.18.0.7:5555 said via v1\n" {
		t.Errorf("trusted v1 header: %q", got)
	}
	h2 := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("198.18.0.9"), Port: 6666}, &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 80})
	b2, _ := h2.Format()
	if got := ask(t, pub["v2"], string(b2), "via v2\n"); got != "from 198.18.0.9:6666 said via v2\n" {
		t.Errorf("trusted v2 header: %q", got)
	}
	// From an address not trusted, a PROXY header is data.
	if got := ask(t, pub2["echo"], hdr, "x\n"); got != hdr+"x\n" {
		t.Errorf("untrusted header through a plain tunnel: %q", got)
	}
	// A trusted proxy that sends no header is refused, not passed on.
	if got := ask(t, pub["v1"], "", "no header\n"); strings.Contains(got, "no header") {
		t.Errorf("a trusted address without a header reached the service: %q", got)
	}
}

// The http front with trusted_proxies: the visitor's address from the
// proxy's header reaches X-Forwarded-For and the service's PROXY header.
// On the https port the proxy's header comes before the ClientHello
// (both read ahead to route, both replayed in order): the visitor's TLS
// reaches the service untouched, with the visitor's address.
func TestProxyProtocolHTTP(t *testing.T) {
	tt.CheckLeaks(t)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "remote=%s xff=%s", r.RemoteAddr, r.Header.Get("X-Forwarded-For"))
	})}
	go hs.Serve(&proxyproto.Listener{Listener: raw})
	t.Cleanup(func() { hs.Close() })
	cert := testcert.NewFor(t, "s", "s.tunnel.test")
	srvTLS, cliTLS := cert.Configs(t)
	cliTLS.ServerName = "s.tunnel.test"
	rawTLS, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve(tls.NewListener(&proxyproto.Listener{Listener: rawTLS}, srvTLS))
	srv := webServer(t, func(c *config.Server) {
		c.TrustedProxies = []string{"127.0.0.1"}
		c.Web.HTTPSAddr = "127.0.0.1:0"
	})
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"w": {Type: "http", Local: raw.Addr().String(), Subdomain: "w", ProxyProtocol: "v1"},
		"s": {Type: "https", Local: rawTLS.Addr().String(), Subdomain: "s", ProxyProtocol: "v2"},
	}, nil))
	cl.WaitUp(t, 5*time.Second)
	got := ask(t, srv.HTTPAddr().String(), "PROXY TCP4 198.18.0.7 127.0.0.1 5555 80\r\n", "GET / HTTP/1.1\r\nHost: w.tunnel.test\r\nConnection: close\r\n\r\n")
	if !strings.HasSuffix(got, "remote=198.18.0.7:5555 xff=198.18.0.7") {
		t.Errorf("answer %q", got)
	}

	c := tt.Dial(t, srv.HTTPSAddr().String())
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(c, "PROXY TCP4 198.18.0.8 127.0.0.1 6666 443\r\n")
	tc := tls.Client(c, cliTLS)
	fmt.Fprint(tc, "GET / HTTP/1.1\r\nHost: s.tunnel.test\r\nConnection: close\r\n\r\n")
	b, err := io.ReadAll(tc)
	if err != nil || !strings.HasSuffix(string(b), "remote=198.18.0.8:6666 xff=") || tc.ConnectionState().PeerCertificates[0].Subject.CommonName != "s" {
		t.Errorf("https through a trusted proxy: %q, %v", b, err)
	}
}
