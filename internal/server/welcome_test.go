package server

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/protocol"
)

// The largest welcome a hello can ask for, every tunnel refused with a
// long message, still fits a frame: the messages are shortened, and each
// still starts with what went wrong.
func TestWelcomeAlwaysFits(t *testing.T) {
	w := &protocol.Welcome{Session: "0123456789ab", Client: strings.Repeat("c", 64)}
	long := "port 65535 is outside the ports this client may use, " + strings.Repeat("[20000-20001] ", 200)
	for i := range config.MaxTunnels {
		w.Tunnels = append(w.Tunnels, protocol.TunnelResult{Name: fmt.Sprintf("%s%03d", strings.Repeat("n", 61), i),
			Code: protocol.CodePortNotAllowed, Error: long, Public: "255.255.255.255:65535"})
	}
	if _, err := protocol.AppendFrame(nil, protocol.Control{Type: protocol.TypeWelcome, Welcome: w}); err == nil {
		t.Fatal("the test's welcome fits without shortening: make it larger")
	}
	fitWelcome(w)
	if _, err := protocol.AppendFrame(nil, protocol.Control{Type: protocol.TypeWelcome, Welcome: w}); err != nil {
		t.Fatalf("welcome still too large: %v", err)
	}
	for _, r := range w.Tunnels {
		if !strings.HasPrefix(r.Error, "port 65535 is outside") {
			t.Fatalf("shortened message lost its start: %q", r.Error)
		}
	}
	small := &protocol.Welcome{Tunnels: []protocol.TunnelResult{{Name: "web", Error: long}}}
	if fitWelcome(small).Tunnels[0].Error != long {
		t.Error("a welcome that fits was shortened")
	}
}
