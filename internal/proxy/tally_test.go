package proxy_test

import (
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/proxy"
)

// A tally splits open connections by owner, keeps the ended ones' totals,
// and is idle only with neither holders nor open connections.
func TestTally(t *testing.T) {
	var tl proxy.Tally
	tl.Hold()
	a, b := &proxy.Live{ID: 1, Owner: "s1"}, &proxy.Live{ID: 2, Owner: "s2"}
	tl.Open(a)
	tl.Open(b)
	if c := tl.Read("s1"); c.Open != 1 || c.Total != 2 {
		t.Fatalf("two open, one of s1: %+v", c)
	}
	if a.Abort(nil) {
		t.Error("Abort of a connection whose join does not run yet reported true")
	}
	tl.Close(a, proxy.Stats{AToB: 10, BToA: 20})
	if c := tl.Read(nil); c.Open != 1 || c.Total != 2 || c.AToB != 10 || c.BToA != 20 || tl.Find(1) != nil || tl.Find(2) != b {
		t.Fatalf("after one closed: %+v", c)
	}
	later := time.Now().Add(time.Hour)
	tl.Release()
	if tl.IdleFor(later, time.Minute) {
		t.Error("idle with a connection open")
	}
	tl.Close(b, proxy.Stats{AToB: 1})
	if !tl.IdleFor(later, time.Minute) || tl.IdleFor(time.Now(), time.Minute) {
		t.Error("idle not dated from the last close")
	}
	tl.Hold()
	if tl.IdleFor(later, time.Minute) {
		t.Error("idle while held again")
	}
}
