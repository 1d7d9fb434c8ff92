package server

import (
	"sync"
	"sync/atomic"
	"testing"
)

// wait returns only after every part that started has ended, and no part
// starts once it has begun, however Go and enter race with it (-race
// checks the WaitGroup's use).
func TestPartsWaitForAllAndStartNoneAfter(t *testing.T) {
	for range 200 {
		var p parts
		var running, started, refused atomic.Int64
		var callers sync.WaitGroup
		for range 8 {
			callers.Add(1)
			go func() {
				defer callers.Done()
				for range 50 {
					ok := p.Go(func() {
						running.Add(1)
						running.Add(-1)
					})
					if ok {
						started.Add(1)
					} else {
						refused.Add(1)
					}
					if p.enter() {
						running.Add(1)
						go func() {
							running.Add(-1)
							p.leave()
						}()
					}
				}
			}()
		}
		p.wait()
		if n := running.Load(); n != 0 {
			t.Fatalf("wait returned with %d parts running", n)
		}
		callers.Wait()
		if p.Go(func() {}) || p.enter() {
			t.Fatal("a part started after the wait")
		}
		if started.Load()+refused.Load() != 400 {
			t.Fatalf("%d started + %d refused, want 400", started.Load(), refused.Load())
		}
	}
}
