package fault

import (
	"crypto/rand"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// bulk starts n connections to addr from the public host that write
// random data and read the echo back until stop is closed; wait returns
// how much came back in all and the first error seen before stop.
func (r *rig) bulk(addr string, n int, stop <-chan struct{}) (wait func() (int64, error)) {
	counts, waitEach := r.bulkEach(addr, n, stop)
	return func() (int64, error) {
		err := waitEach()
		var moved int64
		for _, c := range counts {
			moved += c.Load()
		}
		return moved, err
	}
}

// bulkEach is bulk with a byte count per connection.
func (r *rig) bulkEach(addr string, n int, stop <-chan struct{}) ([]*atomic.Int64, func() error) {
	counts := make([]*atomic.Int64, n)
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	fail := func(err error) {
		select {
		case <-stop:
			return // errors after stop are the teardown's
		default:
		}
		firstErr.CompareAndSwap(nil, &err)
	}
	for i := range n {
		counts[i] = new(atomic.Int64)
		c, err := r.pub.Dial(addr)
		if err != nil {
			fail(err)
			continue
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			_, _ = rand.Read(buf)
			for {
				select {
				case <-stop:
					// Cut it: draining megabytes queued on a slow link
					// would take as long as the test.
					_ = c.Close()
					return
				default:
				}
				if _, err := c.Write(buf); err != nil {
					fail(err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			defer c.Close()
			buf := make([]byte, 64<<10)
			for {
				k, err := c.Read(buf)
				counts[i].Add(int64(k))
				if err == io.EOF {
					return
				}
				if err != nil {
					fail(err)
					return
				}
			}
		}()
	}
	return counts, func() error {
		wg.Wait()
		if p := firstErr.Load(); p != nil {
			return *p
		}
		return nil
	}
}

// 9. A bulk transfer that saturates a slow session must not be taken for a
// dead peer: the heartbeat's answer waits behind megabytes of queued data.
func TestHeartbeatUnderLoad(t *testing.T) {
	t.Parallel()
	o := defaultOpts()
	// The heartbeat (1 s / 2 s) is under test; TCP's own timers get
	// production-like values. With a 5 s user_timeout, a segment that the
	// saturated link dropped again and again while both cores were busy
	// stayed unacknowledged past 5 s and the kernel ended the session
	// (seen once under make stress: "user timeout ... nothing received for
	// 0s"): the user timeout doing its job at a setting this link is too
	// slow for, not the heartbeat mistaking load for death.
	o.sessionKA = ka{10 * time.Second, 5 * time.Second, 2}
	o.userTimeout = 20 * time.Second
	r := newRig(t, o)
	r.lab.Shape(r.cli, "8mbit")
	sm, cm := r.server.Mark(), r.client.Mark()
	stop := make(chan struct{})
	wait := r.bulk(r.fixed, 8, stop)
	const hold = time.Minute
	time.Sleep(hold)
	close(stop)
	moved, err := wait()
	t.Logf("moved %d MiB back through the tunnel in %s (%.1f Mbit/s)", moved>>20, hold, float64(moved)*8/hold.Seconds()/1e6)
	if err != nil {
		t.Errorf("a bulk connection failed: %v", err)
	}
	r.sessionKept(sm, cm)
	r.works("after the load")
}
