package server_test

import (
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// Takeovers pass a tunnel's counts to the new session without leaving
// the old one's hold on them: once no session serves the tunnel, nothing
// holds its counts, and they can be forgotten. tcp and http alike.
func TestTakeoverReleasesCounts(t *testing.T) {
	tt.CheckLeaks(t)
	echo := tt.NewEcho(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.Web.HTTPAddr = "127.0.0.1:0"
		c.Web.Domains = []string{"tunnel.test"}
	}))
	tunnels := func() map[string]*config.Tunnel {
		return map[string]*config.Tunnel{"raw": {Local: echo.Addr()}, "web": {Type: "http", Local: echo.Addr(), Subdomain: "w"}}
	}
	first := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), tunnels(), nil))
	first.WaitUp(t, 5*time.Second)
	first.Stop(t)
	second := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), tunnels(), nil))
	second.WaitUp(t, 5*time.Second)
	third := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), tunnels(), nil))
	third.WaitUp(t, 5*time.Second) // took over from second
	second.Stop(t)
	tt.Eventually(t, 10*time.Second, "one session serving, holding each tunnel's counts once", func() bool {
		return third.Status().Connected && srv.HoldersOf("test-client", "raw") == 1 && srv.HoldersOf("test-client", "web") == 1
	})
	third.Stop(t)
	tt.Eventually(t, 5*time.Second, "no holders once no session serves the tunnels", func() bool {
		return srv.HoldersOf("test-client", "raw") == 0 && srv.HoldersOf("test-client", "web") == 0
	})
}
