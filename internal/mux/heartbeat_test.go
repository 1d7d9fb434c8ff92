package mux_test

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/sockopt"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// A session through a relay that freezes (both its sockets stay open, TCP
// keepalive would see nothing) is closed by the heartbeat on both ends
// within interval + timeout; until then an idle session stays up.
func TestHeartbeatCatchesFrozenRelay(t *testing.T) {
	tt.CheckLeaks(t)
	o := mux.Options{
		KeepAlive:         sockopt.KeepAlive{Idle: time.Hour, Interval: time.Hour, Count: 1},
		HeartbeatInterval: 200 * time.Millisecond,
		HeartbeatTimeout:  400 * time.Millisecond,
		HandshakeTimeout:  5 * time.Second,
		Logger:            slog.New(slog.DiscardHandler),
	}
	ln, err := mux.Listen(context.Background(), "127.0.0.1:0", o)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	relay := tt.NewRelay(t, rl, ln.Addr().String(), func(a string) (*net.TCPConn, error) {
		c, err := net.Dial("tcp", a)
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	})
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	cc, err := mux.Dial(context.Background(), relay.Addr(), o)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := mux.Client(cc, o)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv, err := mux.Server(<-accepted, o)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	time.Sleep(5 * (o.HeartbeatInterval + o.HeartbeatTimeout)) // idle, healthy
	if cli.IsClosed() || srv.IsClosed() {
		t.Fatal("an idle healthy session was closed")
	}
	frozen := time.Now()
	relay.Freeze()
	for name, s := range map[string]*mux.Session{"client": cli, "server": srv} {
		select {
		case <-s.Closed():
		case <-time.After(5 * time.Second):
			t.Fatalf("%s session still up 5s after the relay froze", name)
		}
		d := time.Since(frozen)
		_, err := s.Accept()
		cause := s.Cause(err)
		t.Logf("%s closed %s after the freeze: %s", name, d.Round(10*time.Millisecond), cause)
		if !strings.HasPrefix(cause, "heartbeat timeout") || s.CauseKind(err) != mux.KindHeartbeatTimeout {
			t.Errorf("%s cause %q (%s)", name, cause, s.CauseKind(err))
		}
		if bound := o.HeartbeatInterval + o.HeartbeatTimeout + 500*time.Millisecond; d > bound {
			t.Errorf("%s closed after %s, bound %s", name, d, bound)
		}
		<-s.Done()
	}
	relay.Close()
}
