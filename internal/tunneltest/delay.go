//go:build linux

package tunneltest

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// NewDelayRelay returns a Relay that is a long, fat path in user space:
// it holds every byte for oneWay before passing it on, at most at
// bitsPerSecond, in both directions, the rate shared by all connections
// as one link's. Data is delayed, never dropped. The path holds what it
// can carry in flight (rate × delay) plus a little queue; a sender that
// sends more waits in its own socket, as on a real path. This machine's
// kernel has no netem, so a test that needs a round trip of 200 ms builds
// it here. Each hop's TCP runs on loopback, so end-to-end flow control
// across the relay is the application's: yamux's stream windows for a
// tunnel, nothing for a plain relayed connection. It does not freeze.
func NewDelayRelay(t testing.TB, ln net.Listener, target string, oneWay time.Duration, bitsPerSecond float64) *Relay {
	p := &delayPath{delay: oneWay, rate: bitsPerSecond / 8}
	dial := func(a string) (*net.TCPConn, error) {
		c, err := net.Dial("tcp", a)
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	return newRelay(t, ln, target, dial, func(dst, src net.Conn, toTarget bool) {
		link := &p.down
		if toTarget {
			link = &p.up
		}
		p.pipe(dst.(*net.TCPConn), src.(*net.TCPConn), link)
	})
}

// delayPath is a delaying relay's path: its delay and rate, and the pacers
// of its two directions, shared by every connection going that way.
type delayPath struct {
	delay    time.Duration
	rate     float64 // bytes per second
	up, down pacer
}

// pacer hands out a link's time: each chunk leaves when it is due and the
// link has finished sending what went before it.
type pacer struct {
	mu   sync.Mutex
	next time.Time
}

// reserve returns when n bytes due at due may leave, at rate bytes/s.
func (p *pacer) reserve(due time.Time, n int, rate float64) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	at := due
	if p.next.After(at) {
		at = p.next
	}
	p.next = at.Add(time.Duration(float64(n) / rate * float64(time.Second)))
	return at
}

// chunk is data read at one moment, due out at due.
type chunk struct {
	due  time.Time
	data []byte
}

// pipe carries src to dst: a reader stamps what it reads and queues it
// while the path has room; a writer sends each chunk when it is due and
// the link (shared by every connection going that way) has time for it. EOF is passed on as a half-close once the queue is
// empty; an error ends both directions.
func (r *delayPath) pipe(dst, src *net.TCPConn, link *pacer) {
	// The path's capacity: what is in flight at the rate, plus a queue
	// of 256 KiB, at least 1 MiB.
	capacity := max(int(r.rate*r.delay.Seconds())+256<<10, 1<<20)
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	var queue []chunk
	queued, eof, failed := 0, false, false

	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			mu.Lock()
			for len(queue) == 0 && !eof && !failed {
				cond.Wait()
			}
			if failed || len(queue) == 0 {
				end := eof && !failed
				mu.Unlock()
				if end {
					_ = dst.CloseWrite()
				}
				return
			}
			c := queue[0]
			mu.Unlock()
			due := c.due
			if now := time.Now(); now.After(due) {
				due = now
			}
			if d := time.Until(link.reserve(due, len(c.data), r.rate)); d > 0 {
				time.Sleep(d)
			}
			_, err := dst.Write(c.data)
			mu.Lock()
			queue = queue[1:]
			queued -= len(c.data)
			if err != nil {
				failed = true
			}
			mu.Unlock()
			cond.Broadcast()
			if err != nil {
				src.Close()
				return
			}
		}
	}()

	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			data := append([]byte(nil), buf[:n]...)
			mu.Lock()
			for queued+n > capacity && queued > 0 && !failed {
				cond.Wait()
			}
			if failed {
				mu.Unlock()
				break
			}
			queue = append(queue, chunk{time.Now().Add(r.delay), data})
			queued += n
			mu.Unlock()
			cond.Broadcast()
		}
		if err != nil {
			mu.Lock()
			if errors.Is(err, io.EOF) {
				eof = true
			} else {
				failed = true
			}
			mu.Unlock()
			cond.Broadcast()
			break
		}
	}
	<-done
	if failed {
		dst.Close()
	}
}
