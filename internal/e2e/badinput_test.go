package e2e

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/protocol"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// closedBound is how long a bad peer may wait to be closed: the harness's
// handshake_timeout (3 s) and slack for a loaded machine. It bounds a
// hang; it does not measure speed.
const closedBound = 30 * time.Second

// waitClosed reads from c until the server closes it, and fails if it
// does not within closedBound.
func waitClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(closedBound))
	_, err := io.Copy(io.Discard, c)
	if isTimeout(err) {
		t.Fatalf("the server kept a bad peer's connection open %s", closedBound)
	}
}

// controlStream completes TLS and opens the control stream of a session
// to addr, as tunnelc would, and hands both to the caller.
func controlStream(t *testing.T, addr string) (*mux.Session, *mux.Stream) {
	t.Helper()
	c, err := tt.DialSession(addr)
	if err != nil {
		t.Fatal(err)
	}
	ys, st, err := openControl(c)
	if err != nil {
		t.Fatal(err)
	}
	return ys, st
}

// readRefusal reads the server's answer on a control stream: an error
// message, or the end of the stream.
func readRefusal(st *mux.Stream) (*protocol.Error, error) {
	_ = st.SetReadDeadline(time.Now().Add(closedBound))
	var m protocol.Control
	if err := protocol.ReadFrame(st, &m); err != nil {
		return nil, err
	}
	if m.Error == nil {
		return nil, fmt.Errorf("answer %+v, want a refusal", m)
	}
	return m.Error, nil
}

