package e2e

import (
	"net"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/protocol"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// raw is a hand-driven session: it speaks the handshake and then does
// nothing, like a client whose path died or a client of another version.
type raw struct {
	ys      *mux.Session
	ctrl    *mux.Stream
	welcome *protocol.Welcome
	err     *protocol.Error
}

func rawSession(t *testing.T, addr string, version int, token, name string, port int) *raw {
	t.Helper()
	hello := &protocol.Hello{Version: version, Client: name, Token: token,
		Tunnels: []protocol.TunnelRequest{{Name: "echo", Type: "tcp", RemotePort: port}}}
	return rawControl(t, addr, protocol.Control{Type: protocol.TypeHello, Hello: hello})
}

// rawControl opens a session, sends first as the first control message and
// returns the server's answer. The session is closed at cleanup.
func rawControl(t *testing.T, addr string, first protocol.Control) *raw {
	t.Helper()
	r, err := dialRaw(addr, first)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.ys.Close() })
	return r
}

// dialRaw is rawControl, over TLS as harness servers speak it, for a
// caller that closes the session itself (and must not have a cleanup keep
// it reachable).
func dialRaw(addr string, first protocol.Control) (*raw, error) {
	c, err := tt.DialSession(addr)
	if err != nil {
		return nil, err
	}
	return rawOver(c, first)
}

// openControl starts a hand-driven session on c and opens its control
// stream; on error c is closed.
func openControl(c net.Conn) (*mux.Session, *mux.Stream, error) {
	// No heartbeat, no logger: a peer that only does what the test says.
	ys, err := mux.Client(c, mux.Options{})
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	st, err := ys.Open()
	if err != nil {
		ys.Close()
		return nil, nil, err
	}
	return ys, st, nil
}

// rawOver is dialRaw over a connection the caller made (cleartext, say).
func rawOver(c net.Conn, first protocol.Control) (*raw, error) {
	ys, st, err := openControl(c)
	if err != nil {
		return nil, err
	}
	_ = st.SetDeadline(time.Now().Add(5 * time.Second))
	if err := protocol.WriteFrame(st, first); err != nil {
		ys.Close()
		return nil, err
	}
	var m protocol.Control
	if err := protocol.ReadFrame(st, &m); err != nil {
		ys.Close()
		return nil, err
	}
	_ = st.SetDeadline(time.Time{})
	return &raw{ys: ys, ctrl: st, welcome: m.Welcome, err: m.Error}, nil
}