// Bad input on the session port, each kind from its own peer while a
// legitimate client moves hashed data. In every case the bad peer is told
// what is wrong or closed, the server says in its log what it saw, the
// transfer completes byte for byte, the client's new connections are
// served, and tunneld's goroutines and heap go back to their baseline.
func TestBadInputOnTheSessionPort(t *testing.T) {
	for _, tc := range []struct {
		name string
		// plain runs the server and the legitimate client without TLS.
		plain bool
		// attack plays the bad peer against the session address.
		attack func(t *testing.T, addr string)
		// logs is what the server's log must show.
		logs []string
	}{
		{"random bytes", false, func(t *testing.T, addr string) {
			c := tt.Dial(t, addr)
			junk := make([]byte, 256<<10)
			_, _ = rand.Read(junk)
			junk[0] = 0x42 // not a TLS record type, whatever the rest
			_ = c.SetWriteDeadline(time.Now().Add(closedBound))
			_, _ = c.Write(junk) // may fail: the server hangs up early
			waitClosed(t, c)
		}, []string{"session refused", "does not speak TLS"}},

		{"an HTTP request", false, func(t *testing.T, addr string) {
			c := tt.Dial(t, addr)
			_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: tunnel\r\nUser-Agent: curl/8.0\r\n\r\n")
			waitClosed(t, c)
		}, []string{"session refused", "does not speak TLS"}},

		{"cleartext session to the TLS port", false, func(t *testing.T, addr string) {
			c := tt.Dial(t, addr)
			ys, err := mux.Client(c, mux.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer ys.Close()
			st, err := ys.Open()
			if err == nil {
				_ = protocol.WriteFrame(st, protocol.Control{Type: protocol.TypeHello, Hello: &protocol.Hello{Version: protocol.Version, Client: "plain", Token: tt.Token}})
			}
			waitClosed(t, c)
		}, []string{"session refused", "does not speak TLS"}},

		{"TLS ClientHello to a cleartext port", true, func(t *testing.T, addr string) {
			c := tt.Dial(t, addr)
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
			_ = tc.SetDeadline(time.Now().Add(closedBound))
			if err := tc.Handshake(); err == nil {
				t.Fatal("a cleartext server completed a TLS handshake")
			}
			waitClosed(t, c)
		}, []string{"session refused: no control stream", "the peer speaks TLS", `tls = \"off\"`}},

		{"1 byte per second after TLS", false, func(t *testing.T, addr string) {
			ys, st := controlStream(t, addr)
			defer ys.Close()
			frame, _ := protocol.AppendFrame(nil, protocol.Control{Type: protocol.TypeHello, Hello: &protocol.Hello{Version: protocol.Version, Client: "slow", Token: tt.Token}})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for _, b := range frame {
					if _, err := st.Write([]byte{b}); err != nil {
						return
					}
					select {
					case <-ys.Closed():
						return
					case <-time.After(time.Second):
					}
				}
			}()
			select {
			case <-ys.Closed():
			case <-time.After(closedBound):
				t.Fatal("a hello at 1 byte per second kept its session")
			}
			<-done
		}, []string{"session refused: bad hello", "i/o timeout"}},

		{"an oversized length prefix", false, func(t *testing.T, addr string) {
			ys, st := controlStream(t, addr)
			defer ys.Close()
			_, _ = st.Write(binary.BigEndian.AppendUint32(nil, 0xFFFFFFF0))
			if _, err := readRefusal(st); err == nil {
				t.Fatal("a 4 GB frame was answered")
			}
			<-ys.Closed()
		}, []string{"session refused: bad hello", "frame too large"}},

		{"10,000 tunnels in one hello", false, func(t *testing.T, addr string) {
			ys, st := controlStream(t, addr)
			defer ys.Close()
			hello := protocol.Hello{Version: protocol.Version, Client: "greedy", Token: tt.Token}
			for i := range 10_000 {
				hello.Tunnels = append(hello.Tunnels, protocol.TunnelRequest{Name: fmt.Sprint("t", i), Type: "tcp"})
			}
			body, _ := jsonBody(protocol.Control{Type: protocol.TypeHello, Hello: &hello})
			_, _ = st.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...))
			if _, err := readRefusal(st); err == nil {
				t.Fatal("a hello larger than a frame was answered")
			}
			<-ys.Closed()
		}, []string{"session refused: bad hello", "frame too large"}},

		{"1,000 tunnels in a hello that fits a frame", false, func(t *testing.T, addr string) {
			ys, st := controlStream(t, addr)
			defer ys.Close()
			hello := protocol.Hello{Version: protocol.Version, Client: "greedy", Token: tt.Token}
			for i := range 1_000 {
				hello.Tunnels = append(hello.Tunnels, protocol.TunnelRequest{Name: fmt.Sprint(i), Type: "tcp"})
			}
			if err := protocol.WriteFrame(st, protocol.Control{Type: protocol.TypeHello, Hello: &hello}); err != nil {
				t.Fatal(err)
			}
			e, err := readRefusal(st)
			if err != nil || e.Code != protocol.CodeBadRequest || !strings.Contains(e.Message, "max_tunnels_per_client") {
				t.Fatalf("answer %+v, %v: want a bad_request naming max_tunnels_per_client", e, err)
			}
		}, []string{"session refused", "1000 tunnels in one hello"}},

		{"a 60 KB tunnel name", false, func(t *testing.T, addr string) {
			ys, st := controlStream(t, addr)
			defer ys.Close()
			hello := protocol.Hello{Version: protocol.Version, Client: "long", Token: tt.Token,
				Tunnels: []protocol.TunnelRequest{{Name: strings.Repeat("x", 60<<10), Type: "tcp"}}}
			if err := protocol.WriteFrame(st, protocol.Control{Type: protocol.TypeHello, Hello: &hello}); err != nil {
				t.Fatal(err)
			}
			_ = st.SetReadDeadline(time.Now().Add(closedBound))
			var m protocol.Control
			if err := protocol.ReadFrame(st, &m); err != nil || m.Welcome == nil || len(m.Welcome.Tunnels) != 1 {
				t.Fatalf("answer %+v, %v: want a welcome with one result", m, err)
			}
			if r := m.Welcome.Tunnels[0]; r.OK || r.Code != protocol.CodeInvalidTunnel || len(r.Name) > 100 || len(r.Error) > 300 {
				t.Fatalf("result %+v: want invalid_tunnel with the name clipped", r)
			}
		}, []string{"tunnel refused", "code=invalid_tunnel", "(61440 bytes)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, pub, wait := legitWith(t, tc.plain)
			g0, h0 := runtime.NumGoroutine(), liveHeap()
			tc.attack(t, srv.Addr().String())
			srv.Logs.WaitFor(t, hangBound, tc.logs...)
			nc := tt.Dial(t, pub)
			if err := tt.Ping(nc, "a new connection", hangBound); err != nil {
				t.Fatalf("the legitimate client's new connection: %v", err)
			}
			nc.Close()
			if err := wait(); err != nil {
				t.Fatalf("the legitimate transfer: %v", err)
			}
			backToBaseline(t, "after "+tc.name, g0, h0)
		})
	}
}

// legitWith is legit with TLS off on both sides when plain, and returns
// the client's public address too.
func legitWith(t *testing.T, plain bool) (srv *tt.Server, pub string, wait func() error) {
	t.Helper()
	edit := func(c *config.Server) {}
	editC := func(c *config.Client) {}
	if plain {
		edit, editC = tt.Plain[*config.Server], tt.Plain[*config.Client]
	}
	echo := tt.NewEcho(t)
	srv = tt.StartServer(t, tt.ServerConfig(t, edit))
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{"echo": {Local: echo.Addr()}}, editC))
	pub = cl.WaitUp(t, hangBound)["echo"]
	done := make(chan error, 1)
	go func() { done <- tt.RoundTrip(tt.Dial(t, pub), 32<<20) }()
	return srv, pub, func() error { return <-done }
}

// jsonBody encodes m as a frame body, however large: the encoder would
// refuse what a hostile peer sends anyway.
func jsonBody(m protocol.Control) ([]byte, error) { return json.Marshal(m) }
